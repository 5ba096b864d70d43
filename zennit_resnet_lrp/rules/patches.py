"""Sliding-window patches: ``nn.Unfold`` copies each window of its input into a column, ``fold`` (``F.fold`` or
``nn.Fold``) sums overlapping columns back into an image (VOLO's outlook attention, TNT's pixel embedding). Both are
linear maps with 0/1 coefficients; their rules return each output's relevance to what it is made of
(formulas in ``docs/method.md``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from .core import RelevanceRule
from .pools import to_edge
from .splits import RelevanceSplit, split_by_magnitude


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
    (symmetric), as at any other sum. A pixel no column lands on (a map whose size is not a multiple of the windows',
    MobileViTV2's unfold-fold round trip; gaps between windows) is a constant zero, but a rule after it that spreads
    relevance flat gives it some: that goes to the nearest covered pixel first (:py:func:`onto_covered`), as
    padding's goes to the edge. See :py:class:`~.splits.RelevanceSplit` for the parameters."""

    keeps = (0,)

    def relevance(self, module, inputs, relevance):
        columns = inputs[0]
        geometry = _geometry(module)
        size = relevance.shape[-2:]
        counts = F.fold(torch.ones_like(columns), size, **geometry)  # entries landing on each pixel
        relevance = onto_covered(relevance, counts.reshape(-1, *size)[0] > 0)
        counts = counts.clamp_min(1)
        if self.mode == "symmetric":
            return F.unfold(relevance / counts, **geometry)
        return split_by_magnitude(columns, lambda x: F.fold(x, size, **geometry),
                                  lambda r: F.unfold(r, **geometry), relevance, counts)


def onto_covered(relevance: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """Relevance of a fold's output (``(..., H, W)``) moved off the pixels no column lands on onto the nearest covered
    ones (the lower one at a tie), row and column apart: windows form a grid, so the covered pixels are the covered
    rows times the covered columns. A 0/1 map with one 1 per pixel: it conserves.

    Parameters
    ----------
    relevance : torch.Tensor
        Relevance at the fold's output, ``(..., H, W)``.
    covered : torch.Tensor
        ``(H, W)`` booleans: whether a column lands on the pixel.

    Returns
    -------
    torch.Tensor
        The relevance, of the same shape, nothing on uncovered pixels (unless none is covered: then as it was).
    """
    if bool(covered.all()) or not bool(covered.any()):
        return relevance
    for dim, lines in ((-2, covered.any(1)), (-1, covered.any(0))):
        if bool(lines.all()):
            continue
        kept = torch.nonzero(lines).flatten()
        positions = torch.arange(lines.numel(), device=lines.device)
        nearest = kept[(positions[:, None] - kept[None, :]).abs().argmin(1)]
        relevance = relevance.new_zeros(relevance.shape).index_add_(relevance.ndim + dim, nearest, relevance)
    return relevance
