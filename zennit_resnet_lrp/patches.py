"""Sliding-window patches: ``nn.Unfold`` copies each window of its input into a column, ``fold`` (``F.fold`` or
``nn.Fold``) sums overlapping columns back into an image (VOLO's outlook attention, TNT's pixel embedding). Both are
linear maps with 0/1 coefficients; their rules return each output's relevance to what it is made of
(formulas in ``docs/method.md``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from .core import RelevanceRule
from .pool_rules import to_edge
from .rules import RelevanceSplit


class Fold(torch.nn.Module):
    """``F.fold`` written in a forward, made a module so that a composite gives it the sums' rule. The window's
    geometry is fixed; the output size comes with each call (it is often read off another tensor's size).

    Parameters
    ----------
    kernel_size, dilation, padding, stride
        As ``F.fold`` takes them.
    """

    def __init__(self, kernel_size, dilation=1, padding=0, stride=1) -> None:
        super().__init__()
        self.kernel_size, self.dilation, self.padding, self.stride = kernel_size, dilation, padding, stride

    def forward(self, input: torch.Tensor, output_size) -> torch.Tensor:  # noqa: A002 - the module's input
        return F.fold(input, output_size, self.kernel_size, self.dilation, self.padding, self.stride)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, dilation={self.dilation}, padding={self.padding}, "
                f"stride={self.stride}")


def _geometry(module: torch.nn.Module) -> dict:
    return {key: getattr(module, key) for key in ("kernel_size", "dilation", "padding", "stride")}


class CopiesBack(RelevanceRule):
    """For ``nn.Unfold``: every column entry is a copy of one input pixel or of the zero padding, so each copy's
    relevance goes back to the pixel it copies, ``R_in = fold(R)``, the map's transpose; a copy of the padding's
    relevance (a rule that spreads relevance flat may give it some) to the edge pixel it extends, as
    :py:class:`~.pool_rules.PaddingToEdge` does."""

    keeps = (0,)  # for its size

    def relevance(self, module, inputs, relevance):
        geometry = _geometry(module)
        height, width = _pair(geometry.pop("padding"))
        size = inputs[0].shape[-2:]
        canvas = F.fold(relevance, (size[0] + 2 * height, size[1] + 2 * width), padding=0, **geometry)
        return to_edge(canvas, (width, width, height, height)) if height or width else canvas


class FoldSplit(RelevanceSplit):
    """Relevance Splitting at a fold, a sum of overlapping columns: each output pixel's relevance is split over the
    column entries that land on it, ``|x_i| / sum_j |x_j|`` of it (ratio; evenly where all are 0) or evenly
    (symmetric), as at any other sum. See :py:class:`~.rules.RelevanceSplit` for the parameters."""

    keeps = (0,)

    def relevance(self, module, inputs, relevance):
        columns = inputs[0]
        geometry = _geometry(module)
        size = relevance.shape[-2:]
        counts = F.fold(torch.ones_like(columns), size, **geometry)  # how many entries land on each pixel
        even = relevance / counts.clamp_min(1)
        if self.mode == "symmetric":
            return F.unfold(even, **geometry)
        magnitude = columns.abs()
        total = F.fold(magnitude, size, **geometry)
        supported = total > 0
        scaled = torch.where(supported, relevance / total.where(supported, torch.ones_like(total)), 0)
        return magnitude * F.unfold(scaled, **geometry) + F.unfold(even.masked_fill(supported, 0), **geometry)
