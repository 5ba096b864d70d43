"""Heatmaps out: the paper's heat quantization and display normalisation, and rendering to images."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from zennit.image import palette

SIGNS = ("positive", "negative", "absolute_value", "all")
DIVERGING = {"bwr", "coldnhot", "france", "seismic", "coolio"}


def quantize(heatmap: torch.Tensor, levels: int = 8) -> torch.Tensor:
    """Heat quantization per map (docs/method.md, heat quantization): ``bins = linspace(min, max, levels)``; each value in
    ``[bins[i], bins[i+1])`` becomes ``bins[i]``, the maximum stays.

    Parameters
    ----------
    heatmap : torch.Tensor
        Maps (N, H, W) or one map (H, W).
    levels : int
        Number of levels (the paper uses 8).
    """
    if levels < 2:
        raise ValueError(f"levels must be at least 2, not {levels}")
    flat = heatmap.reshape(-1, heatmap.shape[-2] * heatmap.shape[-1]) if heatmap.ndim > 2 else heatmap.reshape(1, -1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    steps = torch.linspace(0, 1, levels, dtype=flat.dtype, device=flat.device)
    bins = low + (high - low) * steps  # (N, levels)
    index = torch.searchsorted(bins.contiguous(), flat.contiguous(), right=True) - 1
    quantized = bins.gather(1, index.clamp(0, levels - 1))
    return quantized.reshape(heatmap.shape)


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


def render(heatmap: torch.Tensor, cmap: str = "bwr", normalized: bool = False) -> Image.Image:
    """One (H, W) map as an RGB image with a zennit colour map.

    A ``normalized`` map (values in [-1, 1]) is drawn on the fixed range [-1, 1] for diverging colour maps (0 is the
    middle colour) and [0, 1] or [-1, 0] otherwise; a raw map symmetrically around 0.
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
        high = float(np.abs(array).max()) or 1.0
        low = -high
    # zennit's palette, indexed here (zennit's imgify builds a PIL palette image newer Pillows reject)
    colours = palette(cmap)
    index = np.clip(np.round((array - low) / (high - low) * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(colours[index], mode="RGB")


def overlay(heatmap_image: Image.Image, image: Image.Image, alpha: float = 0.6) -> Image.Image:
    """The heatmap blended over a grayscale copy of the image (same size as the heatmap)."""
    base = image.convert("L").convert("RGB").resize(heatmap_image.size, Image.BILINEAR)
    return Image.blend(base, heatmap_image.convert("RGB"), alpha)


def montage(tiles: list[Image.Image], columns: int = 10, tile: int = 112) -> Image.Image:
    """Tiles side by side in rows of ``columns``, each scaled to ``tile`` pixels (nearest neighbour: pixels stay
    sharp), for an overview of many heatmaps."""
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (min(columns, len(tiles)) * (tile + 2), rows * (tile + 2)), "white")
    for index, image in enumerate(tiles):
        scaled = image.convert("RGB").resize((tile, tile), Image.NEAREST)
        sheet.paste(scaled, ((index % columns) * (tile + 2), (index // columns) * (tile + 2)))
    return sheet
