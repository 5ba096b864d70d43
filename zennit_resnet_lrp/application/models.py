"""Models in: torchvision ResNet-family names, torchvision weights, local checkpoints, shipped demo models."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision

from .demo import DEMO_MODELS
from .images import Preprocessing


class ModelError(ValueError):
    """A model, weights name or checkpoint that cannot be used."""


class UnknownNameError(ModelError):
    """A model or weights name that does not exist."""


RESNET_FAMILY = tuple(
    name for name in torchvision.models.list_models(module=torchvision.models)
    if name.startswith(("resnet", "resnext", "wide_resnet"))
)


@dataclass
class LoadedModel:
    """A model ready for attribution, with what the command line needs to feed and describe it."""

    model: torch.nn.Module
    name: str
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    categories: list[str] | None = None
    weights: str | None = None

    def category(self, index: int) -> str:
        if self.categories and 0 <= index < len(self.categories):
            return self.categories[index]
        return str(index)


def model_names() -> list[str]:
    return [*DEMO_MODELS, *RESNET_FAMILY]


def load_model(
    name: str,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Build ``name`` and load ``weights``: a torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``; downloaded
    and cached by torchvision), a local checkpoint (a state_dict, or a dict holding one under ``state_dict`` or
    ``model``; read with ``weights_only=True``), or None (a demo model's shipped weights; random for torchvision).

    Raises :py:class:`ModelError` with one line that names the problem and the fix.
    """
    if name in DEMO_MODELS:
        spec = DEMO_MODELS[name]
        classes = num_classes or spec.num_classes
        model = spec.build(classes)
        path = weights if weights is not None else spec.checkpoint
        load_checkpoint(model, path, name)
        categories = spec.categories if classes == spec.num_classes else None
        return LoadedModel(model.eval().to(device), name, spec.preprocessing, categories, str(path))
    if name not in RESNET_FAMILY:
        raise UnknownNameError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    preprocessing = Preprocessing()
    if weights is None:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes or 1000)
        return LoadedModel(model.eval().to(device), name, preprocessing, None, None)
    if _looks_like_path(weights):
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes or 1000)
        load_checkpoint(model, weights, name)
        return LoadedModel(model.eval().to(device), name, preprocessing, None, str(weights))
    enum = torchvision.models.get_model_weights(name)
    choices = [member.name for member in enum] + ["DEFAULT"]
    key = str(weights).split(".")[-1]
    if key not in choices:
        raise UnknownNameError(f"unknown weights {weights!r} for {name}; choose one of {', '.join(choices)} or a checkpoint file")
    entry = enum[key] if key != "DEFAULT" else enum.DEFAULT
    classes = len(entry.meta["categories"])
    if num_classes not in (None, classes):
        raise UnknownNameError(
            f"{entry} has {classes} classes, not {num_classes}; drop --num-classes or use a checkpoint file"
        )
    try:
        model = torchvision.models.get_model(name, weights=entry)
    except Exception as error:  # network failures come in many types
        raise ModelError(
            f"could not download {entry} ({error.__class__.__name__}); without internet, download the file "
            "elsewhere and pass its path as the weights"
        ) from None
    transform = entry.transforms()
    preprocessing = Preprocessing(resize=256, crop=224, mean=tuple(transform.mean), std=tuple(transform.std))
    return LoadedModel(model.eval().to(device), name, preprocessing, list(entry.meta["categories"]), str(entry))


def _looks_like_path(weights) -> bool:
    text = str(weights)
    return isinstance(weights, os.PathLike) or os.sep in text or text.endswith((".pt", ".pth", ".ckpt", ".bin")) \
        or Path(text).exists()


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, name: str = "the model") -> None:
    """Load a checkpoint into ``model`` strictly, saying exactly which keys or shapes do not fit."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise ModelError(f"{path}: not a readable weights-only checkpoint ({error.__class__.__name__})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: holds no state_dict (a dict of tensors, or one under 'state_dict' or 'model')")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}  # saved from DataParallel
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    shapes = [key for key in own if key in state and own[key].shape != state[key].shape]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    for key in shapes[:3]:
        problems.append(f"{key} is {tuple(state[key].shape)} in the checkpoint but {tuple(own[key].shape)} in {name}")
    if problems:
        hint = ""
        fc = [key for key in shapes if key.endswith("fc.weight")]
        if fc:
            hint = f" (use --num-classes {state[fc[0]].shape[0]})"
        raise ModelError(f"{path} does not fit {name}: {'; '.join(problems)}{hint}")
    model.load_state_dict(state)


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
