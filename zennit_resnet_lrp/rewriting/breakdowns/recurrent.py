"""``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` through explicit modules. Their forward is one fused operation; here the
same recurrence is written out step by step with linear children that compute with the layer's own parameters, and
routed while it runs (:py:mod:`~zennit_resnet_lrp.rewriting.runtime_routing`), so that the rules see it as LRP for LSTMs does
(Arras et al. 2017, "Explaining Recurrent Neural Network Predictions in Sentiment Analysis"): the sigmoid gates act as
weights (``GatedProduct``: the gated factor gets all), sums are split, a pre-activation ``W x + U h' + b`` is a sum of
two linear layers (z+ each), ``tanh`` and ``relu`` pass.

- LSTM: ``c = sigmoid(f) c' + sigmoid(i) tanh(g)``, ``h = sigmoid(o) tanh(c)``;
- GRU: ``n = tanh(W_n x + b_n + r (U_n h' + c_n))`` (the reset gate ``r`` weighs the state's part),
  ``h = (1 - z) n + z h'`` (a sum split between the candidate and the state, each weighed by its gate);
- RNN: ``h = tanh(W x + U h' + b)`` or ``relu(...)``.

One file for the family: the three share the parameters' names, the linear children and the loop over layers,
directions and steps; only the cell differs.
"""
from __future__ import annotations

from typing import Callable

import torch

from .. import runtime_routing
from ..graph_analysis import ChildNames
from ..modules import linear_child

Tensor = torch.Tensor
Cell = Callable[[torch.nn.Module, torch.nn.Linear, torch.nn.Linear, Tensor, tuple], tuple]

# what the canonizer reports of a module broken down here
NOTE = "a fused recurrent layer; decomposed and routed while it runs"


def matches(module: torch.nn.Module) -> bool:
    """A plain ``nn.LSTM`` (no projection of the hidden state), ``nn.GRU`` or ``nn.RNN`` (tanh or relu)."""
    if type(module) is torch.nn.LSTM:
        return not module.proj_size
    return type(module) in (torch.nn.GRU, torch.nn.RNN)


def decompose(module: torch.nn.RNNBase, name: str = "") -> list[str]:
    """Give ``module`` linear children sharing its parameters and a step-by-step forward routed while it runs;
    return the names added."""
    names = ChildNames(module)
    layers = {}  # name -> layer
    linears = {}  # (kind, key) -> name
    for key in _keys(module):
        for kind in ("ih", "hh"):
            # the layer's own parameter objects: nothing copied
            layer = linear_child(getattr(module, f"weight_{kind}{key}"),
                                 getattr(module, f"bias_{kind}{key}") if module.bias else None)
            linears[(kind, key)] = name = names.new(f"{kind}{key}", lambda layer=layer: layer)
            layers[name] = layer
    added = []
    try:
        for name, layer in layers.items():
            module.add_module(name, layer)
            added.append(name)
        added += runtime_routing.install(module, names, forward=_forward(linears, _CELLS[type(module)]))
    except Exception:  # nothing left behind
        for name in added:
            module._modules.pop(name, None)
        module.__dict__.pop("forward", None)
        raise
    return added


def _keys(module: torch.nn.RNNBase) -> list[str]:
    """The parameter suffixes, layer by layer, the reverse direction after the forward one."""
    return [f"_l{layer}{suffix}" for layer in range(module.num_layers)
            for suffix in ("", "_reverse")[:2 if module.bidirectional else 1]]


def _lstm_cell(module: torch.nn.LSTM, ih: torch.nn.Linear, hh: torch.nn.Linear, x: Tensor, state: tuple) -> tuple:
    """One step of an LSTM: ``state`` is ``(h, c)``."""
    h, c = state
    i, f, g, o = (ih(x) + hh(h)).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_cell(module: torch.nn.GRU, ih: torch.nn.Linear, hh: torch.nn.Linear, x: Tensor, state: tuple) -> tuple:
    """One step of a GRU (PyTorch's equations): ``state`` is ``(h,)``. ``1 - z`` is written as such, so that the
    router sees a gate in it."""
    (h,) = state
    input_r, input_z, input_n = ih(x).chunk(3, -1)
    state_r, state_z, state_n = hh(h).chunk(3, -1)
    r = torch.sigmoid(input_r + state_r)
    z = torch.sigmoid(input_z + state_z)
    n = torch.tanh(input_n + r * state_n)
    return ((1 - z) * n + z * h,)


def _rnn_cell(module: torch.nn.RNN, ih: torch.nn.Linear, hh: torch.nn.Linear, x: Tensor, state: tuple) -> tuple:
    """One step of an Elman RNN: ``state`` is ``(h,)``."""
    (h,) = state
    activation = torch.tanh if module.nonlinearity == "tanh" else torch.relu
    return (activation(ih(x) + hh(h)),)


# the step of each kind broken down here
_CELLS: dict[type, Cell] = {torch.nn.LSTM: _lstm_cell, torch.nn.GRU: _gru_cell, torch.nn.RNN: _rnn_cell}


def _forward(linears: dict, cell: Cell):
    """The fused layer's forward (eval mode: no dropout between layers) through ``linears[(kind, key)]``, the names
    of the children, one ``cell`` per step."""

    def forward(self, input: Tensor, hx: Tensor | tuple | None = None):  # noqa: A002 - nn.RNNBase's names
        unbatched = input.ndim == 2
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        directions = 2 if self.bidirectional else 1
        parts = 2 if isinstance(self, torch.nn.LSTM) else 1  # tensors in the state: (h, c) or h
        if hx is None:
            hx = (x.new_zeros(self.num_layers * directions, x.shape[1], self.hidden_size),) * parts
        else:
            hx = tuple(hx) if parts == 2 else (hx,)
            hx = tuple(state.unsqueeze(1) for state in hx) if unbatched else hx
        last = []  # the final state of each layer and direction
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                key = f"_l{layer}{'_reverse' if direction else ''}"
                ih, hh = (self.get_submodule(linears[(kind, key)]) for kind in ("ih", "hh"))
                state = tuple(part[layer * directions + direction] for part in hx)
                steps = range(x.shape[0] - 1, -1, -1) if direction else range(x.shape[0])
                hidden = [None] * x.shape[0]
                for step in steps:
                    state = cell(self, ih, hh, x[step], state)
                    hidden[step] = state[0]
                outputs.append(torch.stack(hidden))
                last.append(state)
            x = torch.cat(outputs, -1) if directions == 2 else outputs[0]
        output = x.squeeze(1) if unbatched else (x.transpose(0, 1) if self.batch_first else x)
        final = tuple(torch.stack(tensors) for tensors in zip(*last))
        final = tuple(part.squeeze(1) for part in final) if unbatched else final
        return output, (final if parts == 2 else final[0])

    return forward
