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
        The model to record. Nothing is copied: the record holds references, so taking it is cheap. Modules
        without parameters, buffers or children share one empty record of those (few objects for the garbage
        collector to track).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.records = []
        for module in model.modules():
            params = dict(module._parameters) if module._parameters else _EMPTY
            buffers = dict(module._buffers) if module._buffers else _EMPTY
            children = dict(module._modules) if module._modules else _EMPTY
            tensors = [*params.items(), *buffers.items()]
            data = {key: tensor.data for key, tensor in tensors if tensor is not None} if tensors else _EMPTY
            # instance attributes that shadow a parameter, buffer, child or the class forward: usually none
            shadowing = {key for key in (*params, *buffers, *children, *_SHADOWING) if key in module.__dict__}
            plain = {key: module.__dict__[key] for key in ("eps", "momentum") if key in module.__dict__}
            grads = {key: param.grad for key, param in params.items() if param is not None and param.grad is not None}
            self.records.append((
                module, params, buffers, children, data, module.training, shadowing or _EMPTY, plain or _EMPTY,
                grads or _EMPTY,
            ))

    @torch.no_grad()
    def restore(self) -> None:
        """Put every recorded object, value and flag back in place."""
        # compare before writing: most modules are untouched, and nn.Module.__setattr__ is slow
        for module, params, buffers, children, data, training, shadowing, plain, grads in self.records:
            attributes = module.__dict__
            for key in (*params, *buffers, *children, *module._parameters, *module._buffers, *module._modules,
                        *_SHADOWING):
                if key in attributes and key not in shadowing:
                    del attributes[key]
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
            for key, param in params.items():
                # a method that calls backward() (Grad-CAM) must not leave gradients, nor drop a caller's
                if param is not None and param.grad is not grads.get(key):
                    param.grad = grads.get(key)
            for key, value in plain.items():
                if attributes.get(key) is not value:
                    attributes[key] = value
            if module.training != training:
                module.training = training


_EMPTY: dict = {}  # shared, never written


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


def freeze_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Switch off ``requires_grad`` of the model's parameters that have it; return those (:py:func:`thaw_parameters`
    puts it back). With the parameters frozen, a tensor requires a gradient exactly where it depends on the input:
    what the rules read as constant (computed from parameters and sizes alone: XCiT's Fourier position encoding)."""
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    return trainable


def thaw_parameters(parameters: list[torch.nn.Parameter]) -> None:
    """Undo :py:func:`freeze_parameters`."""
    for parameter in parameters:
        parameter.requires_grad_(True)
