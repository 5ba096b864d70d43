"""Images in: finding image files, reading them with PIL, and the network's preprocessing."""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as transforms

from ..composites import IMAGENET_MEAN, IMAGENET_STD, box_bounds

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class ImageError(ValueError):
    """An image that cannot be found, read or decoded."""


@dataclass
class Preprocessing:
    """Resize the shorter side, center-crop, scale to [0, 1] and normalise: the paper's test transform
    (``Resize(256)``, ``CenterCrop(224)``, ``ToTensor()``, ``Normalize``) by default, computed by torchvision's own
    functions, so the inputs are bit for bit torchvision's.

    Attributes
    ----------
    resize : int
        Length of the shorter side after resizing (256); 0 to skip.
    crop : int
        Side of the square center crop (224); 0 to skip.
    mean, std : sequence of float
        Per-channel normalisation (ImageNet's by default).
    channels : int
        3 for RGB, 1 for grayscale models.
    interpolation : str
        The resize's interpolation, a ``torchvision.transforms.InterpolationMode`` value ("bilinear").
    """

    resize: int = 256
    crop: int = 224
    mean: Sequence[float] = field(default=IMAGENET_MEAN)
    std: Sequence[float] = field(default=IMAGENET_STD)
    channels: int = 3
    interpolation: str = "bilinear"

    @classmethod
    def from_transforms(cls, transform) -> "Preprocessing":
        """The preprocessing of torchvision weights' ``weights.transforms()`` (resize, crop, interpolation, mean,
        std)."""
        return cls(resize=transform.resize_size[0], crop=transform.crop_size[0], mean=tuple(transform.mean),
                   std=tuple(transform.std), interpolation=transform.interpolation.value)

    def image(self, image: Image.Image) -> Image.Image:
        """The resized and cropped image (what the network sees, before normalisation)."""
        image = image.convert("L" if self.channels == 1 else "RGB")
        if self.resize:
            image = transforms.resize(image, [self.resize], InterpolationMode(self.interpolation), antialias=True)
        if self.crop:
            image = transforms.center_crop(image, [self.crop])
        return image

    def pixels(self, image: Image.Image, cropped: bool = False) -> torch.Tensor:
        """The cropped image as a (C, H, W) tensor of pixel values in [0, 1] (before normalisation); ``cropped``:
        ``image`` is :py:meth:`image`'s result already."""
        return transforms.to_tensor(image if cropped else self.image(image))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalise a [0, 1] tensor (C, H, W) or batch (N, C, H, W)."""
        return transforms.normalize(pixels, list(self.mean), list(self.std))

    def bounds(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> tuple:
        """``(low, high)``, each (1, C, 1, 1): the normalised values of pixel 0 and 1, for box rules."""
        return box_bounds(self.mean, self.std, dtype, device)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.pixels(image))


def open_image(path: str | os.PathLike) -> Image.Image:
    """Read an image fully (grayscale, RGBA, palette and CMYK are all fine); raise :py:class:`ImageError`."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "F" and not np.isfinite(np.asarray(image)).all():
                raise ImageError(f"{path}: holds NaN or infinite pixel values")
            if image.mode not in ("RGB", "L"):
                # palette with transparency and CMYK go through RGBA/RGB so colours come out right
                image = image.convert("RGBA" if "transparency" in image.info or image.mode in ("P", "LA") else "RGB")
                if image.mode == "RGBA":
                    image = image.convert("RGB")
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageError(f"{path}: not a readable image ({error.__class__.__name__}: {error})") from None


def find_images(paths: Iterable[str]) -> list[Path]:
    """Expand files, folders (recursively, image suffixes only) and glob patterns into a sorted list of files.

    Raises :py:class:`ImageError` for a path that matches nothing or a folder without images.
    """
    found: list[Path] = []
    for item in paths:
        matches = [Path(match) for match in sorted(glob.glob(item, recursive=True))] if glob.has_magic(item) else [Path(item)]
        if not matches:
            raise ImageError(f"{item}: no file matches this pattern")
        for match in matches:
            if match.is_dir():
                images = sorted(p for p in match.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                if not images:
                    raise ImageError(f"{match}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
                found += images
            elif match.exists():
                found.append(match)
            else:
                raise ImageError(f"{match}: no such file or folder")
    return list(dict.fromkeys(found))
