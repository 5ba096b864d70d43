"""Canonizers: residual additions (and gates) made explicit modules, and batch norms merged.

A canonizer gives a model the form the rules need and is undone by ``remove()``, as in zennit.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
from torchvision.models.resnet import BasicBlock, Bottleneck
from zennit.canonizers import Canonizer
from zennit.types import BatchNorm, Linear

from ..snapshot import ModelSnapshot
from . import runtime_routing
from .breakdowns import BREAKDOWNS, breakdown_for
from .forward import TraceCache
from .modules import ResidualSum
from .tracing import ResidualTracingWarning, TraceFailure, may_add_or_gate, trace, traceable, whole_layers

SUM_NAME = "residual_sum"


# linear layers whose forward applies their weight as it is (merging into a weight-standardised convolution, say,
# would be undone by its standardisation)
_PLAIN_FORWARDS = (torch.nn.Linear.forward, torch.nn.Conv1d.forward, torch.nn.Conv2d.forward, torch.nn.Conv3d.forward)


def batchnorm_pairs(model: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """``(linear, batch norm)`` for every batch norm (with running statistics) whose input is a linear layer's output
    and nothing else uses that output: consecutive children of an ``nn.Sequential``, or a child feeding a child in a
    module's own traced forward. Not module order: in a pre-activation block the batch norm that follows a
    convolution in module order normalises the block's input, a sum, and merging it would change the model."""
    pairs, taken = [], set()
    for module in model.modules():
        for linear, batch_norm in _feeding_pairs(module):
            if isinstance(linear, Linear) and type(linear).forward in _PLAIN_FORWARDS \
                    and isinstance(batch_norm, BatchNorm) and batch_norm.running_mean is not None \
                    and not {id(linear), id(batch_norm)} & taken:
                pairs.append((linear, batch_norm))
                taken |= {id(linear), id(batch_norm)}
    return pairs


def _feeding_pairs(module: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """Children of ``module`` whose output is the next one's input alone."""
    if type(module).forward is torch.nn.Sequential.forward:
        children = list(module.children())
        return list(zip(children, children[1:]))
    if not any(True for _ in module.children()) or not traceable(module):
        return []
    try:
        graph, _ = trace(module)
    except TraceFailure:
        return []  # not merged: the batch norm keeps its own rule
    return [(module.get_submodule(node.args[0].target), module.get_submodule(node.target))
            for node in graph.nodes
            if node.op == "call_module" and node.args and isinstance(node.args[0], torch.fx.Node)
            and node.args[0].op == "call_module" and len(node.args[0].users) == 1]


def _basic_block_forward(self: BasicBlock, x: torch.Tensor) -> torch.Tensor:
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    skip = x if self.downsample is None else self.downsample(x)
    return self.relu(getattr(self, SUM_NAME)(out, skip))


def _bottleneck_forward(self: Bottleneck, x: torch.Tensor) -> torch.Tensor:
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    skip = x if self.downsample is None else self.downsample(x)
    return self.relu(getattr(self, SUM_NAME)(out, skip))


# block type -> forward that routes the residual addition through a ResidualSum, written out: the direct path for
# torchvision's blocks (and subclasses), no tracing needed
BLOCK_FORWARDS: dict[type, Callable] = {
    BasicBlock: _basic_block_forward,
    Bottleneck: _bottleneck_forward,
}


def residual_blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(name, module)`` for every residual block of ``model``: each module that holds a :py:class:`ResidualSum`
    (routed by a canonizer while one is applied, or by hand), and each torchvision block (handled without tracing)."""
    return [(name, module) for name, module in model.named_modules()
            if _block_forward(module) is not None
            or any(isinstance(child, ResidualSum) for child in module.children())]


def _block_forward(module: torch.nn.Module) -> Callable | None:
    return next((forward for kind, forward in BLOCK_FORWARDS.items() if isinstance(module, kind)), None)


class ResidualCanonizer(Canonizer):
    """Route every residual addition of a model through a :py:class:`ResidualSum`, and every multiplicative gate
    through a :py:class:`~zennit_resnet_lrp.rewriting.modules.GatedProduct`.

    torchvision's ``BasicBlock`` and ``Bottleneck`` (resnet18-152, resnext, wide_resnet and models built from them)
    get a forward written out for them. Every other module whose forward is its own code is traced with ``torch.fx``
    (:py:mod:`.tracing`), module by module: timm's ResNets, pre-activation blocks, RegNet,
    squeeze-excitation and hand-written blocks. A module that cannot be traced has its operations routed while it
    runs (:py:mod:`.runtime_routing`), and is listed in :py:attr:`untraced`.

    Parameters
    ----------
    merge_batchnorm : bool
        Also merge every batch norm into the linear layer right before it (:py:class:`MergeBatchNorm`), as zennit's
        ``ResNetCanonizer`` does for its composites. Off for the paper's rules, which let relevance pass BN.
    trace : bool
        Trace modules other than torchvision's blocks.
    direct : bool
        Use the written-out forward for torchvision's blocks (False traces them too: the same result, slower).
    runtime_only : bool
        Route every module's operations while it runs instead of tracing it (the run-time path alone; both paths
        decide alike, which the tests check by comparing them).
    cache : TraceCache, optional
        Where the traces are kept (a new one by default; copies of this canonizer share it).
    breakdowns : sequence, optional
        The breakdowns that write fused modules out (:py:mod:`.breakdowns`), asked in order; the package's own
        (``BREAKDOWNS``) by default. Pass ``(*BREAKDOWNS, mine)`` to add one without editing the package
        (docs/howto-breakdown.md).

    Attributes
    ----------
    untraced : list of (str, str, str)
        After ``apply``: ``(name, class name, reason)`` of every module that could not be traced and may add or gate
        (routed while it runs, or left as it is with a :py:class:`ResidualTracingWarning`).
    """

    def __init__(self, merge_batchnorm: bool = False, trace: bool = True, direct: bool = True,
                 cache: TraceCache | None = None, runtime_only: bool = False,
                 breakdowns: Sequence = BREAKDOWNS) -> None:
        self.merge_batchnorm, self.trace, self.direct, self.runtime_only = merge_batchnorm, trace, direct, runtime_only
        self.breakdowns = tuple(breakdowns)
        self.cache = cache if cache is not None else TraceCache()
        self.untraced: list[tuple[str, str, str]] = []

    def apply(self, root_module: torch.nn.Module) -> list[ModuleRewrite]:
        """Rewrite every module of ``root_module`` that needs it; return one undo handle per module (and the batch
        norms' merges), which zennit's composite removes; :py:attr:`untraced` says what could not be traced."""
        instances: list = []
        self.untraced = []
        whole = whole_layers()
        for name, module in list(root_module.named_modules()):
            if self.direct and _block_forward(module) is not None:
                instances.append(_written_out(module))
            elif "forward" not in module.__dict__ and breakdown_for(module, self.breakdowns) is not None:
                instances += self._broken_down(name, module, breakdown_for(module, self.breakdowns))
            elif self.trace and traceable(module, whole) and "forward" not in module.__dict__:
                # (an instance forward is someone else's rewrite: left alone)
                instances += self._rewritten(name, module)
        if self.merge_batchnorm:
            instances += MergeBatchNorm().apply(root_module)
        return instances

    def _broken_down(self, name: str, module: torch.nn.Module, breakdown) -> list[ModuleRewrite]:
        """A fused module written out through explicit modules by its breakdown (one handle to undo it); nothing
        where the breakdown leaves it whole."""
        added = breakdown.decompose(module, name)
        if added is None:
            return []
        if breakdown.NOTE:
            self.untraced.append((name, type(module).__name__, breakdown.NOTE))
        return [ModuleRewrite(module, added)]

    def _rewritten(self, name: str, module: torch.nn.Module) -> list[Canonizer]:
        """``module`` with its additions, gates and functional operations routed (one handle to undo it): by its
        traced forward, or, where its forward cannot be traced, while it runs (:py:mod:`.runtime_routing`); as it
        was, with a warning naming it, where neither can be installed."""
        try:
            if self.runtime_only:
                raise TraceFailure("not traced (runtime_only)")
            routed = self.cache.rewrite(module)
            if routed is None:
                return []
            return [ModuleRewrite(module, routed.install(module))]
        except TraceFailure as failure:
            reason = str(failure)
        # reported only where its source may add, multiply or attend: elsewhere routing changes what is said of it
        # nothing worth a line (its functional activations and pools are routed all the same)
        matters = may_add_or_gate(module)
        try:
            added = runtime_routing.install(module)
        except Exception as error:  # noqa: BLE001 - a name the module's own __setattr__ or add_module refuses
            if not matters:
                return []
            self.untraced.append((name, type(module).__name__, f"{reason}; left as it is"))
            warnings.warn(
                f"could not trace '{name}' ({type(module).__name__}: {reason}) nor route it while it runs "
                f"({type(error).__name__}: {error}); residual additions in it are not split: route them by hand "
                "with zennit_resnet_lrp.ResidualSum().add(residual, skip)", ResidualTracingWarning, stacklevel=3,
            )
            return []
        if matters:
            self.untraced.append((name, type(module).__name__, f"{reason}; routed while it runs"))
        return [ModuleRewrite(module, added)]

    def register(self, *args) -> None:
        """Nothing: zennit's canonizers register state on themselves; this one keeps none (the handles :py:meth:`apply`
        returns hold what to undo)."""

    def remove(self) -> None:
        """Nothing to undo here: the handles :py:meth:`apply` returned undo their module each."""

    def copy(self) -> "ResidualCanonizer":
        return ResidualCanonizer(self.merge_batchnorm, self.trace, self.direct, self.cache, self.runtime_only,
                                 self.breakdowns)


class ModuleRewrite:
    """How to undo what a rewrite did to one module: the instance forward it gave the module and the children (and
    tensor constants) it added, by name. A canonizer's ``apply`` returns one per module; zennit's composite calls
    :py:meth:`remove` on each."""

    __slots__ = ("module", "added")

    def __init__(self, module: torch.nn.Module, added: list[str]) -> None:
        self.module, self.added = module, list(added)

    def remove(self) -> None:
        """Drop the instance forward (the class's own applies again) and the added modules."""
        if self.module is None:
            return
        # tolerant: a snapshot restore may already have put the module back
        self.module.__dict__.pop("forward", None)
        for name in self.added:  # children and tensor constants
            self.module._modules.pop(name, None)
            self.module.__dict__.pop(name, None)
        self.module = None


def _written_out(module: torch.nn.Module) -> ModuleRewrite:
    """A torchvision block with a :py:class:`ResidualSum` child and a forward that uses it, written out."""
    module.forward = _block_forward(module).__get__(module)
    setattr(module, SUM_NAME, ResidualSum(identity_skip=module.downsample is None))
    return ModuleRewrite(module, [SUM_NAME])


class MergeBatchNorm(Canonizer):
    """Merge each batch norm into the linear layer that feeds it directly in the data flow (:py:func:`batchnorm_pairs`).

    Unlike zennit's merge, this never writes into the model's tensors: it puts new parameter objects in place and
    ``remove()`` puts the original objects back, so the model's ``state_dict()`` is bit-identical afterwards.
    """

    def __init__(self) -> None:
        self.snapshot: ModelSnapshot | None = None

    def apply(self, root_module: torch.nn.Module) -> list[Canonizer]:
        instances: list[Canonizer] = []
        for linear, batch_norm in batchnorm_pairs(root_module):
            instance = MergeBatchNorm()
            instance.register(linear, batch_norm)
            instances.append(instance)
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
