"""``nn.LSTM`` through explicit modules. Its forward is one fused operation; here the same recurrence is written out
step by step with linear children that compute with the LSTM's own parameters, and routed while it runs
(:py:mod:`~zennit_resnet_lrp.runtime_routing`), so that the rules see it as LRP for LSTMs does (Arras et al. 2017,
"Explaining Recurrent Neural Network Predictions in Sentiment Analysis"): the sigmoid gates act as weights
(``GatedProduct``: the gated factor gets all), the cell update ``c = f c' + i g`` is a sum (split), the candidate's
pre-activation ``W x + U h' + b`` a sum of two linear layers (z+ each), ``tanh`` passes."""
from __future__ import annotations

import torch

from .. import runtime_routing
from ..graph_analysis import ChildNames

# what the canonizer reports of a module broken down here
NOTE = "a fused LSTM; decomposed and routed while it runs"


def matches(module: torch.nn.Module) -> bool:
    """A plain ``nn.LSTM`` (no projection of the hidden state)."""
    return type(module) is torch.nn.LSTM and not module.proj_size


def decompose(module: torch.nn.LSTM, name: str = "") -> list[str]:
    """Give ``module`` linear children sharing its parameters and a step-by-step forward routed while it runs;
    return the names added."""
    names = ChildNames(module)
    layers = {}  # name -> layer
    linears = {}  # (kind, key) -> name
    for key in _keys(module):
        for kind in ("ih", "hh"):
            weight = getattr(module, f"weight_{kind}{key}")
            layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias, device="meta")
            layer.weight = weight  # the LSTM's own parameter objects: nothing copied
            if module.bias:
                layer.bias = getattr(module, f"bias_{kind}{key}")
            linears[(kind, key)] = name = names.new(f"{kind}{key}", lambda layer=layer: layer)
            layers[name] = layer
    added = []
    try:
        for name, layer in layers.items():
            module.add_module(name, layer)
            added.append(name)
        added += runtime_routing.install(module, names, forward=_forward(linears))
    except Exception:  # nothing left behind
        for name in added:
            module._modules.pop(name, None)
        module.__dict__.pop("forward", None)
        raise
    return added


def _keys(module: torch.nn.LSTM) -> list[str]:
    """The parameter suffixes, layer by layer, the reverse direction after the forward one."""
    return [f"_l{layer}{suffix}" for layer in range(module.num_layers)
            for suffix in ("", "_reverse")[:2 if module.bidirectional else 1]]


def _forward(linears: dict):
    """``nn.LSTM.forward`` (eval mode: no dropout between layers) through ``linears[(kind, key)]``, the names of the
    children."""

    def forward(self, input: torch.Tensor, hx: tuple | None = None):  # noqa: A002 - nn.LSTM's names
        unbatched = input.ndim == 2
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        directions = 2 if self.bidirectional else 1
        if hx is None:
            zeros = x.new_zeros(self.num_layers * directions, x.shape[1], self.hidden_size)
            hx = (zeros, zeros)
        elif unbatched:
            hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        last_h, last_c = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                key = f"_l{layer}{'_reverse' if direction else ''}"
                ih, hh = (self.get_submodule(linears[(kind, key)]) for kind in ("ih", "hh"))
                h, c = hx[0][layer * directions + direction], hx[1][layer * directions + direction]
                steps = range(x.shape[0] - 1, -1, -1) if direction else range(x.shape[0])
                states = [None] * x.shape[0]
                for step in steps:
                    i, f, g, o = (ih(x[step]) + hh(h)).chunk(4, -1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                    states[step] = h
                outputs.append(torch.stack(states))
                last_h.append(h)
                last_c.append(c)
            x = torch.cat(outputs, -1) if directions == 2 else outputs[0]
        output = x.squeeze(1) if unbatched else (x.transpose(0, 1) if self.batch_first else x)
        h_n, c_n = torch.stack(last_h), torch.stack(last_c)
        return output, ((h_n.squeeze(1), c_n.squeeze(1)) if unbatched else (h_n, c_n))

    return forward
