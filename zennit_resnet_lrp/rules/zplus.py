"""The z+ family: proportional redistribution through a layer's positive linear map (convolutions, linear layers,
pools), the paper's flat-input rule for the first layer, and what happens where the positive pre-activation is 0
(``unsupported``: dropped, as the reference does, or spread flat, which conserves).

Each rule reads the module's own weights without ever modifying them. The formulas are in ``docs/method.md``.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .core import RelevanceRule
from .maps import Transpose, effective_weight, layout, weighted_map

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
