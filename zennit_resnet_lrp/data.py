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

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageError(ValueError):
    """An image that cannot be found, read or decoded."""


@dataclass
class Preprocessing:
    """Resize the shorter side, center-crop, scale to [0, 1] and normalise: the paper's test transform by default.

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
    """

    resize: int = 256
    crop: int = 224
    mean: Sequence[float] = field(default=IMAGENET_MEAN)
    std: Sequence[float] = field(default=IMAGENET_STD)
    channels: int = 3

    def image(self, image: Image.Image) -> Image.Image:
        """The resized and cropped image (what the network sees, before normalisation)."""
        image = image.convert("L" if self.channels == 1 else "RGB")
        if self.resize:
            width, height = image.size
            scale = self.resize / min(width, height)
            image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
        if self.crop:
            width, height = image.size
            left, top = (width - self.crop) // 2, (height - self.crop) // 2
            image = image.crop((left, top, left + self.crop, top + self.crop))
        return image

    def unit(self, image: Image.Image) -> torch.Tensor:
        """The cropped image as a (C, H, W) tensor in [0, 1]."""
        array = np.asarray(self.image(image), dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    def normalize(self, unit: torch.Tensor) -> torch.Tensor:
        """Normalise a [0, 1] tensor (C, H, W) or batch (N, C, H, W)."""
        shape = (-1, 1, 1)
        mean = torch.as_tensor(self.mean, dtype=unit.dtype, device=unit.device).view(shape)
        std = torch.as_tensor(self.std, dtype=unit.dtype, device=unit.device).view(shape)
        return (unit - mean) / std

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.unit(image))


def open_image(path: str | os.PathLike) -> Image.Image:
    """Read an image fully (grayscale, RGBA, palette and CMYK are all fine); raise :py:class:`ImageError`."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            image.load()
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


@dataclass(frozen=True)
class Sample:
    """One labelled image file."""

    path: Path
    label: int


class DatasetError(ValueError):
    """A dataset folder that is missing or not in the expected layout."""


def image_folder(root: str | os.PathLike) -> tuple[list[Sample], list[str]]:
    """A class-folder tree (``root/<class>/<image>``), classes in sorted order, as torchvision's ImageFolder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{root}: no class folders (expected root/<class>/<image files>)")
    samples = [
        Sample(path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).rglob("*"))
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not samples:
        raise DatasetError(f"{root}: the class folders hold no images")
    return samples, classes


def imagenet_val(root: str | os.PathLike) -> tuple[list[Sample], list[str]]:
    """ImageNet validation images: torchvision's ``ImageNet`` layout (``root/val/<wnid>/...``) or a class-folder
    val tree at ``root``; labels are the sorted wnids' indices, torchvision's class order."""
    root = Path(root)
    return image_folder(root / "val" if (root / "val").is_dir() else root)


def cub_test(root: str | os.PathLike) -> tuple[list[Sample], list[str]]:
    """CUB-200-2011's official test split from its own files: ``images.txt`` (id, path under ``images/``),
    ``image_class_labels.txt`` (id, 1-based label), ``train_test_split.txt`` (id, 1 for train)."""
    root = Path(root)

    def table(name):
        path = root / name
        if not path.is_file():
            raise DatasetError(f"{path}: missing; expected the CUB_200_2011 folder with {name}")
        rows = [line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip()]
        return {key: value.strip() for key, value in rows}

    paths, labels, split = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    names = {}
    if (root / "classes.txt").is_file():
        names = {int(k) - 1: v for k, v in table("classes.txt").items()}
    samples = [Sample(root / "images" / paths[key], int(labels[key]) - 1)
               for key in sorted(paths, key=int) if split.get(key) == "0"]
    classes = [names.get(index, str(index)) for index in range(max(s.label for s in samples) + 1)] if samples else []
    return samples, classes


def subsample(samples: list[Sample], per_class: int | None = None, limit: int | None = None,
              seed: int = 0) -> list[Sample]:
    """The paper's sampling: ``per_class`` images of every class (seeded), then at most ``limit`` in all."""
    if per_class is not None:
        generator = np.random.default_rng(seed)
        by_class: dict[int, list[Sample]] = {}
        for sample in samples:
            by_class.setdefault(sample.label, []).append(sample)
        chosen = []
        for label in sorted(by_class):
            group = by_class[label]
            picks = generator.permutation(len(group))[:per_class]
            chosen += [group[i] for i in sorted(picks)]
        samples = chosen
    return samples[:limit] if limit is not None else samples


def shipped_digits() -> tuple[list[Sample], list[str]]:
    """The demo's held-out digits shipped with the package, labels from their names (``*_label<d>.png``)."""
    from .demo import demo_images

    samples = [Sample(path, int(path.stem.rsplit("label", 1)[1])) for path in demo_images()]
    return samples, [str(d) for d in range(10)]



# dataset name -> reader of its root folder (the shipped digits need none)
DATASETS = {"imagenet": imagenet_val, "cub": cub_test, "folder": image_folder,
            "digits": lambda root=None: shipped_digits()}
