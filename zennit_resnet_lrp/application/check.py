"""What ``resnet-lrp check`` checks conservation on: image files, or seeded random inputs of the model's input size,
in the dtype asked for."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

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
