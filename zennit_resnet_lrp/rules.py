"""Relevance rules: the paper's Relevance Splitting for residual sums, and the z+ family it relies on.

All rules are zennit hooks that compute relevance with plain tensor operations on the module's own weights:
no parameter is ever modified, so they behave the same on every zennit version and leave the model untouched.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from zennit.core import Hook

from .layer import ResidualSum

DROP = "drop"
FLAT = "flat"


class RelevanceRule(Hook):
    """Base of the rules here: keep the module's input in the forward pass, map relevance in the backward pass.

    Subclasses implement :py:meth:`relevance`. One instance serves as a template; zennit registers copies.
    """

    def forward(self, module, input, output):  # noqa: A002 - zennit's signature (three names: no kwargs)
        self.stored_tensors["input"] = input[0].detach()

    def backward(self, module, grad_input, grad_output):
        relevance = self.relevance(module, self.stored_tensors["input"], grad_output[0])
        return (relevance,)

    def relevance(self, module: torch.nn.Module, input: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        """Return the relevance of ``input`` given the ``relevance`` of the module's output."""
        raise NotImplementedError

    def copy(self) -> "RelevanceRule":
        clone = copy.copy(self)
        Hook.__init__(clone)
        return clone


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

    def relevance(self, module, input, relevance):
        residual, skip = input.unbind(-1)
        if getattr(module, "identity_skip", False) and not self.split_identity:
            rho = torch.ones_like(residual)
        elif self.mode == "symmetric":
            rho = torch.full_like(residual, 0.5)
        else:
            magnitude = residual.abs()
            total = magnitude + skip.abs()
            rho = torch.where(total > 0, magnitude / total.where(total > 0, torch.ones_like(total)), 0.5)
        parts = [None, None]
        parts[ResidualSum.RESIDUAL] = rho * relevance
        parts[ResidualSum.SKIP] = relevance - parts[ResidualSum.RESIDUAL]
        return torch.stack(parts, dim=-1)


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
        """Return ``(input_part, map)`` pairs whose outputs add up to the positive pre-activation."""
        return [(input, lambda x: self.positive_map(module, x))]

    def relevance(self, module, input, relevance):
        if self.flat_input:
            input = torch.ones_like(input)
        linearised = [(part, *_linearised(function, part)) for part, function in self.parts(module, input)]
        output = sum(out for _, out, _ in linearised)
        tiny = torch.finfo(output.dtype).tiny ** 0.5
        active = output.abs() > tiny
        if self.epsilon:
            scaled = relevance / (output + self.epsilon * (2 * (output >= 0).to(output) - 1))
        else:
            scaled = relevance * active / output.where(active, torch.ones_like(output))
        result = sum(part * transpose(scaled) for part, _, transpose in linearised)
        if self.inactive == FLAT:
            stray = relevance * ~active
            if bool(stray.any()):
                result = result + _spread_flat(lambda x, uniform: self.positive_map(module, x, uniform), input, stray)
        return result


def _linearised(function, input):
    """Return ``function(input)`` and a function that applies its transpose (vector-Jacobian product)."""
    with torch.enable_grad():
        point = input.detach().requires_grad_()
        output = function(point)

    def transpose(vector):
        (result,) = torch.autograd.grad(output, point, vector, retain_graph=True)
        return result

    return output.detach(), transpose


def _spread_flat(positive_map, input, stray):
    """Spread ``stray`` output relevance over the inputs as if they were all ones: by the positive weights, or
    evenly where those are zero."""
    ones = torch.ones_like(input)
    result = torch.zeros_like(input)
    remaining = stray
    for uniform in (False, True):
        output, transpose = _linearised(lambda x: positive_map(x, uniform), ones)
        covered = output > 0
        result = result + transpose(remaining * covered / output.where(covered, torch.ones_like(output)))
        remaining = remaining * ~covered
        if not bool(remaining.any()):
            break
    return result


class _WeightedMap(PositiveProportional):
    """Map through the module's weights clamped to their positive (or, for ``sign = -1``, negative) part."""

    def positive_map(self, module, input, uniform=False, negative=False):
        if uniform:
            weight = torch.ones_like(module.weight)
        else:
            weight = module.weight.clamp(max=0) if negative else module.weight.clamp(min=0)
        if isinstance(module, torch.nn.Linear):
            return F.linear(input, weight)
        return module._conv_forward(input, weight, None)

    def parts(self, module, input):
        if self.flat_input or not bool((input < 0).any()):
            return super().parts(module, input)
        # signed input: the positive contributions are a+ W+ and a- W-
        return [
            (input.clamp(min=0), lambda x: self.positive_map(module, x)),
            (input.clamp(max=0), lambda x: self.positive_map(module, x, negative=True)),
        ]


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
        return module.forward(input)


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


class MaxPoolWinnerTakesAll(RelevanceRule):
    """Conservative max-pool rule: each output's relevance goes to the input that won the max (its gradient)."""

    def relevance(self, module, input, relevance):
        output, transpose = _linearised(module.forward, input)
        return transpose(relevance)
