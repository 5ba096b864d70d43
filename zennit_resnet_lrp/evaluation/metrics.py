"""Insertion, Deletion and the ID score (docs/method.md, metrics), as batched tensor code."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

BASELINES = ("black", "blur", "mean")
MODES = ("insertion", "deletion")
PATCH_GRIDS = ("cover", "reference")


@dataclass
class CurveSpec:
    """How the perturbation curves are drawn.

    Attributes
    ----------
    step : int or None
        Pixels (patches) added or removed per curve point; the paper's 500 (at 224x224) unless ``points`` is given.
    points : int or None
        Alternatively, the number of curve points (``step = ceil(pixels / points)``), for small images.
    patch_size : int
        Pool the map with a max over each ``patch_size`` square and perturb whole patches (1: pixels).
    patch_grid : {"cover", "reference"}
        Where ``patch_size`` does not divide the image: ``cover`` pools the partial patches at the border over the
        pixels they have and perturbs exactly them; ``reference`` pools as the reference implementation does
        (``skimage``'s ``block_reduce``: padded with zeros), counts curve points over the whole patches only, and
        scales the patch masks to the image by nearest neighbour (OpenCV's ``INTER_NEAREST``).
    baseline : {"black", "blur", "mean"}
        What removed pixels become: black (0 in [0, 1] space, the paper), a blurred copy, or the image mean.
    strict : bool
        Perturb exactly ``step`` more patches per point, ties broken by position, instead of the paper's
        threshold masks (``map >= t``), under which tied values enter together.
    """

    step: int | None = None
    points: int | None = None
    patch_size: int = 1
    baseline: str = "black"
    strict: bool = False
    patch_grid: str = "cover"

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"unknown baseline {self.baseline!r}; choose one of {', '.join(BASELINES)}")
        if self.patch_grid not in PATCH_GRIDS:
            raise ValueError(f"unknown patch grid {self.patch_grid!r}; choose one of {', '.join(PATCH_GRIDS)}")
        if self.step is not None and self.points is not None:
            raise ValueError("give step or points, not both")
        if self.step is None and self.points is None:
            self.step = 500
        if any(value is not None and value < 1 for value in (self.step, self.points, self.patch_size)):
            raise ValueError("step, points and patch_size must be positive")

    def step_for(self, count: int) -> int:
        return self.step if self.step is not None else math.ceil(count / self.points)


def patch_maps(maps: torch.Tensor, patch_size: int, grid: str = "cover") -> torch.Tensor:
    """Maps (N, H, W) pooled to patches with a max: (N, ceil(H/p), ceil(W/p)); the ``reference`` grid pads the
    border with zeros first, as ``skimage.measure.block_reduce`` does."""
    if patch_size == 1:
        return maps
    if grid == "reference":
        height, width = maps.shape[-2:]
        maps = F.pad(maps, (0, -width % patch_size, 0, -height % patch_size), value=0.0)
    return F.max_pool2d(maps[:, None], patch_size, patch_size, ceil_mode=True)[:, 0]


def _nearest_rows(source: int, target: int, device) -> torch.Tensor:
    """OpenCV's ``INTER_NEAREST`` index map from ``target`` pixels back to ``source`` cells:
    ``min(floor(i * source / target), source - 1)``."""
    return (torch.arange(target, device=device, dtype=torch.float64) * (source / target)).floor().long() \
        .clamp(max=source - 1)


def _curve_geometry(size: tuple[int, int], spec: CurveSpec) -> tuple[int, int, int]:
    """(patches, patches per step, curve points) of (H, W) maps: the points count the whole patches only under the
    ``reference`` grid, every patch under ``cover``."""
    height, width = size
    count = math.ceil(height / spec.patch_size) * math.ceil(width / spec.patch_size)
    whole = (height // spec.patch_size) * (width // spec.patch_size) if spec.patch_grid == "reference" else count
    step = spec.step_for(whole)
    return count, step, math.ceil(whole / step)


def curve_fractions(size: tuple[int, int], spec: CurveSpec) -> list[float]:
    """Where the points of :py:func:`curve_masks`' curves lie: the fraction of the patches of (H, W) maps that point
    ``i`` shows (insertion) or removes (deletion), ties aside: point ``i`` is taken after ``i + 1`` steps, so the
    first lies at about ``step / patches``, never at 0, and the last at 1. Paper (not strict): the ``k + 1`` patches
    down to sorted position ``k = min(step (i + 1), count - 1)``; strict: ``min(step (i + 1), count)``."""
    count, step, points = _curve_geometry(size, spec)
    taken = [min(step * (index + 1), count) if spec.strict else min(step * (index + 1), count - 1) + 1
             for index in range(points)]
    return [patches / count for patches in taken]


def curve_masks(maps: torch.Tensor,
                spec: CurveSpec) -> tuple[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Return the number of curve points ``n`` and a function giving the keep-masks (B, H, W) of the pairs
    (sample index, point index): 1 where insertion shows the pixel (and deletion removes it).

    Paper (not strict): with the patch values sorted descending, point ``i`` uses the threshold ``t`` at sorted
    position ``k = min(step (i + 1), count - 1)`` and keeps every patch with value ``>= t``.
    """
    height, width = maps.shape[-2:]
    patches = patch_maps(maps, spec.patch_size, spec.patch_grid)
    flat = patches.flatten(1)
    count, step, points = _curve_geometry((height, width), spec)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    if spec.strict:
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(count, device=flat.device).expand_as(order))
    else:
        positions = torch.clamp(torch.arange(1, points + 1, device=flat.device) * step, max=count - 1)
        thresholds = flat.gather(1, order).index_select(1, positions)  # (N, points)
    rows = _nearest_rows(patches.shape[-2], height, flat.device)
    columns = _nearest_rows(patches.shape[-1], width, flat.device)

    def masks(samples: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if spec.strict:
            kept = torch.clamp((indices + 1) * step, max=count)
            keep = rank[samples] < kept[:, None]
        else:
            keep = flat[samples] >= thresholds[samples, indices][:, None]
        keep = keep.view(-1, *patches.shape[-2:])
        if spec.patch_size == 1:
            return keep
        if spec.patch_grid == "reference":
            return keep[:, rows][:, :, columns]
        keep = keep.repeat_interleave(spec.patch_size, 1).repeat_interleave(spec.patch_size, 2)
        return keep[:, :height, :width]

    return points, masks


def baseline_images(images: torch.Tensor, baseline: str) -> torch.Tensor:
    """What removed pixels become, in [0, 1] space, for images (N, C, H, W)."""
    if baseline == "black":
        return torch.zeros_like(images)
    if baseline == "mean":
        return images.mean((2, 3), keepdim=True).expand_as(images)
    radius = max(1, round(min(images.shape[-2:]) / 20))
    size = 2 * radius + 1
    kernel = torch.exp(-((torch.arange(size, device=images.device, dtype=images.dtype) - radius) ** 2)
                       / (2 * (radius / 2) ** 2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    blurred = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"),
                       kernel.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)
    return F.conv2d(F.pad(blurred, (0, 0, radius, radius), mode="reflect"),
                    kernel.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)


@torch.no_grad()
def perturbation_curves(
    model: torch.nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    labels: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    spec: CurveSpec | None = None,
    *,
    batch_size: int = 64,
    modes: tuple[str, ...] = MODES,
) -> dict[str, torch.Tensor]:
    """Insertion and deletion curves: the softmax probability of ``labels`` as pixels are inserted into the
    baseline or deleted from the image, most relevant first.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits.
    images : torch.Tensor
        Un-normalised images in [0, 1], (N, C, H, W).
    maps : torch.Tensor
        Heatmaps (N, H, W).
    labels : torch.Tensor
        Ground-truth classes (N,).
    normalize : callable
        Maps [0, 1] images to the model's input (mean/std normalisation).
    spec : CurveSpec
        Step, patch size, baseline and ordering (the paper's by default).
    batch_size : int
        Curve images per forward pass; the curve images of several samples share batches.

    Returns
    -------
    dict
        ``{"insertion": (N, n), "deletion": (N, n)}`` scores.
    """
    spec = spec or CurveSpec()
    points, masks = curve_masks(maps.to(images.device), spec)
    base = baseline_images(images, spec.baseline)
    pairs = torch.cartesian_prod(torch.arange(images.shape[0]), torch.arange(points)).to(images.device)
    jobs = [(mode, pairs[begin:begin + batch_size]) for mode in modes for begin in range(0, len(pairs), batch_size)]
    scores = {mode: torch.empty(images.shape[0], points, device=images.device) for mode in modes}
    for mode, chunk in jobs:
        samples, indices = chunk[:, 0], chunk[:, 1]
        keep = masks(samples, indices)[:, None].to(images.dtype)
        if mode == "deletion":
            keep = 1 - keep
        perturbed = images[samples] * keep + base[samples] * (1 - keep)
        probabilities = model(normalize(perturbed)).softmax(1)
        scores[mode][samples, indices] = probabilities.gather(1, labels.to(images.device)[samples, None])[:, 0].float()
    return scores


def auc(scores: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under curves (N, n) on a uniform grid over [0, 1]: ``(sum - s0/2 - s_last/2) / (n - 1)``;
    a single point's area is its value."""
    if scores.shape[-1] == 1:
        return scores[..., 0]
    return (scores.sum(-1) - scores[..., 0] / 2 - scores[..., -1] / 2) / (scores.shape[-1] - 1)


def insertion_deletion(
    model: torch.nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    labels: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    spec: CurveSpec | None = None,
    *,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Per-sample Insertion AUC, Deletion AUC and ID = Insertion - Deletion, plus the curves."""
    curves = perturbation_curves(model, images, maps, labels, normalize, spec, batch_size=batch_size)
    insertion, deletion = auc(curves["insertion"]), auc(curves["deletion"])
    return {"insertion": insertion, "deletion": deletion, "id": insertion - deletion,
            "insertion_curve": curves["insertion"], "deletion_curve": curves["deletion"]}


