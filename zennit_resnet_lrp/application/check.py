"""What ``resnet-lrp check`` checks conservation on: image files, or seeded random inputs of the model's input size,
in the dtype asked for; and, for a segmentation model, the check of the pixels it assigns to a label."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..attribution import check_conservation
from ..composites import DEFAULT_METHOD
from ..conservation import DEFAULT_TOLERANCE, ConservationReport
from ..targets import Region
from .explain import label_regions
from .images import DEFAULT_MAX_PIXELS, open_image
from .models import LoadedModel


def check_inputs(loaded: LoadedModel, paths: Sequence[Path], count: int = 4, seed: int = 0,
                 dtype: torch.dtype = torch.float32, progress: Callable[[int], None] | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor, str]:
    """The inputs for a conservation check and what they are: ``paths`` preprocessed (large photos decoded reduced,
    as ``explain`` does; an image decoding to more than ``max_pixels`` refused), or (no paths) ``count`` seeded
    standard-normal inputs of the model's input size. The model is cast to ``dtype`` and the inputs put on its device
    with that dtype; raises ``ImageError``, naming the file, for an image that cannot be read."""
    prep = loaded.preprocessing
    device = next(loaded.model.parameters()).device
    loaded.model.to(dtype)
    if paths:
        inputs = []
        for path in paths:
            inputs.append(prep(open_image(path, prep.decode_side, max_pixels)))
            if progress is not None:
                progress(1)
        source = f"{len(paths)} image(s)"
        batch = torch.stack(inputs)
    else:
        generator = torch.Generator().manual_seed(seed)
        batch = torch.randn(count, prep.channels, prep.input_size, prep.input_size, generator=generator)
        source = f"{count} random input(s), seed {seed}"
    return batch.to(device=device, dtype=dtype), source


@dataclass
class RegionCheck:
    """A conservation check of a segmentation's region per input: the report on the inputs where the model assigns
    some pixel to the label (None where it assigns none anywhere) and the region's size per input (0: none, left
    out of the report)."""

    report: ConservationReport | None
    sizes: list[int]

    @property
    def checked(self) -> list[int]:
        """The inputs checked: those where the model assigns some pixel to the label."""
        return [index for index, size in enumerate(self.sizes) if size]

    @property
    def empty(self) -> list[int]:
        """The inputs where the model assigns no pixel to the label."""
        return [index for index, size in enumerate(self.sizes) if size == 0]


def check_regions(model: torch.nn.Module, inputs: torch.Tensor, label: int, method: str = DEFAULT_METHOD, *,
                  start_with: str = "softmax", tolerance: float = DEFAULT_TOLERANCE, batch_size: int | None = None,
                  progress: Callable[[int], None] | None = None) -> RegionCheck:
    """Check conservation for a segmentation model's "why are these pixels ``label``": per input, the pixels the model
    assigns to ``label`` (:py:func:`~.explain.label_regions`) are the :py:class:`~zennit_resnet_lrp.Region`
    explained. Inputs with no such pixel have nothing to explain (a start relevance of 0) and are left out.

    Parameters
    ----------
    model, inputs, method, start_with, tolerance, batch_size, progress
        As for :py:func:`zennit_resnet_lrp.check_conservation`.
    label : int
        The class.

    Returns
    -------
    RegionCheck

    Raises :py:class:`~zennit_resnet_lrp.AttributionError` where the output is not (N, K, H, W) or ``label`` not one
    of its classes.
    """
    masks = label_regions(model, inputs, label, batch_size)
    found = RegionCheck(None, [int(size) for size in masks.flatten(1).sum(1)])
    checked = found.checked
    if checked:
        found.report = check_conservation(model, inputs[checked], method, Region(label, masks[checked]), start_with,
                                          tolerance=tolerance, batch_size=batch_size, progress=progress)
    return found
