"""The z+ family: proportional redistribution through a layer's positive linear map (convolutions, linear layers,
pools), the paper's flat-input rule for the first layer, and what happens where the positive pre-activation is 0
(``unsupported``: dropped, as the reference does, or spread flat, which conserves).

Each rule reads the module's own weights without ever modifying them. The formulas are in ``docs/method.md``.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .core import RelevanceRule, runs_class_forward
from .maps import (_SAME, _STANDARDISED, Transpose, closed_form, effective_weight, layout, weighted_map,
                   weighted_transpose)

DROP = "drop"
FLAT = "flat"


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
        See :py:class:`~zennit_resnet_lrp.rules.core.RelevanceRule`.
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
            # In place: the output is ours, and these maps are memory-bound. One reduction says whether any output is
            # that small; the mask and the clamp are made only then
            low = bool(output.amin() <= tiny) if self.unsupported == FLAT or not self.epsilon else False
            unsupported = (output <= tiny) if low and self.unsupported == FLAT else None
            denominator = output.add_(self.epsilon) if self.epsilon else output.clamp_min_(tiny) if low else output
            scaled = torch.div(relevance, denominator, out=denominator)
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


# the forwards known to compute ``W a + b`` with the module's effective weight, padded as weighted_map pads: only
# their output is reused for ``W a``
_PRODUCT_FORWARDS = (torch.nn.Linear.forward, torch.nn.Conv1d.forward, torch.nn.Conv2d.forward,
                     torch.nn.Conv3d.forward)


def computes_product(module: torch.nn.Module) -> bool:
    """Whether ``module``'s output is ``W a + b`` with its effective weight and a transpose in closed form: a linear
    layer or convolution of torch's or timm's ("same"-padded, weight-standardised) own, running its class's forward."""
    known = type(module).forward in _PRODUCT_FORWARDS or type(module).__name__ in _SAME | _STANDARDISED
    return known and closed_form(module) and runs_class_forward(module)


class ZPlus(PositiveProportional):
    """LRP z+ for convolutions and linear layers, as the paper uses it:
    ``R_i = a_i sum_k W+_ik R_k / (sum_i' a_i' W+_i'k + epsilon)``.

    Unlike zennit's ``ZPlus``, biases are always ignored, the stabiliser is added, not signed, and relevance at
    outputs no input supports can be spread flat (``unsupported``). Signed inputs get the full z+,
    ``a+ W+ + a- W-``, computed as ``(W a + |W| |a|) / 2`` with ``W a`` taken from the module's own output (one
    product more than the forward instead of two; units where the two terms cancel to rounding get the two-halves
    value, see :py:attr:`cancellation`). Two deviations from the reference implementation (docs/method.md,
    deviations): it zeroes the biases of linear layers only and keeps those of convolutions (torchvision's ResNets
    have none), and it applies ``a W+`` whatever the sign of ``a`` (its ResNets never give a convolution a signed
    input). See :py:class:`PositiveProportional` for the parameters.
    """

    nonnegative_map = True
    # a unit's z = (W a + |W||a|) / 2 is recomputed in the two-halves form where 2 z <= (|W||a| + |b|) times this
    # power of the dtype's epsilon: the rounding error of W a, a small multiple of epsilon (|W||a| + |b|), is then at
    # most that multiple of epsilon^(1 - cancellation) relative to z (float32: 6.4e-6, float64: 1.8e-12); units
    # carrying most of the relevance are far from the bound
    cancellation = 1 / 4

    def fresh_output(self, module):
        return computes_product(module)

    def keeps_output(self, module, inputs):
        input = inputs[0]
        return (isinstance(input, torch.Tensor) and input.is_floating_point() and computes_product(module)
                and bool(input.amin() < 0))

    def relevance(self, module, inputs, relevance, output=None):
        input = inputs[0]
        if output is None or output.dtype != input.dtype:  # modified since, or computed at another precision
            return self.proportional(module, input, relevance)
        return self.signed_from_output(module, input, output, relevance)

    def signed_from_output(self, module: torch.nn.Module, input: torch.Tensor, output: torch.Tensor,
                           relevance: torch.Tensor) -> torch.Tensor:
        """z+ of a signed ``input`` given the module's ``output``: ``2 z = W a + |W| |a|`` with ``W a`` the output less
        the bias, and ``R_in = a * W^T s + |a| * |W|^T s`` for ``s = R / (2 z)``; the same as
        :py:meth:`proportional` on the two halves ``a+ W+ + a- W-``, whose value the units that cancel get.

        Written for few passes over the tensors (these layers are memory-bound on a CPU besides their products): the
        bias enters the product, ``z`` is never halved, the check for cancelling units is one reduction (and one
        comparison where that finds a unit near its threshold)."""
        with torch.no_grad():
            weight = effective_weight(module)
            magnitude = torch.abs(weight, out=torch.empty_like(
                weight, memory_format=layout(input) if weight.ndim == 4 else torch.contiguous_format))
            absolute = input.abs()
            bias = _bias_of(module, output)
            # |W| |a| - b, the bias subtracted by the product itself: then 2 z = output + that
            shifted, size_transpose = weighted_map(module, absolute, magnitude,
                                                   None if bias is None else -module.bias.detach())
            doubled = torch.add(output, shifted)
            # W a is rounded by about eps (|W| |a| + |b|): where 2 z is within a tolerance of that, z is recomputed
            tolerance = torch.finfo(output.dtype).eps ** self.cancellation
            margin = torch.add(doubled, shifted, alpha=-tolerance)  # 2 z - tolerance (|W| |a| - b)
            del shifted
            # units at or near 2 z = 0 (2 tiny) among them, so that dividing by the others is finite
            floor = 2 * torch.finfo(output.dtype).tiny ** 0.5
            # 2 z - tolerance (|W| |a| + |b|) <= floor where the margin is at most this (per output channel)
            threshold = floor if bias is None else (bias + bias.abs()).mul_(tolerance).add_(floor)
            cancelled, parts = None, []
            # one reduction against the largest threshold; the units themselves only where that finds any
            if bool(margin.amin() <= (threshold if bias is None else threshold.max())):
                cancelled = margin <= threshold
                cancelled = cancelled if bool(cancelled.any()) else None
            entries = None
            if cancelled is not None:
                # the two halves (a signed input), exact where z is small: for the entries (images, rows) holding
                # such units only, where those are few
                entries = _entries_holding(module, input, cancelled)
                parts = self.maps(module, input if entries is None else input[entries])
                exact = sum(out for _, out, _ in parts).mul_(2)
                if entries is None:
                    doubled = torch.where(cancelled, exact, doubled)
                else:
                    doubled[entries] = torch.where(cancelled[entries], exact, doubled[entries])
            return self._redistribute(module, (input, absolute), doubled, relevance, (cancelled, entries, parts),
                                      (weight, size_transpose), margin)

    def _redistribute(self, module, inputs, doubled, relevance, recomputed, transposes, spare):
        """``R_in`` for ``s = R / (2 z)``: the units that cancelled (``recomputed``: their mask, the entries along
        the first dimension the two halves were computed for, None for all, and the two halves) through the two
        halves' transposes, the others through ``a W^T s + |a| |W|^T s``; ``spare`` is a tensor of the output's
        shape to write into."""
        input, absolute = inputs
        weight, size_transpose = transposes
        cancelled, entries, parts = recomputed
        floor = 2 * torch.finfo(doubled.dtype).tiny ** 0.5
        # units no input supports (z = 0) are among those recomputed
        unsupported = cancelled & (doubled <= floor) if cancelled is not None and self.unsupported == FLAT else None
        if self.epsilon:
            doubled.add_(2 * self.epsilon)
        elif cancelled is not None:
            doubled.clamp_min_(floor)
        scaled = torch.div(relevance, doubled, out=spare)
        result = None
        if cancelled is not None:
            if unsupported is not None:
                scaled.masked_fill_(unsupported, 0)  # their relevance goes the flat way alone
            slow = scaled * cancelled if entries is None else scaled[entries] * cancelled[entries]
            slow.mul_(2)  # the two halves' transposes take R / z
            scaled.masked_fill_(cancelled, 0)
            result = sum(transpose(slow).mul_(part) for part, _, transpose in parts)
        fast = weighted_transpose(module, input, weight)(scaled).mul_(input)
        fast.addcmul_(size_transpose(scaled), absolute)
        if result is None:
            result = fast
        elif entries is None:
            result = result.add_(fast)
        else:
            result = fast.index_add_(0, entries, result)
        if unsupported is not None:
            stray = relevance * unsupported
            if bool(stray.any()):
                result = result + self._spread_flat(module, input, stray)
        return result

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


def _entries_holding(module: torch.nn.Module, input: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """The indices along the first dimension of ``mask`` (of the module's output's shape) of the entries holding a
    unit it marks, or None where every entry does or the first dimension is not one of independent entries (an
    unbatched convolution's channels, a linear layer's features of a single vector)."""
    if input.ndim < 2 or (not isinstance(module, torch.nn.Linear) and input.ndim != module.weight.ndim):
        return None
    held = mask.flatten(1).any(1)
    return None if bool(held.all()) else held.nonzero().squeeze(1)


def _bias_of(module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor | None:
    """The module's bias shaped to broadcast over its ``output`` (channels second for convolutions, last for linear
    layers), or None."""
    bias = getattr(module, "bias", None)
    if bias is None:
        return None
    bias = bias.detach()
    if isinstance(module, torch.nn.Linear):
        return bias
    return bias.reshape(-1, *([1] * (output.ndim - 2)))


class FlatInputZPlus(ZPlus):
    """z+ with the input replaced by ones, for the first convolution:
    ``R_i = sum_k W+_ik R_k / (sum_i' W+_i'k + epsilon)``, independent of the pixel values.

    Unlike zennit's ``Flat`` (all weights 1) this keeps ``W+``, as the reference does.
    """

    def keeps_output(self, module, inputs):
        return False  # its map is that of an input of ones, not the module's own

    def maps(self, module, input):
        ones = torch.ones_like(input)
        return [(ones, *weighted_map(module, ones, _clamped_weight(module, ones)))]
