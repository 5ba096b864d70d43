"""torchvision's shifted window attention (Swin and Swin V2 on images, Swin3D on videos) through explicit modules.
Its forward calls ``shifted_window_attention`` (``shifted_window_attention_3d``), functions torchvision hides from
``torch.fx``; here the same computation, over two or three window dimensions alike, calls the module's own ``qkv``
and ``proj`` layers and explicit attention modules, so that the rules see it: the windows' padding (where the feature
map is not a multiple of the window), partition, cyclic shift and merge move relevance as they move values, the
relative position bias and the shift mask are constants on the logits.

Swin's patch merging (``PatchMerging``, ``PatchMergingV2``; Swin3D merges with the same class) pads odd maps to even
sizes inside ``_patch_merging_pad``, another function hidden from ``torch.fx``: :py:data:`PATCH_MERGING`, a breakdown
of its own, writes it out with that padding through a ``Pad``."""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from ..modules import AttentionProduct, MatrixProduct, Pad, from_padding_layout, padding_layout

NOTE = None  # what the canonizer reports of a module broken down here (nothing: nothing is lost)

# torchvision's shifted window attention classes: those of images (two window dimensions) and videos (three)
CLASSES = ("ShiftedWindowAttention", "ShiftedWindowAttentionV2", "ShiftedWindowAttention3d")


def decompose(module: torch.nn.Module, name: str = "") -> list[str]:
    """Give a shifted window attention (``ShiftedWindowAttention``, its V2 or ``ShiftedWindowAttention3d``) explicit
    attention children and a forward that uses them; return the names added."""
    children = {"padding": Pad(), "logits": MatrixProduct(), "softmax": torch.nn.Softmax(-1),
                "values": AttentionProduct()}
    for name, child in children.items():
        module.add_module(name, child)
    module.__dict__["forward"] = forward.__get__(module)
    return list(children)


def matches(module: torch.nn.Module) -> bool:
    return type(module).__name__ in CLASSES and type(module).__module__.startswith("torchvision.")


def _mask(shape: list[int], window: list[int], shift: list[int], device) -> torch.Tensor:
    """The shifted windows' mask, (windows, tokens, tokens): -100 between positions that came from different regions
    before the shift."""
    regions = torch.zeros(shape, device=device)
    bounds = [((0, -size), (-size, -step), (-step, None)) for size, step in zip(window, shift)]
    for count, corner in enumerate(itertools.product(*bounds)):
        regions[tuple(slice(*pair) for pair in corner)] = count
    regions = _partition(regions[None, ..., None], window).reshape(-1, math.prod(window))
    difference = regions.unsqueeze(1) - regions.unsqueeze(2)
    return difference.masked_fill(difference != 0, -100.0).masked_fill(difference == 0, 0.0)


def _partition(x: torch.Tensor, window: list[int]) -> torch.Tensor:
    """(B, *sizes, C) into windows, (B * windows, tokens per window, C), windows and their tokens in row-major order."""
    batch, sizes, channels = x.shape[0], x.shape[1:-1], x.shape[-1]
    x = x.view(batch, *(part for size, length in zip(sizes, window) for part in (size // length, length)), channels)
    order = [0, *range(1, 2 * len(window), 2), *range(2, 2 * len(window) + 1, 2), 2 * len(window) + 1]
    return x.permute(order).reshape(-1, math.prod(window), channels)


def _merge(x: torch.Tensor, window: list[int], sizes: list[int]) -> torch.Tensor:
    """:py:func:`_partition`'s windows back into (B, *sizes, C)."""
    dims, channels = len(window), x.shape[-1]
    x = x.view(-1, *(size // length for size, length in zip(sizes, window)), *window, channels)
    order = [0, *(index for dim in range(dims) for index in (1 + dim, 1 + dims + dim)), 2 * dims + 1]
    return x.permute(order).reshape(-1, *sizes, channels)


def _geometry(self, sizes: list[int]) -> tuple[list[int], list[int], torch.Tensor]:
    """The window, the shift and the relative position bias at feature map ``sizes``: no shift along a dimension the
    window covers; Swin3D also shrinks the window to the map there (as ``_get_window_and_shift_size``), Swin pads."""
    window, shift = list(self.window_size), list(self.shift_size)
    for dim, size in enumerate(sizes):
        if size <= window[dim]:
            shift[dim] = 0
            if len(window) == 3:
                window[dim] = size
    if len(window) == 3:
        return window, shift, self.get_relative_position_bias(window)
    return window, shift, self.get_relative_position_bias()


def forward(self, x: torch.Tensor) -> torch.Tensor:
    """``shifted_window_attention`` (or ``_3d``) of torchvision (eval mode: no dropout), through the module's
    children."""
    sizes, channels, heads = list(x.shape[1:-1]), x.shape[-1], self.num_heads
    window, shift, bias = _geometry(self, sizes)
    pads = [(length - size % length) % length for size, length in zip(sizes, window)]
    # through a padding child, channels first (the layout its rule reads, at most three padded dimensions): the
    # padded tokens' relevance goes to the edge tokens, where the function's gradient would drop it
    widths = tuple(width for pad in reversed(pads) for width in (0, pad))
    x = self.padding(x.movedim(-1, 1), widths).movedim(1, -1)
    padded = list(x.shape[1:-1])
    dims = tuple(range(1, len(window) + 1))
    if sum(shift) > 0:
        x = torch.roll(x, shifts=tuple(-step for step in shift), dims=dims)
    x = _partition(x, window)
    qkv = self.qkv(x)
    logit_scale = getattr(self, "logit_scale", None)
    if logit_scale is not None and self.qkv.bias is not None:  # V2: no bias on the keys (a constant, subtracted)
        length = self.qkv.bias.numel() // 3
        qkv = qkv - F.pad(self.qkv.bias[length:2 * length], (length, length))
    q, k, v = qkv.reshape(x.size(0), x.size(1), 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
    if logit_scale is not None:  # V2: cosine attention
        logits = self.logits(F.normalize(q, dim=-1), F.normalize(k, dim=-1).transpose(-2, -1))
        logits = logits * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        logits = self.logits(q * (channels // heads) ** -0.5, k.transpose(-2, -1))
    logits = logits + bias
    if sum(shift) > 0:
        windows = math.prod(size // length for size, length in zip(padded, window))
        mask = _mask(padded, window, shift, x.device).to(logits.dtype)
        logits = logits.view(x.size(0) // windows, windows, heads, x.size(1), x.size(1)) + mask.unsqueeze(1)[None]
        logits = logits.view(-1, heads, x.size(1), x.size(1))
    x = self.values(self.softmax(logits), v).transpose(1, 2).reshape(x.size(0), x.size(1), channels)
    x = _merge(self.proj(x), window, padded)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=tuple(shift), dims=dims)
    return x[(slice(None), *(slice(0, size) for size in sizes))].contiguous()


class PatchMergingBreakdown:
    """The breakdown of torchvision's Swin patch merging (``PatchMerging``, ``PatchMergingV2``), on image and video maps
    alike: the same forward with its padding to even sizes, hidden from ``torch.fx`` in ``_patch_merging_pad``, through
    a ``padding`` child. The padding rule hands the padded tokens' relevance (the norm and the reduction give them
    some) to the edge tokens, where the gradient, a crop, would drop it."""

    NOTE = None  # nothing is lost

    @staticmethod
    def matches(module: torch.nn.Module) -> bool:
        return type(module).__name__ in ("PatchMerging", "PatchMergingV2") \
            and type(module).__module__.startswith("torchvision.")

    @staticmethod
    def decompose(module: torch.nn.Module, name: str = "") -> list[str]:
        """Give ``module`` a ``padding`` child and a forward through it; return the name added."""
        module.add_module("padding", Pad())
        module.__dict__["forward"] = _merging_forward.__get__(module)
        return ["padding"]


def _merging_forward(self, x: torch.Tensor) -> torch.Tensor:
    """``PatchMerging``'s forward (V2: the norm after the reduction), ``(..., H, W, C) -> (..., H/2, W/2, 2C)``."""
    height, width = x.shape[-3:-1]
    widths = (0, 0, 0, width % 2, 0, height % 2)
    x = from_padding_layout(self.padding(*padding_layout(x, widths)), x, widths)
    x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], -1)
    if type(self).__name__ == "PatchMergingV2":
        return self.norm(self.reduction(x))
    return self.reduction(self.norm(x))


PATCH_MERGING = PatchMergingBreakdown()
