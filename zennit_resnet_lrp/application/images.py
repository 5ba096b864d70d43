"""Images in: finding image files, reading them with PIL, and the network's preprocessing."""
from __future__ import annotations

import glob
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as transforms
from torchvision.transforms.functional import _compute_resized_output_size

from ..composites import IMAGENET_MEAN, IMAGENET_STD, box_bounds

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

# the most pixels read_image decodes: PIL's own refusal threshold (twice its MAX_IMAGE_PIXELS default), so what PIL
# reads by default is read (RGB: up to 540 MB), and a decompression bomb is refused from its header
DEFAULT_MAX_PIXELS = 178_956_970

# the shorter side a photo keeps at the least when decoded reduced: heatmaps drawn over it stay legible
DISPLAY_SIDE = 1024


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

    @property
    def decode_side(self) -> int:
        """The shorter side a photo is decoded down to at the least (:py:func:`read_image`'s ``min_side``): twice the
        resize, so resizing the reduced photo gives nearly the full-size input, and no less than 1024 pixels for the
        heatmaps drawn over it; 0 (full size) without a resize, where the crop takes the photo's own pixels."""
        return max(DISPLAY_SIDE, 2 * self.resize) if self.resize else 0

    @property
    def input_size(self) -> int:
        """The side of the model's input: the crop, else the resize, else ImageNet's 224."""
        return self.crop or self.resize or 224

    def image(self, image: Image.Image) -> Image.Image:
        """The resized and cropped image (what the network sees, before normalisation); single-channel float images
        ("F", from 16-bit files) stay floats."""
        if image.mode != "F":
            image = image.convert("L" if self.channels == 1 else "RGB")
        if self.resize:
            image = transforms.resize(image, [self.resize], InterpolationMode(self.interpolation), antialias=True)
        if self.crop:
            image = transforms.center_crop(image, [self.crop])
        return image

    def input_region(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """Where the model's input lies in a photo of ``size`` (width, height): ``(left, top, right, bottom)`` in
        photo pixels, through the resize and the crop (beyond the photo where the crop pads it)."""
        width, height = size
        new_height, new_width = (_compute_resized_output_size((height, width), [self.resize]) if self.resize
                                 else (height, width))
        left, top, crop_width, crop_height = 0, 0, new_width, new_height
        if self.crop:
            crop_width = crop_height = self.crop
            left = int(round((new_width - self.crop) / 2.0)) if self.crop <= new_width \
                else -((self.crop - new_width) // 2)
            top = int(round((new_height - self.crop) / 2.0)) if self.crop <= new_height \
                else -((self.crop - new_height) // 2)
        scale_x, scale_y = width / new_width, height / new_height
        return left * scale_x, top * scale_y, (left + crop_width) * scale_x, (top + crop_height) * scale_y

    def pixels(self, image: Image.Image, cropped: bool = False) -> torch.Tensor:
        """The cropped image as a (C, H, W) tensor of pixel values in [0, 1] (before normalisation); ``cropped``:
        ``image`` is :py:meth:`image`'s result already."""
        tensor = transforms.to_tensor(image if cropped else self.image(image))
        return tensor.expand(self.channels, -1, -1).clone() if tensor.shape[0] != self.channels else tensor

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalise a [0, 1] tensor (C, H, W) or batch (N, C, H, W)."""
        return transforms.normalize(pixels, list(self.mean), list(self.std))

    def bounds(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> tuple:
        """``(low, high)``, each (1, C, 1, 1): the normalised values of pixel 0 and 1, for box rules."""
        return box_bounds(self.mean, self.std, dtype, device)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.pixels(image))


def open_image(path: str | os.PathLike, min_side: int = 0,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """:py:func:`read_image` without its notes."""
    return read_image(path, min_side, max_pixels)[0]


HIGH_BIT_DEPTH = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}


def read_image(path: str | os.PathLike, min_side: int = 0,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, list[str]]:
    """Read an image, as "RGB", "L" or "F" (one channel of floats), with a note for each change to its content;
    raise :py:class:`ImageError`, naming the file, whatever went wrong.

    Grayscale images of 16 bits (and 32-bit integer ones holding 16-bit values) become "F" scaled to [0, 1] as
    8-bit ones are (``value / 65535``); palettes become RGB; CMYK is converted to RGB, the alpha channel dropped and
    only the first frame of an animation read, each with a note.

    Parameters
    ----------
    path : str or os.PathLike
        The image file.
    min_side : int
        Reduce the image by a whole factor while its shorter side stays at least this long (0: full size;
        :py:attr:`Preprocessing.decode_side` for a model's input): a JPEG is decoded reduced (by 2, 4 or 8), so
        memory follows ``min_side``, not the photo; other formats are reduced (box average) right after decoding.
        Aspect ratio is kept to within a pixel.
    max_pixels : int or None
        Refuse an image that would decode to more pixels (a JPEG decoded reduced counts at its reduced size, a
        progressive one at its full size, as its decoder holds all of it); None: no limit. It replaces PIL's
        decompression-bomb check (``Image.MAX_IMAGE_PIXELS``), off while the image is read, with its warning.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    notes: list[str] = []
    try:
        with _pixel_limit_off(), Image.open(path) as image:
            (width, height), factor = image.size, _reduction(image.size, min_side)
            if factor > 1:  # JPEG only (a no-op elsewhere): decoded scaled by 1/2, 1/4 or 1/8, not above 1/factor
                image.draft(image.mode, (-(-width // factor), -(-height // factor)))
            _check_pixels(path, image, (width, height), max_pixels)
            frames = getattr(image, "n_frames", 1)
            image.load()
            if frames > 1:
                notes.append(f"the first of its {frames} frames")
            if image.mode == "F" and not np.isfinite(np.asarray(image)).all():
                raise ImageError(f"{path}: holds NaN or infinite pixel values")
            plain = _plain_mode(image, notes)
            factor = _reduction(plain.size, min_side)
            return (plain.reduce(factor) if factor > 1 else plain.copy()), notes
    except ImageError:
        raise
    except Exception as error:  # DecompressionBombError, MemoryError, ...: this file's failure, not the caller's
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise ImageError(f"{path}: not a readable image ({reason})") from None


@contextmanager
def _pixel_limit_off() -> Iterator[None]:
    """PIL's decompression-bomb check off (its error and its warning) and restored after: :py:func:`read_image`
    applies its own limit, to the pixels it decodes, which PIL cannot know before ``draft``. PIL's limit is a module
    global: images another thread opens meanwhile go unchecked."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _reduction(size: tuple[int, int], min_side: int) -> int:
    """The whole factor that keeps the shorter side of ``size`` at least ``min_side`` (1: none)."""
    return max(1, min(size) // min_side) if min_side > 0 else 1


def _check_pixels(path: Path, image: Image.Image, full_size: tuple[int, int], max_pixels: int | None) -> None:
    """Refuse, from the header, an image that decodes to more than ``max_pixels``: ``image`` after ``draft``, of
    ``full_size`` before."""
    progressive = "progressive" in image.info or "progression" in image.info
    # libjpeg holds a progressive JPEG's coefficients at full size, however reduced its output
    width, height = full_size if progressive else image.size
    if max_pixels is not None and width * height > max_pixels:
        kind = ", a progressive JPEG decoded at full size" if progressive else ""
        raise ImageError(f"{path}: {width}x{height} pixels ({width * height / 1e6:.3g} megapixels{kind}) is more "
                         f"than the limit of {max_pixels} pixels (--max-pixels); raise it to read this image")


def _plain_mode(image: Image.Image, notes: list[str]) -> Image.Image:
    """``image`` as "RGB", "L" or "F"; ``notes`` gets what changed."""
    if image.mode in ("RGB", "L", "F"):
        return image
    if image.mode in HIGH_BIT_DEPTH:
        values = np.asarray(image, dtype=np.float64)
        scale = HIGH_BIT_DEPTH[image.mode] if values.max(initial=0) <= 65535 else 2.0 ** 32 - 1
        return Image.fromarray((values / scale).astype(np.float32), mode="F")
    if image.mode == "CMYK":
        notes.append("converted from CMYK to RGB")
        return image.convert("RGB")
    transparent = "A" in image.mode or "transparency" in image.info
    if transparent:
        notes.append("its alpha channel dropped")
    if image.mode in ("LA", "La"):
        return image.convert("L")
    # palette (with transparency through RGBA, so colours come out right), YCbCr, LAB, HSV, 1-bit, ...
    return (image.convert("RGBA") if image.mode == "P" and transparent else image).convert("RGB")


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
