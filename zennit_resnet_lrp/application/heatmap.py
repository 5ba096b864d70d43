"""Heatmaps out: the paper's heat quantization and display normalisation, and rendering to images."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw
from zennit.image import palette

SIGNS = ("positive", "negative", "absolute_value", "all")
DIVERGING = {"bwr", "coldnhot", "france", "seismic", "coolio"}


def quantize(heatmap: torch.Tensor, levels: int = 8) -> torch.Tensor:
    """Heat quantization per map (docs/method.md, heat quantization): ``bins = linspace(min, max, levels)``; each value
    in ``[bins[i], bins[i+1])`` becomes ``bins[i]``, the maximum stays. Computed as numpy's ``linspace`` does (in
    float64, ``min + i * (max - min) / (levels - 1)``, the last bin the maximum itself), as the reference does.

    Parameters
    ----------
    heatmap : torch.Tensor
        Maps (N, ...), each quantized over all its values (a map with channels: over all channels), or one map
        (H, W).
    levels : int
        Number of levels (the paper uses 8).
    """
    if levels < 2:
        raise ValueError(f"levels must be at least 2, not {levels}")
    flat = (heatmap.reshape(heatmap.shape[0], -1) if heatmap.ndim > 2 else heatmap.reshape(1, -1)).double()
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    bins = low + torch.arange(levels, dtype=flat.dtype, device=flat.device) * ((high - low) / (levels - 1))
    bins[:, -1:] = high  # exactly the maximum: (high - low) / (levels - 1) * (levels - 1) may round above it
    index = torch.searchsorted(bins.contiguous(), flat.contiguous(), right=True) - 1
    quantized = bins.gather(1, index.clamp(0, levels - 1))
    return quantized.to(heatmap.dtype).reshape(heatmap.shape)


def _cumulative_threshold(values: torch.Tensor, percentile: float) -> torch.Tensor:
    """Per row: the value at which the cumulative sum of the sorted values reaches ``percentile`` % of the total."""
    ordered = values.sort(1).values
    sums = ordered.cumsum(1)
    index = (sums < sums[:, -1:] * (percentile / 100)).sum(1, keepdim=True).clamp(max=values.shape[1] - 1)
    return ordered.gather(1, index)


def normalize(heatmap: torch.Tensor, sign: str = "positive", outlier_percent: float = 2.0) -> torch.Tensor:
    """Display normalisation (docs/method.md, display normalisation): keep the values of ``sign``, divide by the value at which
    the cumulative sum of the sorted values reaches ``100 - outlier_percent`` % of the total, clip to [-1, 1].

    Display only: the metrics use the raw maps.
    """
    if sign not in SIGNS:
        raise ValueError(f"unknown sign {sign!r}; choose one of {', '.join(SIGNS)}")
    flat = heatmap.reshape(heatmap.shape[0], -1) if heatmap.ndim > 2 else heatmap.reshape(1, -1)
    if sign == "positive":
        flat = flat.clamp(min=0)
        scale = _cumulative_threshold(flat, 100 - outlier_percent)
    elif sign == "negative":
        flat = flat.clamp(max=0)
        scale = -_cumulative_threshold(flat.abs(), 100 - outlier_percent)
    elif sign == "absolute_value":
        flat = flat.abs()
        scale = _cumulative_threshold(flat, 100 - outlier_percent)
    else:
        scale = _cumulative_threshold(flat.abs(), 100 - outlier_percent)
    result = torch.where(scale != 0, flat / scale.where(scale != 0, torch.ones_like(scale)), torch.zeros_like(flat))
    return result.clamp(-1, 1).reshape(heatmap.shape)


def keep_sign(heatmap: torch.Tensor, sign: str = "positive") -> torch.Tensor:
    """The values of ``sign`` only, unscaled (what :py:func:`normalize` keeps, for maps drawn on their own range):
    ``positive`` sets negative values to 0, ``negative`` positive ones, ``absolute_value`` takes magnitudes,
    ``all`` keeps everything. Display only."""
    if sign not in SIGNS:
        raise ValueError(f"unknown sign {sign!r}; choose one of {', '.join(SIGNS)}")
    if sign == "positive":
        return heatmap.clamp(min=0)
    if sign == "negative":
        return heatmap.clamp(max=0)
    return heatmap.abs() if sign == "absolute_value" else heatmap


def render(heatmap: torch.Tensor, cmap: str = "bwr", normalized: bool = False,
           limit: float | None = None) -> Image.Image:
    """One (H, W) map as an RGB image with a zennit colour map.

    A ``normalized`` map (values in [-1, 1]) is drawn on the fixed range [-1, 1] for diverging colour maps (0 is the
    middle colour) and [0, 1] or [-1, 0] otherwise; a raw map symmetrically around 0, up to ``limit`` (its largest
    absolute value by default).
    """
    array = heatmap.detach().cpu().double().numpy()
    if normalized:
        if cmap in DIVERGING or (array.min() < 0 < array.max()):
            low, high = -1.0, 1.0
        elif array.max() <= 0 and array.min() < 0:
            low, high = -1.0, 0.0
        else:
            low, high = 0.0, 1.0
    else:
        high = (limit if limit is not None else float(np.abs(array).max())) or 1.0
        low = -high
    # zennit's palette, indexed here (zennit's imgify builds a PIL palette image newer Pillows reject)
    colours = palette(cmap)
    index = np.clip(np.round((array - low) / (high - low) * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(colours[index], mode="RGB")


def limit_of(heatmap: torch.Tensor) -> float:
    """The largest absolute value of a map: the colour range :py:func:`render` gives it."""
    return float(heatmap.detach().abs().max())


def to_photo(heatmap: torch.Tensor, region: tuple[float, float, float, float],
             size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A map of the model's input (H, W) laid over a photo of ``size`` (width, height), where the input came from
    (``region``: its left, top, right, bottom in photo pixels; see ``Preprocessing.input_region``): the map sampled
    bilinearly at the photo's pixels, and a mask of the pixels the input covers. Outside it (cut off by the crop) the
    map is 0 and not to be shown as relevance."""
    width, height = size
    left, top, right, bottom = region
    values = heatmap.detach().double()[None, None]
    xs = (torch.arange(width, dtype=torch.float64) + 0.5 - left) / (right - left)  # 0..1 across the input
    ys = (torch.arange(height, dtype=torch.float64) + 0.5 - top) / (bottom - top)
    grid = torch.stack(torch.meshgrid(2 * xs - 1, 2 * ys - 1, indexing="xy"), dim=-1)[None]
    sampled = torch.nn.functional.grid_sample(values, grid.to(values.device), mode="bilinear",
                                              padding_mode="border", align_corners=False)[0, 0]
    covered = ((ys >= 0) & (ys < 1))[:, None] & ((xs >= 0) & (xs < 1))[None, :]
    return sampled.where(covered.to(sampled.device), torch.zeros_like(sampled)), covered


def hatch(image: Image.Image, mask: torch.Tensor, shade: int = 160, spacing: int = 6) -> Image.Image:
    """``image`` with the pixels outside ``mask`` (H, W) hatched grey: what the model did not see."""
    array = np.asarray(image.convert("RGB")).copy()
    outside = ~mask.cpu().numpy()
    rows, columns = np.indices(outside.shape)
    stripe = (rows + columns) % spacing < 2
    array[outside] = (array[outside] * 0.5 + 0.5 * shade).astype(np.uint8)
    array[outside & stripe] = shade // 2
    return Image.fromarray(array, mode="RGB")


def overlay(heatmap_image: Image.Image, image: Image.Image, alpha: float = 0.6) -> Image.Image:
    """The heatmap blended over a grayscale copy of the image (scaled to the heatmap's size)."""
    base = image.convert("L").convert("RGB").resize(heatmap_image.size, Image.BILINEAR)
    return Image.blend(base, heatmap_image.convert("RGB"), alpha)


# the colour of a region's outline: pure green, which none of zennit's colour maps (bwr, coldnhot, hot, gray, ...)
# draws, so the outline stands out on every heatmap
OUTLINE_COLOUR = (0, 255, 0)


def region_border(mask: torch.Tensor) -> torch.Tensor:
    """The 1-pixel contour around a boolean region (H, W): the pixels outside it with a 4-neighbour inside, and its own
    pixels on the image's edge (so the contour closes there). Drawn outside the region, it leaves the region's own
    pixels to be seen, however thin it is."""
    inside = mask.bool()
    padded = torch.nn.functional.pad(inside[None, None].float(), (1, 1, 1, 1))[0, 0].bool()
    touches = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    edge = torch.ones_like(inside)
    edge[1:-1, 1:-1] = False
    return (touches & ~inside) | (inside & edge)


def outline(image: Image.Image, mask: torch.Tensor, colour: tuple[int, int, int] = OUTLINE_COLOUR) -> Image.Image:
    """``image`` with the region ``mask`` (H, W, the image's size) outlined in ``colour``: the pixels of its
    1-pixel contour (:py:func:`region_border`) painted over."""
    if tuple(mask.shape) != (image.height, image.width):
        raise ValueError(f"the mask is {tuple(mask.shape)} but the image is {(image.height, image.width)}")
    array = np.asarray(image.convert("RGB")).copy()
    array[region_border(mask).cpu().numpy()] = colour
    return Image.fromarray(array, mode="RGB")
