"""Region deletion: how fast a dense model's score for a region falls as the pixels a map calls most relevant are
deleted first (a segmentation's counterpart of the Deletion curve in :py:mod:`.metrics`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..outputs import OutputChoice, logits_of
from ..targets import Region, TargetError


class RegionDeletionError(ValueError):
    """Inputs, maps or a region that region deletion cannot use."""


@dataclass(frozen=True)
class RegionDeletion:
    """Region deletion curves of N samples over ``steps + 1`` points.

    Attributes
    ----------
    fractions : torch.Tensor
        (steps + 1,) the fraction of pixels deleted at each point, 0 to 1 (float64).
    curve : torch.Tensor
        (N, steps + 1) the region's mean logit of the label at each point.
    normalized : torch.Tensor
        (N, steps + 1) ``(curve - curve[:, -1]) / (curve[:, 0] - curve[:, -1])``: 1 on the input, 0 with every pixel
        deleted (the same for every map), NaN where those two are equal.
    auc : torch.Tensor
        (N,) area under ``normalized`` over ``fractions`` (trapezoid), float64: lower is more faithful.
    """

    fractions: torch.Tensor
    curve: torch.Tensor
    normalized: torch.Tensor
    auc: torch.Tensor


@torch.no_grad()
def region_deletion(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    region: Region,
    relevance: torch.Tensor,
    *,
    baseline: float | torch.Tensor = 0.0,
    steps: int = 28,
    batch_size: int = 64,
    output: OutputChoice = None,
) -> RegionDeletion:
    """Delete the pixels of ``inputs`` most relevant first and record the region's mean logit of its label.

    The region's pixels are fixed on the model's output for the unchanged inputs (a mask or box as given; the
    predicted pixels of the label for a region without one). Pixels are deleted ``ceil(H * W / steps)`` at a time,
    in order of decreasing relevance (ties by position), all channels of a pixel together.

    Parameters
    ----------
    model : torch.nn.Module
        A model with a dense output (N, K, H', W') (or one holding it; see ``output``). Used as it is (put it in eval
        mode first).
    inputs : torch.Tensor
        (N, C, H, W), as the model takes them.
    region : Region
        The label and pixels whose mean logit is followed.
    relevance : torch.Tensor
        Maps (N, H, W) or (N, C, H, W) (summed over the channels).
    baseline : float or torch.Tensor
        What a deleted pixel becomes, as the model takes it (the normalised background value, for instance); a tensor
        broadcast to ``inputs``.
    steps : int
        Curve points after the first (the unchanged input).
    batch_size : int
        Curve inputs per forward pass.
    output : str, int or callable, optional
        Where the logits are in what the model returns, as for :py:func:`~zennit_resnet_lrp.attribute`.

    Returns
    -------
    RegionDeletion
    """
    maps = _check(inputs, relevance, steps)
    baseline = torch.as_tensor(baseline, dtype=inputs.dtype, device=inputs.device).expand_as(inputs)
    first = logits_of(model(inputs), output)
    try:
        region.check_output(first)
    except TargetError as error:
        raise RegionDeletionError(str(error)) from None
    mask = region.pixels(first).to(first.dtype)
    empty = (mask.flatten(1).sum(1) == 0).nonzero()
    if len(empty):
        raise RegionDeletionError(f"the region of sample {int(empty[0, 0])} holds no pixels; give a mask or box, or "
                                  "a label the model predicts somewhere")
    counts = torch.arange(steps + 1, device=inputs.device) * math.ceil(maps[0].numel() / steps)
    curve = torch.stack([_sample_curve(model, inputs[index], baseline[index], maps[index], counts, batch_size,
                                       output, region.label, mask[index]) for index in range(len(inputs))])
    return _finish(curve, counts.clamp(max=maps[0].numel()).double().cpu() / maps[0].numel())


def _check(inputs: torch.Tensor, relevance: torch.Tensor, steps: int) -> torch.Tensor:
    """The maps as (N, H, W), or a one-line error."""
    if inputs.ndim != 4:
        raise RegionDeletionError(f"inputs must be images (N, C, H, W), not shape {tuple(inputs.shape)}")
    if relevance.ndim == 4:
        relevance = relevance.sum(1)
    if relevance.shape != (inputs.shape[0], *inputs.shape[2:]):
        raise RegionDeletionError(f"relevance of shape {tuple(relevance.shape)} does not fit inputs of shape "
                                  f"{tuple(inputs.shape)}; give (N, H, W) or (N, C, H, W) maps")
    if steps < 1:
        raise RegionDeletionError(f"steps must be at least 1, not {steps}")
    return relevance.to(inputs.device)


def _sample_curve(model, image, baseline, relevance, counts, batch_size, output, label, mask) -> torch.Tensor:
    """One sample's curve: its mean logit of ``label`` over ``mask`` with ``counts`` pixels deleted."""
    height, width = relevance.shape
    order = torch.sort(relevance.flatten(), descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    scores = []
    for begin in range(0, len(counts), batch_size):
        deleted = (rank.view(1, 1, height, width) < counts[begin:begin + batch_size].view(-1, 1, 1, 1))
        perturbed = torch.where(deleted, baseline, image)
        logits = logits_of(model(perturbed), output)[:, label]
        scores.append((logits * mask).flatten(1).sum(1) / mask.sum())
    return torch.cat(scores)


def _finish(curve: torch.Tensor, fractions: torch.Tensor) -> RegionDeletion:
    span = curve[:, :1] - curve[:, -1:]
    # no fall to normalise by (the label scores the same on the blank input): NaN, not a made-up area
    normalized = (curve - curve[:, -1:]) / span.where(span != 0, torch.full_like(span, math.nan))
    area = torch.trapezoid(normalized.double().cpu(), fractions, dim=1)
    return RegionDeletion(fractions, curve, normalized, area)
