"""torchvision's shifted window attention (Swin and Swin V2) through explicit modules. Its forward calls
``shifted_window_attention``, a function torchvision hides from ``torch.fx``; here the same computation calls the
module's own ``qkv`` and ``proj`` layers and explicit attention modules, so that the rules see it: the windows'
padding (where the feature map is not a multiple of the window), partition, cyclic shift and merge move relevance as
they move values, the relative position bias and the shift mask are constants on the logits."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..modules import AttentionProduct, MatrixProduct, Pad

NOTE = None  # what the canonizer reports of a module broken down here (nothing: nothing is lost)


def decompose(module: torch.nn.Module, name: str = "") -> list[str]:
    """Give a ``ShiftedWindowAttention`` (V1 or V2) explicit attention children and a forward that uses them; return
    the names added."""
    children = {"padding": Pad(), "logits": MatrixProduct(), "softmax": torch.nn.Softmax(-1),
                "values": AttentionProduct()}
    for name, child in children.items():
        module.add_module(name, child)
    module.__dict__["forward"] = forward.__get__(module)
    return list(children)


def matches(module: torch.nn.Module) -> bool:
    return type(module).__name__ in ("ShiftedWindowAttention", "ShiftedWindowAttentionV2") \
        and type(module).__module__.startswith("torchvision.")


def _mask(shape: tuple, window: list[int], shift: list[int], device) -> torch.Tensor:
    """The shifted windows' mask: -100 between positions that came from different regions before the shift."""
    height, width = shape
    regions = torch.zeros((height, width), device=device)
    count = 0
    for rows in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for columns in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            regions[rows[0]:rows[1], columns[0]:columns[1]] = count
            count += 1
    regions = regions.view(height // window[0], window[0], width // window[1], window[1]).permute(0, 2, 1, 3)
    regions = regions.reshape(-1, window[0] * window[1])
    difference = regions.unsqueeze(1) - regions.unsqueeze(2)
    return difference.masked_fill(difference != 0, -100.0).masked_fill(difference == 0, 0.0)


def forward(self, x: torch.Tensor) -> torch.Tensor:
    """``shifted_window_attention`` of torchvision (eval mode: no dropout), through the module's children."""
    batch, height, width, channels = x.shape
    window, heads = list(self.window_size), self.num_heads
    pad_right, pad_bottom = (window[1] - width % window[1]) % window[1], (window[0] - height % window[0]) % window[0]
    # through a padding child: the padded tokens' relevance goes to the edge tokens (its rule), where the function's
    # gradient would drop it
    x = self.padding(x.unsqueeze(1), (0, 0, 0, pad_right, 0, pad_bottom)).squeeze(1)  # a channel axis for the rule
    _, padded_height, padded_width, _ = x.shape
    shift = [0 if window[0] >= padded_height else self.shift_size[0], 0 if window[1] >= padded_width
             else self.shift_size[1]]
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    windows = (padded_height // window[0]) * (padded_width // window[1])
    x = x.view(batch, padded_height // window[0], window[0], padded_width // window[1], window[1], channels)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch * windows, window[0] * window[1], channels)
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
    logits = logits + self.get_relative_position_bias()
    if sum(shift) > 0:
        mask = _mask((padded_height, padded_width), window, shift, x.device).to(logits.dtype)
        logits = logits.view(x.size(0) // windows, windows, heads, x.size(1), x.size(1)) + mask.unsqueeze(1)[None]
        logits = logits.view(-1, heads, x.size(1), x.size(1))
    x = self.values(self.softmax(logits), v).transpose(1, 2).reshape(x.size(0), x.size(1), channels)
    x = self.proj(x)
    x = x.view(batch, padded_height // window[0], padded_width // window[1], window[0], window[1], channels)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_height, padded_width, channels)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :height, :width, :].contiguous()
