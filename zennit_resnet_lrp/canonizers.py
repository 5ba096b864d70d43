"""Canonizers for torchvision residual blocks.

A canonizer gives a model the form the rules need and is undone by ``remove()``, as in zennit.
"""
from __future__ import annotations

from typing import Callable

import torch
from torchvision.models.resnet import BasicBlock, Bottleneck
from zennit.canonizers import Canonizer
from zennit.core import collect_leaves
from zennit.types import BatchNorm, Linear

from .layer import ResidualSum
from .snapshot import ModelSnapshot

SUM_NAME = "residual_sum"


def _basic_block_forward(self: BasicBlock, x: torch.Tensor) -> torch.Tensor:
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    skip = x if self.downsample is None else self.downsample(x)
    return self.relu(getattr(self, SUM_NAME).add(out, skip))


def _bottleneck_forward(self: Bottleneck, x: torch.Tensor) -> torch.Tensor:
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    skip = x if self.downsample is None else self.downsample(x)
    return self.relu(getattr(self, SUM_NAME).add(out, skip))


# block type -> forward that routes the residual addition through a ResidualSum; subclasses match too
BLOCK_FORWARDS: dict[type, Callable] = {
    BasicBlock: _basic_block_forward,
    Bottleneck: _bottleneck_forward,
}


def residual_blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Return ``(name, block)`` for every block of ``model`` that :py:class:`ResidualCanonizer` handles."""
    return [(name, module) for name, module in model.named_modules() if _block_forward(module) is not None]


def _block_forward(module: torch.nn.Module) -> Callable | None:
    return next((forward for kind, forward in BLOCK_FORWARDS.items() if isinstance(module, kind)), None)


class ResidualCanonizer(Canonizer):
    """Route the addition of every torchvision ``BasicBlock`` and ``Bottleneck`` through a :py:class:`ResidualSum`.

    Works on any model built from these blocks (resnet18 to resnet152, resnext, wide_resnet, custom models).

    Parameters
    ----------
    merge_batchnorm : bool
        Also merge every batch norm into the linear layer right before it (:py:class:`MergeBatchNorm`), as zennit's
        ``ResNetCanonizer`` does for its composites. Off for the paper's rules, which let relevance pass BN.
    """

    def __init__(self, merge_batchnorm: bool = False) -> None:
        self.merge_batchnorm = merge_batchnorm
        self.module = None

    def apply(self, root_module: torch.nn.Module) -> list[Canonizer]:
        instances: list[Canonizer] = []
        for _, module in residual_blocks(root_module):
            instance = ResidualCanonizer(self.merge_batchnorm)
            instance.register(module)
            instances.append(instance)
        if self.merge_batchnorm:
            instances += MergeBatchNorm().apply(root_module)
        return instances

    def register(self, module: torch.nn.Module) -> None:
        """Give ``module`` a :py:class:`ResidualSum` child and a forward that uses it."""
        self.module = module
        module.forward = _block_forward(module).__get__(module)
        setattr(module, SUM_NAME, ResidualSum(identity_skip=module.downsample is None))

    def remove(self) -> None:
        """Drop the instance forward (the class's own applies again) and the sum module."""
        if self.module is not None:
            # tolerant: a snapshot restore may already have put the block back
            self.module.__dict__.pop("forward", None)
            self.module._modules.pop(SUM_NAME, None)
            self.module = None

    def copy(self) -> "ResidualCanonizer":
        return ResidualCanonizer(self.merge_batchnorm)


class MergeBatchNorm(Canonizer):
    """Merge each batch norm into the linear layer that directly precedes it (in module order).

    Unlike zennit's merge, this never writes into the model's tensors: it puts new parameter objects in place and
    ``remove()`` puts the original objects back, so the model's ``state_dict()`` is bit-identical afterwards.
    """

    def __init__(self) -> None:
        self.snapshot: ModelSnapshot | None = None

    def apply(self, root_module: torch.nn.Module) -> list[Canonizer]:
        instances: list[Canonizer] = []
        last = None
        for leaf in collect_leaves(root_module):
            if isinstance(last, Linear) and isinstance(leaf, BatchNorm) and leaf.running_mean is not None:
                instance = MergeBatchNorm()
                instance.register(last, leaf)
                instances.append(instance)
            last = leaf
        return instances

    @torch.no_grad()
    def register(self, linear: torch.nn.Module, batch_norm: torch.nn.Module) -> None:
        """Fold ``batch_norm`` into ``linear`` and make ``batch_norm`` the identity."""
        container = torch.nn.ModuleList([linear, batch_norm])
        self.snapshot = ModelSnapshot(container)
        scale = batch_norm.running_var.add(batch_norm.eps).rsqrt()
        if batch_norm.weight is not None:
            scale = scale * batch_norm.weight
        shift = -batch_norm.running_mean * scale
        if batch_norm.bias is not None:
            shift = shift + batch_norm.bias
        bias = shift if linear.bias is None else linear.bias * scale + shift
        shape = (-1,) + (1,) * (linear.weight.ndim - 1)
        linear._parameters["weight"] = torch.nn.Parameter(linear.weight * scale.reshape(shape), requires_grad=False)
        linear._parameters["bias"] = torch.nn.Parameter(bias, requires_grad=False)
        for key, fill in (("running_mean", 0.0), ("running_var", 1.0)):
            batch_norm._buffers[key] = torch.full_like(batch_norm._buffers[key], fill)
        for key, fill in (("weight", 1.0), ("bias", 0.0)):
            if batch_norm._parameters.get(key) is not None:
                batch_norm._parameters[key] = torch.nn.Parameter(
                    torch.full_like(batch_norm._parameters[key], fill), requires_grad=False
                )
        batch_norm.eps = 0.0

    def remove(self) -> None:
        """Put the original parameter objects and ``eps`` back."""
        if self.snapshot is not None:
            self.snapshot.restore()
            self.snapshot = None

    def copy(self) -> "MergeBatchNorm":
        return MergeBatchNorm()
