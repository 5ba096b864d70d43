"""Datasets: ImageNet's validation images, CUB-200-2011's test split, any image-folder tree and the demo's shipped
digits, as lists of labelled image files; and the paper's per-class sampling."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..application.demo import demo_images
from ..application.images import IMAGE_SUFFIXES


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
    """Our sampling: ``per_class`` images of every class, drawn per class with ``seed`` and kept in dataset order,
    then at most ``limit`` in all."""
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


def subsample_shuffled(samples: list[Sample], per_class: int | None = None, limit: int | None = None,
                       seed: int = 42) -> list[Sample]:
    """The reference implementation's sampling: the dataset in the order of a torch ``DataLoader`` shuffled by a
    generator seeded with ``seed`` (its base-seed draw, then ``randperm``), the first ``per_class`` images of each
    label in that order, then at most ``limit``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=generator)  # the DataLoader's base seed, drawn first
    order = torch.randperm(len(samples), generator=generator).tolist()
    counts: dict[int, int] = {}
    chosen = []
    for index in order:
        label = samples[index].label
        counts[label] = counts.get(label, 0) + 1
        if per_class is None or counts[label] <= per_class:
            chosen.append(samples[index])
    return chosen[:limit] if limit is not None else chosen


def shipped_digits() -> tuple[list[Sample], list[str]]:
    """The demo's held-out digits shipped with the package, labels from their names (``*_label<d>.png``)."""
    samples = [Sample(path, int(path.stem.rsplit("label", 1)[1])) for path in demo_images()]
    return samples, [str(d) for d in range(10)]


# dataset name -> reader of its root folder (the shipped digits need none)
DATASETS = {"imagenet": imagenet_val, "cub": cub_test, "folder": image_folder,
            "digits": lambda root=None: shipped_digits()}
