"""Exact record of a model's state, to put it back as it was after attribution.

zennit 1.0.0 swaps parameter objects while it modifies parameters and its batch-norm merge can leave a new
``bias`` entry behind (zennit issue 237). Rather than trusting every rule and canonizer to undo its changes,
we record which objects a model holds and put exactly those back.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

# attributes that canonizers and zennit's parameter modifiers set on module instances
_SHADOWING = ("forward",)


class ModelSnapshot:
    """The parameter, buffer and child objects, their data and the training flags of every module of a model.

    Parameters
    ----------
    model : torch.nn.Module
        The model to record. Nothing is copied: the record holds references, so taking it is cheap.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.records = []
        for module in model.modules():
            params = dict(module._parameters)
            buffers = dict(module._buffers)
            data = {
                key: tensor.data for key, tensor in list(params.items()) + list(buffers.items()) if tensor is not None
            }
            self.records.append((
                module, params, buffers, dict(module._modules), data, module.training, set(module.__dict__),
                {key: module.__dict__[key] for key in ("eps", "momentum") if key in module.__dict__},
                {key: param.grad for key, param in params.items() if param is not None},
            ))

    @torch.no_grad()
    def restore(self) -> None:
        """Put every recorded object, value and flag back in place."""
        # compare before writing: most modules are untouched, and nn.Module.__setattr__ is slow
        for module, params, buffers, children, data, training, keys, plain, grads in self.records:
            extra = module.__dict__.keys() - keys
            if extra:
                names = set(params) | set(buffers) | set(children) | set(_SHADOWING)
                for key in extra & names:
                    del module.__dict__[key]
            for store, recorded in ((module._parameters, params), (module._buffers, buffers),
                                    (module._modules, children)):
                if len(store) != len(recorded) or any(store.get(key) is not value for key, value in recorded.items()):
                    for key in set(store) - set(recorded):
                        del store[key]
                    store.update(recorded)
            for key, tensor in data.items():
                current = params.get(key, buffers.get(key))
                if current.data_ptr() != tensor.data_ptr() or current.shape != tensor.shape:
                    current.data = tensor
            for key, grad in grads.items():
                if params[key].grad is not grad:
                    params[key].grad = grad  # a method that calls backward() (Grad-CAM) must not leave gradients
            for key, value in plain.items():
                if module.__dict__.get(key) is not value:
                    module.__dict__[key] = value
            if module.training != training:
                module.training = training


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run with ``model`` in eval mode, then put it back exactly as it was (:py:class:`ModelSnapshot`), also when
    an exception is raised."""
    snapshot = ModelSnapshot(model)
    try:
        model.eval()
        yield model
    finally:
        snapshot.restore()
