"""Relevance rules: the paper's Relevance Splitting for residual sums, and the z+ family it relies on.

All rules are zennit hooks that compute relevance with plain tensor operations on the module's own weights: no
parameter is ever modified, so they behave the same on every zennit version and leave the model untouched. By
default they run as autograd functions around each module's forward (see :py:class:`RelevanceRule`).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair
from zennit.core import Hook

from .layer import ResidualSum

DROP = "drop"
FLAT = "flat"


class RelevanceRule(Hook):
    """Base of the rules here: map the relevance of a module's output to its input (:py:meth:`relevance`).

    Registered on a module, a rule takes over the module's backward pass in one of two ways:

    - ``fast = True`` (default): the module's forward runs inside an autograd function whose backward is the
      rule. The module's own graph is never built or walked, so attribution costs the forward pass plus the rule.
    - ``fast = False``: zennit's hook mechanism (an identity before the module whose gradient the rule replaces),
      kept as the reference path.

    One instance serves as a template; zennit registers copies. The fast path keeps no per-module state on the
    rule (the autograd context holds it), so there a "copy" is the template itself: registering allocates next to
    nothing, which keeps Python's garbage collector out of the way.
    """

    fast = True
    needs_input = True
    # attributes set on the module while the fast path is registered (undone by remove())
    module_attributes: dict = {}

    def forward(self, module, input, output):  # noqa: A002 - zennit's signature (three names: no kwargs)
        self.stored_tensors["input"] = input[0].detach()

    def backward(self, module, grad_input, grad_output):
        relevance = self.relevance(module, self.stored_tensors["input"], grad_output[0])
        return (relevance,)

    def relevance(self, module: torch.nn.Module, input: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        """Return the relevance of ``input`` given the ``relevance`` of the module's output."""
        raise NotImplementedError

    def relevance_of_inputs(self, module: torch.nn.Module, inputs: tuple, relevance: torch.Tensor) -> tuple:
        """The relevance of each of the module's inputs (one for most modules)."""
        return (self.relevance(module, inputs[0], relevance),)

    def register(self, module: torch.nn.Module):
        if not self.fast:
            return super().register(module)
        return _ForwardOverride(module, self)

    def copy(self) -> "RelevanceRule":
        if self.fast:
            return self
        clone = copy.copy(self)
        Hook.__init__(clone)
        return clone


class _Propagate(torch.autograd.Function):
    """The module's forward without a graph; the rule as its backward."""

    @staticmethod
    def forward(ctx, rule, module, forward, *inputs):
        ctx.rule, ctx.module = rule, module
        if rule.needs_input:
            ctx.save_for_backward(*inputs)
        return forward(*inputs)

    @staticmethod
    def backward(ctx, relevance):
        inputs = ctx.saved_tensors if ctx.rule.needs_input else (None,)
        return (None, None, None, *ctx.rule.relevance_of_inputs(ctx.module, inputs, relevance))


class _ForwardOverride:
    """Routes a module's forward through :py:class:`_Propagate` while registered; ``remove()`` undoes it.

    The instance itself is the module's forward (one small object per module, no closure)."""

    __slots__ = ("module", "rule", "previous")

    def __init__(self, module: torch.nn.Module, rule: RelevanceRule) -> None:
        self.module, self.rule = module, rule
        self.previous = module.__dict__.get("forward")
        module.__dict__["forward"] = self  # what nn.Module.__setattr__ would do for a plain attribute
        module.__dict__.update(rule.module_attributes)

    def plain(self, *inputs, **kwargs):
        if self.previous is not None:
            return self.previous(*inputs, **kwargs)
        return type(self.module).forward(self.module, *inputs, **kwargs)

    def __call__(self, *inputs, **kwargs):
        if kwargs or not self.rule.active or not torch.is_grad_enabled() \
                or not any(getattr(x, "requires_grad", False) for x in inputs):
            return self.plain(*inputs, **kwargs)
        return _Propagate.apply(self.rule, self.module, self.plain, *inputs)

    def remove(self) -> None:
        module = self.module
        if module is None:
            return
        if self.previous is None:
            module.__dict__.pop("forward", None)
        else:
            module.__dict__["forward"] = self.previous
        for key in self.rule.module_attributes:
            module.__dict__.pop(key, None)
        self.module = None


class Pass(RelevanceRule):
    """Relevance passes unchanged (batch norm and ReLU in the paper's rules)."""

    needs_input = False

    def relevance(self, module, input, relevance):
        return relevance


class RelevanceSplit(RelevanceRule):
    """Relevance Splitting at a :py:class:`ResidualSum`: ``R_m = rho R`` to the residual branch, ``R_s = (1 - rho) R``
    to the skip, so ``R_m + R_s = R`` element-wise.

    Parameters
    ----------
    mode : {"ratio", "symmetric"}
        ``ratio``: ``rho = |h_m| / (|h_m| + |h_s|)``, with ``rho = 1/2`` where both branches are 0.
        ``symmetric``: ``rho = 1/2``.
    split_identity : bool
        Split at identity skips too. If False, an identity skip gets nothing (``rho = 1``) and only projection skips
        are split, as in the reference's ``latest`` and ``simple`` variants.
    """

    MODES = ("ratio", "symmetric")

    def __init__(self, mode: str = "ratio", split_identity: bool = True) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"unknown split mode {mode!r}; choose one of {', '.join(self.MODES)}")
        self.mode = mode
        self.split_identity = split_identity

    # the fast path hands the two branches over separately: no stacking
    module_attributes = {"pairwise": True}

    def split(self, module, residual: torch.Tensor, skip: torch.Tensor, relevance: torch.Tensor) -> tuple:
        """``(R_m, R_s)`` for the residual and skip branch."""
        if getattr(module, "identity_skip", False) and not self.split_identity:
            return relevance, torch.zeros_like(relevance)
        if self.mode == "symmetric":
            to_residual = relevance * 0.5
        else:
            magnitude = residual.abs()
            total = skip.abs().add_(magnitude)
            to_residual = magnitude.div_(total).nan_to_num_(nan=0.5).mul_(relevance)  # 0/0: an even split
            return to_residual, torch.sub(relevance, to_residual, out=total)  # total is spent: reuse its memory
        return to_residual, relevance - to_residual

    def relevance(self, module, input, relevance):
        parts = [None, None]
        parts[ResidualSum.RESIDUAL], parts[ResidualSum.SKIP] = self.split(
            module, input[..., ResidualSum.RESIDUAL], input[..., ResidualSum.SKIP], relevance
        )
        return torch.stack(parts, dim=-1)

    def relevance_of_inputs(self, module, inputs, relevance):
        if len(inputs) == 2:
            return self.split(module, inputs[0], inputs[1], relevance)
        return (self.relevance(module, inputs[0], relevance),)


class PositiveProportional(RelevanceRule):
    """Proportional redistribution through a positive linear map ``f`` of the module:
    ``R_in = a * f^T(R / f(a))``, so every input gets the share it contributes to each output.

    Subclasses define ``f`` in :py:meth:`positive_map`.

    Parameters
    ----------
    epsilon : float
        Stabiliser added to the denominator (``f(a) + epsilon``; the reference uses 1e-5). With ``0`` the division is
        exact wherever ``f(a)`` is not zero, and relevance is conserved to rounding.
    inactive : {"drop", "flat"}
        What happens to relevance arriving at outputs with ``f(a) = 0`` (a unit switched on only by a bias, for
        instance). ``drop``: it is lost, as in the reference. ``flat``: it is spread over the unit's inputs as if the
        input were all ones (proportional to the positive weights; evenly where those are all zero too).
    """

    flat_input = False
    # True where f(a) >= 0 for every input (z+ maps): cheaper, sign-free arithmetic
    nonnegative_map = False

    def __init__(self, epsilon: float = 1e-5, inactive: str = DROP) -> None:
        super().__init__()
        if inactive not in (DROP, FLAT):
            raise ValueError(f"inactive must be {DROP!r} or {FLAT!r}, not {inactive!r}")
        self.epsilon = float(epsilon)
        self.inactive = inactive

    def positive_map(self, module: torch.nn.Module, input: torch.Tensor, uniform: bool = False) -> torch.Tensor:
        """Return ``f(input)``; with ``uniform``, the same map with all weights equal (the fallback of "flat")."""
        raise NotImplementedError

    def parts(self, module: torch.nn.Module, input: torch.Tensor) -> list:
        """Return ``(input_part, options)`` pairs: the positive pre-activation is the sum over the pairs of
        ``positive_map(module, input_part, **options)``."""
        return [(input, {})]

    def linearise(self, module: torch.nn.Module, input: torch.Tensor, **options) -> tuple:
        """``(f(input), transpose)`` for the positive map with ``options``; by autograd unless a subclass knows
        the transpose."""
        return _linearised(lambda x: self.positive_map(module, x, **options), input)

    def relevance(self, module, input, relevance):
        if self.flat_input:
            input = torch.ones_like(input)
        linearised = [(part, *self.linearise(module, part, **options)) for part, options in self.parts(module, input)]
        output = linearised[0][1] if len(linearised) == 1 else sum(out for _, out, _ in linearised)
        tiny = torch.finfo(output.dtype).tiny ** 0.5
        if self.nonnegative_map:
            # f(a) = 0 means every contribution is 0: dividing by tiny instead gives those outputs nothing.
            # In place: the output is ours, and these maps are memory-bound
            inactive = (output <= tiny) if self.inactive == FLAT and bool(output.amin() <= tiny) else None
            denominator = output.add_(self.epsilon) if self.epsilon else output.clamp_min_(tiny)
        else:
            inactive = output.abs() <= tiny
            if self.epsilon:
                denominator = output + self.epsilon * (2 * (output >= 0).to(output) - 1)
            else:
                denominator = output.masked_fill(inactive, float("inf"))
        scaled = denominator.reciprocal_().mul_(relevance) if self.nonnegative_map else relevance / denominator
        result = linearised[0][2](scaled).mul_(linearised[0][0])
        for part, _, transpose in linearised[1:]:
            result = result + part * transpose(scaled)
        if self.inactive == FLAT and inactive is not None:
            stray = relevance * inactive
            if bool(stray.any()):  # relevance, not just an inactive unit, is there to place
                result = result + self._spread_flat(module, input, stray)
        return result

    def _spread_flat(self, module, input, stray):
        """Spread ``stray`` output relevance over the inputs as if they were all ones: by the positive weights, or
        evenly where those are zero."""
        ones = torch.ones_like(input)
        result = torch.zeros_like(input)
        for uniform in (False, True):
            output, transpose = self.linearise(module, ones, uniform=uniform)
            covered = output > 0
            result = result + transpose(stray * covered / output.where(covered, torch.ones_like(output)))
            stray = stray * ~covered
            if not bool(stray.any()):
                break
        return result


def _layout(tensor: torch.Tensor | None) -> torch.memory_format:
    """``torch.channels_last`` for a 4-D tensor laid out channels-last (and not also plainly contiguous), else
    ``torch.contiguous_format``: the layout to give weights that meet ``tensor`` in a convolution (the convolution
    would otherwise convert them on every call)."""
    if (tensor is not None and tensor.ndim == 4 and not tensor.is_contiguous()
            and tensor.is_contiguous(memory_format=torch.channels_last)):
        return torch.channels_last
    return torch.contiguous_format


def _convolution_transpose(input, weight, stride, padding, dilation, groups):
    """The transpose of the convolution of ``input`` with ``weight``: its input gradient alone (no weight gradient,
    no autograd graph)."""

    def transpose(vector):
        return torch.ops.aten.convolution_backward(
            vector, input, weight, None, stride, padding, dilation, False, [0] * len(stride), groups,
            [True, False, False],
        )[0]

    return transpose


def _linearised(function, input):
    """Return ``function(input)`` and a function that applies its transpose (vector-Jacobian product)."""
    with torch.enable_grad():
        point = input.detach().requires_grad_()
        output = function(point)

    def transpose(vector):
        (result,) = torch.autograd.grad(output, point, vector, retain_graph=True)
        return result

    return output.detach(), transpose


class _WeightedMap(PositiveProportional):
    """Map through a convolution's or linear layer's weights clamped to their positive part (or, for the a- W-
    half of z+ on signed inputs, their negative part), without bias."""

    nonnegative_map = True

    def weight(self, module, uniform=False, negative=False, like=None) -> torch.Tensor:
        """The clamped (or all-ones) weight; made afresh each time, so no copy of the model stays in memory.

        With ``like`` a channels-last input, the weight is made channels-last too: the convolution would otherwise
        convert it on every call."""
        weight = module.weight.detach()
        layout = _layout(like) if weight.ndim == 4 else torch.contiguous_format
        result = torch.empty_like(weight, memory_format=layout)
        if uniform:
            return result.fill_(1)
        return torch.clamp(weight, **({"max": 0} if negative else {"min": 0}), out=result)

    def positive_map(self, module, input, uniform=False, negative=False):
        weight = self.weight(module, uniform, negative, like=input)
        if isinstance(module, torch.nn.Linear):
            return F.linear(input, weight)
        return module._conv_forward(input, weight, None)

    def linearise(self, module, input, uniform=False, negative=False):
        weight = self.weight(module, uniform, negative, like=input)
        with torch.no_grad():
            if isinstance(module, torch.nn.Linear):
                return F.linear(input, weight), lambda vector: vector @ weight
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                return super().linearise(module, input, uniform=uniform, negative=negative)
            output = module._conv_forward(input, weight, None)
        return output, _convolution_transpose(input, weight, module.stride, module.padding, module.dilation,
                                              module.groups)

    def parts(self, module, input):
        if self.flat_input or not bool(input.amin() < 0):
            return super().parts(module, input)
        # signed input: the positive contributions are a+ W+ and a- W-
        return [(input.clamp(min=0), {}), (input.clamp(max=0), {"negative": True})]


class ZPlus(_WeightedMap):
    """LRP z+ for convolutions and linear layers: ``R_i = a_i sum_k W+_ik R_k / (sum_i' a_i' W+_i'k + epsilon)``.

    Biases are ignored (the reference sets them to 0). Inputs are expected to be non-negative (after a ReLU); signed
    inputs get the full z+ (``a+ W+ + a- W-``). See :py:class:`PositiveProportional` for ``epsilon`` and ``inactive``.
    """


class FlatInputZPlus(_WeightedMap):
    """z+ with the input replaced by ones, for the first convolution:
    ``R_i = sum_k W+_ik R_k / (sum_i' W+_i'k + epsilon)``, independent of the pixel values.

    Unlike zennit's ``Flat`` (all weights 1) this keeps ``W+``, as the reference does.
    """

    flat_input = True


class PoolProportional(PositiveProportional):
    """Proportional rule for average pooling (the module itself is the positive map):
    ``R_i = a_i (1/n) R / (avgpool(a) + epsilon)``."""

    def positive_map(self, module, input, uniform=False):
        return type(module).forward(module, input)  # the class forward: the instance one is ours


class MaxPoolAverageStandIn(PositiveProportional):
    """The reference implementation's max-pool rule: a 2x2, stride-2 average pool over the max-pool's input stands
    in for the max-pool in the relevance pass. Its windows differ from the max-pool's, so relevance is lost
    wherever a 2x2 window is all zero: use it only to reproduce the reference exactly."""

    def positive_map(self, module, input, uniform=False):
        return F.avg_pool2d(input, kernel_size=2, stride=2, ceil_mode=True)


class MaxPoolProportional(PositiveProportional):
    """Conservative max-pool rule: each output's relevance is split over its real window in proportion to the
    input values (the sum pool over the max-pool's own windows)."""

    def positive_map(self, module, input, uniform=False):
        if module.dilation not in (1, (1, 1)):
            raise ValueError("MaxPoolProportional supports max-pools without dilation only")
        return F.avg_pool2d(
            input, module.kernel_size, module.stride, module.padding, module.ceil_mode, count_include_pad=True
        )

    def linearise(self, module, input, uniform=False):
        if module.ceil_mode or module.dilation not in (1, (1, 1)) or input.ndim != 4:
            return super().linearise(module, input, uniform=uniform)
        # the same average pool as a depthwise convolution with weights 1/k^2 (zero padding counted, as above):
        # several times faster than avg_pool2d and its autograd backward on contiguous (NCHW) tensors
        kernel, stride, padding = (_pair(getattr(module, key)) for key in ("kernel_size", "stride", "padding"))
        channels = input.shape[1]
        weight = torch.full((channels, 1, *kernel), 1 / (kernel[0] * kernel[1]), dtype=input.dtype,
                            device=input.device).contiguous(memory_format=_layout(input))
        output = F.conv2d(input, weight, None, stride, padding, 1, channels)
        return output, _convolution_transpose(input, weight, stride, padding, (1, 1), channels)


class MaxPoolWinnerTakesAll(RelevanceRule):
    """Conservative max-pool rule: each output's relevance goes to the input that won the max (its gradient)."""

    def relevance(self, module, input, relevance):
        output, transpose = _linearised(lambda x: type(module).forward(module, x), input)
        return transpose(relevance)
