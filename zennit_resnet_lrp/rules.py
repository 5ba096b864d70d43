"""Relevance rules: the paper's Relevance Splitting for residual sums, and the z+ family it relies on.

Each rule says how relevance maps from a module's output to its input, with plain tensor operations on the
module's own weights: no parameter is ever modified, so the rules behave the same on every zennit version and leave
the model untouched. How and when a rule runs (an autograd function around the module's forward, or zennit's hooks)
is :py:mod:`zennit_resnet_lrp.core`'s business. The formulas are in ``docs/method.md``.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .core import RelevanceRule
from .maps import Transpose, effective_weight, layout, weighted_map

DROP = "drop"
FLAT = "flat"


class PassThrough(RelevanceRule):
    """Relevance passes unchanged (batch norm and activations in the paper's rules).

    The same as zennit's ``Pass``, run on this package's fast path
    (see :py:class:`~zennit_resnet_lrp.core.RelevanceRule`).
    """

    keeps = ()

    def relevance(self, module, inputs, relevance):
        return relevance


class GateAsWeight(RelevanceRule):
    """For a :py:class:`~zennit_resnet_lrp.layer.GatedProduct` ``features * gate``: the gate acts as a weight, so all
    relevance goes to the gated features and none to the gate (squeeze-excitation, ECA, ...)."""

    keeps = ()
    silent = (1,)  # the gate

    def relevance(self, module, inputs, relevance):
        return relevance, None


class UniformSplit(RelevanceRule):
    """For a :py:class:`~zennit_resnet_lrp.layer.Product` of input-dependent factors: each of the ``n`` factors gets
    ``R / n`` (the last what the others leave, so the parts add up to ``R`` exactly). For ``a * b`` this is the
    Shapley value of the product with respect to the zero baseline (each factor is worth ``ab / 2``), the uniform rule
    of AttnLRP (Achtibat et al. 2024); the gradient would hand the full relevance to both."""

    keeps = ()

    def relevance(self, module, inputs, relevance):
        part = relevance / len(inputs)
        return (*(part,) * (len(inputs) - 1), relevance - part * (len(inputs) - 1))


class RelevanceSplit(RelevanceRule):
    """Relevance Splitting at a :py:class:`ResidualSum` of operands ``h_i``: operand ``i`` gets ``rho_i R`` with
    ``sum_i rho_i = 1``, so the operands' relevance adds up to ``R`` element-wise. For a residual block's two
    operands, ``R_m = rho R`` to the residual branch and ``R_s = (1 - rho) R`` to the skip.

    Parameters
    ----------
    mode : {"ratio", "symmetric", "signed"}
        ``ratio``: ``rho_i = |h_i| / sum_j |h_j|``, an even split where all are 0. ``symmetric``: ``rho_i = 1/n``.
        ``signed``: ``rho_i = s_i h_i / (sum_j s_j h_j + epsilon)`` (``s_i`` the operand's sign), zennit's ``Norm``
        for sums, which conserves only up to the stabiliser and may hand out negative shares.
    split_identity : bool
        Split at identity skips too. If False, an identity skip gets nothing and the other operands share all, as
        in the reference's ``latest`` and ``simple`` variants.
    epsilon : float
        The stabiliser of the ``signed`` mode (zennit's default, 1e-6).
    fast : bool
        See :py:class:`~zennit_resnet_lrp.core.RelevanceRule`.
    """

    MODES = ("ratio", "symmetric", "signed")
    constants_as_zero = True  # an operand computed from sizes alone (a position encoding) is a bias: it gets nothing

    def __init__(self, mode: str = "ratio", split_identity: bool = True, epsilon: float = 1e-6,
                 fast: bool = True) -> None:
        super().__init__(fast)
        if mode not in self.MODES:
            raise ValueError(f"unknown split mode {mode!r}; choose one of {', '.join(self.MODES)}")
        self.mode, self.split_identity, self.epsilon = mode, split_identity, float(epsilon)

    @property
    def keeps(self) -> tuple[int, ...] | None:
        return () if self.mode == "symmetric" else None

    def relevance(self, module, inputs, relevance):
        count = len(inputs)
        shares = list(range(count))
        if getattr(module, "identity_skip", False) and not self.split_identity:
            shares.remove(getattr(module, "skip", -1) % count)  # the identity skip gets nothing
        result = [None] * count
        if len(shares) == 1:
            result[shares[0]] = relevance
        elif self.mode == "symmetric":
            part = relevance / len(shares)
            for index in shares[:-1]:
                result[index] = part
            result[shares[-1]] = relevance - part * (len(shares) - 1)
        elif self.mode == "ratio":
            self._ratio([inputs[index] for index in shares], relevance, shares, result)
        else:
            self._signed(module, inputs, relevance, result)
        return tuple(result)

    @staticmethod
    def _ratio(operands: list, relevance: torch.Tensor, shares: list, result: list) -> None:
        """``rho_i = |h_i| / sum_j |h_j|``, an even split where all are 0; the last operand gets what the others
        leave, so the shares add up to ``R`` exactly."""
        magnitudes = [operand.abs() for operand in operands]
        total = magnitudes[0] + magnitudes[1]  # a new tensor of the broadcast shape
        for magnitude in magnitudes[2:]:
            total = total + magnitude
        even = 1 / len(operands)
        same = total.shape == relevance.shape
        parts = []
        for magnitude in magnitudes[:-1]:
            if same and magnitude.shape == total.shape:  # in place: these tensors are ours; the split is memory-bound
                parts.append(magnitude.div_(total).nan_to_num_(nan=even).mul_(relevance))
            else:
                parts.append((magnitude / total).nan_to_num_(nan=even) * relevance)
        rest = torch.sub(relevance, parts[0], out=total) if same else relevance - parts[0]  # total is spent
        for part in parts[1:]:
            rest.sub_(part)
        for index, part in zip(shares, [*parts, rest]):
            result[index] = part

    def _signed(self, module, inputs, relevance, result) -> None:
        signs = getattr(module, "signs", None) or (1,) * len(inputs)
        output = sum(sign * operand for sign, operand in zip(signs, inputs))
        scaled = relevance / (output + ((output == 0).to(output) + output.sign()) * self.epsilon)  # zennit's
        for index, (sign, operand) in enumerate(zip(signs, inputs)):
            result[index] = sign * operand * scaled


class ReductionSplit(RelevanceSplit):
    """Relevance Splitting at a :py:class:`~zennit_resnet_lrp.layer.SumOver`, the sum of the slices of one tensor along
    a dimension: slice ``i`` gets ``|x_i| / sum_j |x_j|`` of ``R`` (ratio; an even split where all are 0) or ``1/n``
    (symmetric). See :py:class:`RelevanceSplit` for the parameters (an identity skip does not arise)."""

    keeps = (0,)

    def relevance(self, module, inputs, relevance):
        values = inputs[0]
        dims = module.dim if isinstance(module.dim, (tuple, list)) else (module.dim,)
        dims = tuple(sorted(dim % values.ndim for dim in dims))
        if not module.keepdim:
            for dim in dims:
                relevance = relevance.unsqueeze(dim)
        count = 1
        for dim in dims:
            count *= values.shape[dim]
        if self.mode == "symmetric":
            return relevance.expand_as(values) / count
        magnitude = values.abs()
        share = (magnitude / magnitude.sum(dims, keepdim=True)).nan_to_num_(nan=1 / count)
        return share * relevance


class PositiveProportional(RelevanceRule):
    """Proportional redistribution through a positive linear map ``f`` of the module:
    ``R_in = a * f^T(R / f(a))``, so every input gets the share it contributes to each output.

    Subclasses give ``f`` in :py:meth:`maps`, as one or more parts of the input whose images add up to ``f(a)``.

    Parameters
    ----------
    epsilon : float
        Stabiliser added to the denominator (``f(a) + epsilon``; the reference uses 1e-5). With ``0`` the division is
        exact wherever ``f(a)`` is not zero, and relevance is conserved to rounding.
    unsupported : {"drop", "flat"}
        What happens to relevance arriving at outputs that no input supports, ``f(a) = 0`` (a unit switched on only
        by a bias, for instance). ``drop``: it is lost, as in the reference. ``flat``: it is spread over the unit's
        inputs as if the input were all ones (:py:meth:`flat_maps`).
    fast : bool
        See :py:class:`~zennit_resnet_lrp.core.RelevanceRule`.
    """

    # True where f(a) >= 0 for every input (z+ maps): cheaper, sign-free arithmetic
    nonnegative_map = False

    def __init__(self, epsilon: float = 1e-5, unsupported: str = DROP, fast: bool = True) -> None:
        super().__init__(fast)
        if unsupported not in (DROP, FLAT):
            raise ValueError(f"unsupported must be {DROP!r} or {FLAT!r}, not {unsupported!r}")
        self.epsilon = float(epsilon)
        self.unsupported = unsupported

    def maps(self, module: torch.nn.Module, input: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, Transpose]]:
        """``(part, f(part), transpose of f)`` for each part of ``input``; the positive pre-activation ``f(a)`` is
        the sum of the ``f(part)``."""
        raise NotImplementedError

    def flat_maps(self, module: torch.nn.Module, input: torch.Tensor) -> Iterator[tuple[torch.Tensor, Transpose]]:
        """``(f(ones), transpose)``, tried in turn to spread relevance that reached unsupported outputs: by default
        the rule's own map on an input of ones."""
        for _, output, transpose in self.maps(module, torch.ones_like(input)):
            yield output, transpose

    keeps = (0,)

    def relevance(self, module, inputs, relevance):
        return self.proportional(module, inputs[0], relevance)

    def proportional(self, module: torch.nn.Module, input: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        """``a * f^T(R / f(a))`` over the parts of :py:meth:`maps`, with the fallback of ``unsupported``."""
        maps = self.maps(module, input)
        output = maps[0][1] if len(maps) == 1 else sum(out for _, out, _ in maps)
        tiny = torch.finfo(output.dtype).tiny ** 0.5
        if self.nonnegative_map:
            # f(a) = 0 means every contribution is 0: dividing by tiny instead gives those outputs nothing.
            # In place: the output is ours, and these maps are memory-bound
            unsupported = (output <= tiny) if self.unsupported == FLAT and bool(output.amin() <= tiny) else None
            denominator = output.add_(self.epsilon) if self.epsilon else output.clamp_min_(tiny)
            scaled = denominator.reciprocal_().mul_(relevance)
        else:
            unsupported = output.abs() <= tiny
            if self.epsilon:
                denominator = output + self.epsilon * (2 * (output >= 0).to(output) - 1)
            else:
                denominator = output.masked_fill(unsupported, float("inf"))
            scaled = relevance / denominator
        if self.unsupported == FLAT and unsupported is not None:
            scaled.masked_fill_(unsupported, 0)  # a unit with z <= tiny: its relevance goes the flat way alone
        result = maps[0][2](scaled).mul_(maps[0][0])
        for part, _, transpose in maps[1:]:
            result = result + part * transpose(scaled)
        if self.unsupported == FLAT and unsupported is not None:
            stray = relevance * unsupported
            if bool(stray.any()):  # relevance, not just an unsupported unit, is there to place
                result = result + self._spread_flat(module, input, stray)
        return result

    def _spread_flat(self, module, input, stray):
        """Spread ``stray`` output relevance through :py:meth:`flat_maps`, each taking what the previous could not."""
        result = torch.zeros_like(input)
        for output, transpose in self.flat_maps(module, input):
            covered = output > 0
            result = result + transpose(stray * covered / output.where(covered, torch.ones_like(output)))
            stray = stray * ~covered
            if not bool(stray.any()):
                break
        return result


def _clamped_weight(module: torch.nn.Module, like: torch.Tensor, negative: bool = False,
                    fill: float | None = None) -> torch.Tensor:
    """The module's weight clamped to its positive (or ``negative``) part, or filled with ``fill``; made afresh each
    time, so no copy of the model stays in memory. Laid out like ``like`` (channels-last inputs get channels-last
    weights: the convolution would otherwise convert them on every call)."""
    weight = effective_weight(module)
    result = torch.empty_like(weight, memory_format=layout(like) if weight.ndim == 4 else torch.contiguous_format)
    if fill is not None:
        return result.fill_(fill)
    return torch.clamp(weight, **({"max": 0} if negative else {"min": 0}), out=result)


class ZPlus(PositiveProportional):
    """LRP z+ for convolutions and linear layers, as the paper uses it:
    ``R_i = a_i sum_k W+_ik R_k / (sum_i' a_i' W+_i'k + epsilon)``.

    Unlike zennit's ``ZPlus``, biases are always ignored, the stabiliser is added, not signed, and relevance at
    outputs no input supports can be spread flat (``unsupported``). Signed inputs get the full z+,
    ``a+ W+ + a- W-``. Two deviations from the reference implementation (docs/method.md, deviations): it zeroes the
    biases of linear layers only and keeps those of convolutions (torchvision's ResNets have none), and it applies
    ``a W+`` whatever the sign of ``a`` (its ResNets never give a convolution a signed input). See
    :py:class:`PositiveProportional` for the parameters.
    """

    nonnegative_map = True

    def maps(self, module, input):
        if not bool(input.amin() < 0):
            return [(input, *weighted_map(module, input, _clamped_weight(module, input)))]
        positive, negative = input.clamp(min=0), input.clamp(max=0)
        return [(positive, *weighted_map(module, positive, _clamped_weight(module, input))),
                (negative, *weighted_map(module, negative, _clamped_weight(module, input, negative=True)))]

    def flat_maps(self, module, input):
        ones = torch.ones_like(input)
        yield weighted_map(module, ones, _clamped_weight(module, ones))
        yield weighted_map(module, ones, _clamped_weight(module, ones, fill=1.0))  # where W+ is all zero: evenly


class FlatInputZPlus(ZPlus):
    """z+ with the input replaced by ones, for the first convolution:
    ``R_i = sum_k W+_ik R_k / (sum_i' W+_i'k + epsilon)``, independent of the pixel values.

    Unlike zennit's ``Flat`` (all weights 1) this keeps ``W+``, as the reference does.
    """

    def maps(self, module, input):
        ones = torch.ones_like(input)
        return [(ones, *weighted_map(module, ones, _clamped_weight(module, ones)))]
