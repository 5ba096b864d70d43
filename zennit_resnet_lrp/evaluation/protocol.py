"""Two protocols for the metrics: ours (the default) and the reference implementation's conventions, under which
its published numbers were computed. ``docs/evaluation.md`` lists every difference, one line each.

A protocol decides how a method's map becomes the (H, W) map the curves rank (channels, heat quantization), how
maps are pooled to patches, and how images are sampled per class.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..application.heatmap import quantize
from .datasets import Sample, subsample, subsample_shuffled

OURS = "ours"
REFERENCE = "reference"


@dataclass(frozen=True)
class Protocol:
    """The conventions of one protocol.

    Attributes
    ----------
    name : {"ours", "reference"}
    first_channel : bool
        A map with channels (the captum baselines') is read through its first channel, quantized before (the
        reference's ``attention[0]``), instead of summed over its channels.
    heat_quantization : bool
        Quantize every map by default (the reference does, into 8 levels).
    patch_grid : {"cover", "reference"}
        How maps are pooled to patches (see :py:class:`~zennit_resnet_lrp.evaluation.metrics.CurveSpec`).
    seed : int
        The default seed of the sampling (ours: 0; the reference: 42).
    """

    name: str
    first_channel: bool
    heat_quantization: bool
    patch_grid: str
    seed: int

    def flat_maps(self, maps: torch.Tensor, levels: int | None) -> torch.Tensor:
        """(N, H, W) maps to rank from a method's (N, H, W) or (N, C, H, W) maps, quantized into ``levels``."""
        if maps.ndim == 4 and self.first_channel:
            if levels:  # the reference quantizes the whole map, then reads its first channel
                maps = quantize(maps, levels)
            return maps[:, 0]
        if maps.ndim == 4:
            maps = maps.sum(1)
        return quantize(maps, levels) if levels else maps

    def sample(self, samples: list[Sample], per_class: int | None, limit: int | None,
               seed: int | None) -> list[Sample]:
        """The images of a run: ``per_class`` of every class, then at most ``limit``."""
        seed = self.seed if seed is None else seed
        if self.name == REFERENCE:
            return subsample_shuffled(samples, per_class, limit, seed)
        return subsample(samples, per_class, limit, seed)


PROTOCOLS = {
    OURS: Protocol(OURS, first_channel=False, heat_quantization=False, patch_grid="cover", seed=0),
    REFERENCE: Protocol(REFERENCE, first_channel=True, heat_quantization=True, patch_grid="reference", seed=42),
}
