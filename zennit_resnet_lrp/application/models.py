"""Models in: torchvision's classifiers by name, timm models (``timm/<name>``, with timm installed), Hugging Face image
classifiers (``hf/<folder or name>``, with transformers installed), torchvision weights, local checkpoints, random
weights, shipped demo models."""
from __future__ import annotations

import dataclasses
import math
import os
import re
import zipfile
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


# the weights name that asks for random weights explicitly
RANDOM_WEIGHTS = "random"
# model names with this prefix are timm's (architectures; weights from a local checkpoint)
TIMM_PREFIX = "timm/"
# model names with this prefix are Hugging Face image classifiers (a saved folder, or a name in the local cache)
HF_PREFIX = "hf/"

# torchvision's image classifiers, by name (resnet50, convnext_tiny, vit_b_16, swin_t, ...)
TORCHVISION_MODELS = tuple(torchvision.models.list_models(module=torchvision.models))
# torchvision's semantic segmentation models (fcn_resnet50, deeplabv3_resnet50, lraspp_mobilenet_v3_large, ...): their
# output is a dict whose "out" holds the logits (N, K, H, W), which attribution takes by convention
SEGMENTATION_MODELS = tuple(torchvision.models.list_models(module=torchvision.models.segmentation))
# what a model is for: one class per image, or one class per pixel
TASKS = ("classification", "segmentation")


@dataclass
class LoadedModel:
    """A model ready for attribution, with what the command line needs to feed and describe it."""

    model: torch.nn.Module
    name: str
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    categories: list[str] | None = None
    weights: str | None = None
    task: str = "classification"

    def category(self, index: int) -> str:
        """The class's name where the weights carry names, else its index."""
        if self.categories and 0 <= index < len(self.categories):
            return self.categories[index]
        return str(index)


def model_names() -> list[str]:
    """The model names :py:func:`load_model` takes, besides ``timm/<any timm model>``."""
    return [*DEMO_MODELS, *TORCHVISION_MODELS, *SEGMENTATION_MODELS]


def model_task(name: str) -> str:
    """What the model ``name`` is for, before it is built: "segmentation" for a segmentation demo model and
    torchvision's segmentation models, "classification" for every other."""
    if name in DEMO_MODELS:
        return DEMO_MODELS[name].task
    return "segmentation" if name in SEGMENTATION_MODELS else "classification"


def load_model(
    name: str,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> LoadedModel:
    """Build ``name`` and load ``weights``.

    Parameters
    ----------
    name : str
        A torchvision classifier's name (``resnet50``, ``convnext_tiny``, ``vit_b_16``, ...), ``timm/<name>`` for
        any timm model (``timm/resnet50d``; needs the ``[timm]`` extra), ``hf/<folder or name>`` for a Hugging Face
        image classifier saved in a folder or the local cache (needs the ``[hf]`` extra), or a shipped demo model
        (``demo-mnist``).
    weights : str or path, optional
        A torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``; downloaded and cached by torchvision), a local
        checkpoint (a state_dict, or a dict holding one under ``state_dict`` or ``model``; read with
        ``weights_only=True``), ``"random"``, or None (a demo model's shipped weights, a Hugging Face model's own;
        random for the others).
    num_classes : int, optional
        Output classes, for a new head (200 for CUB).
    device : str or torch.device
    seed : int
        Random weights are drawn from this seed (the global random state is left as it was).

    Raises :py:class:`ModelError` with one line that names the problem and the fix.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _load(name, weights, num_classes, device)


def _load(name, weights, num_classes, device) -> LoadedModel:
    if name in DEMO_MODELS:
        loaded = _demo(name, weights, num_classes)
    elif name.startswith(TIMM_PREFIX):
        loaded = _timm(name, weights, num_classes)
    elif name.startswith(HF_PREFIX):
        loaded = _hf(name, weights, num_classes)
    elif name in TORCHVISION_MODELS:
        loaded = _torchvision(name, weights, num_classes)
    elif name in SEGMENTATION_MODELS:
        loaded = _torchvision_segmentation(name, weights, num_classes)
    else:
        raise UnknownNameError(f"unknown model {name!r}; choose a torchvision classifier (resnet50, convnext_tiny, "
                               f"vit_b_16, ...: torchvision.models.list_models()) or segmentation model "
                               f"({', '.join(SEGMENTATION_MODELS)}), a demo model "
                               f"({', '.join(DEMO_MODELS)}), {TIMM_PREFIX}<name> for a timm model, or "
                               f"{HF_PREFIX}<folder or name> for a Hugging Face one")
    loaded.model = loaded.model.eval().to(device)
    return loaded


def _random(weights) -> bool:
    return weights is None or str(weights) == RANDOM_WEIGHTS


def _demo(name, weights, num_classes) -> LoadedModel:
    spec = DEMO_MODELS[name]
    classes = num_classes or spec.num_classes
    model = spec.build(classes)
    if str(weights) == RANDOM_WEIGHTS:
        return LoadedModel(model, name, spec.preprocessing, None, None, spec.task)
    path = weights if weights is not None else spec.checkpoint
    load_checkpoint(model, path, name)
    return LoadedModel(model, name, spec.preprocessing, spec.categories if classes == spec.num_classes else None,
                       str(path), spec.task)


def _timm(name, weights, num_classes) -> LoadedModel:
    model, preprocessing = _timm_model(name, num_classes)
    if not _random(weights):
        if not _looks_like_path(weights):
            raise UnknownNameError(f"weights for {name} are a checkpoint file or {RANDOM_WEIGHTS!r}, not "
                                   f"{weights!r}: timm's pretrained weights are not downloaded here")
        load_checkpoint(model, weights, name)
    names = None if _random(weights) else _timm_class_names(model)
    return LoadedModel(model, name, preprocessing, names, None if _random(weights) else str(weights))


def _timm_class_names(model: torch.nn.Module) -> list[str] | None:
    """The names of the classes of the ImageNet label set a timm model's head is made for (the short name before the
    first comma), or None where it is made for another."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    if subset is None:
        return None
    return [description.split(",")[0] for description in ImageNetInfo(subset).label_descriptions()]


def _hf(name, weights, num_classes) -> LoadedModel:
    """A Hugging Face image classifier from a folder or the local cache (nothing is downloaded): its own weights, a
    checkpoint, or random weights from its config; preprocessed as its image processor says."""
    try:
        import transformers
    except ImportError:
        raise ModelError(f"{name} needs transformers: pip install 'zennit-resnet-lrp[hf]'") from None
    path = name[len(HF_PREFIX):]
    own = weights is None
    if not (own or _random(weights) or _looks_like_path(weights)):
        raise UnknownNameError(f"weights for {name} are its own (no --weights), a checkpoint file or "
                               f"{RANDOM_WEIGHTS!r}, not {weights!r}")
    config = _hf_call(transformers.AutoConfig.from_pretrained, path)
    if own and num_classes not in (None, config.num_labels):
        raise UnknownNameError(f"{name} has {config.num_labels} classes, not {num_classes}; drop --num-classes or "
                               f"use --weights {RANDOM_WEIGHTS} or a checkpoint file")
    if own:
        model = _hf_call(transformers.AutoModelForImageClassification.from_pretrained, path)
    else:
        config.num_labels = num_classes or config.num_labels
        model = _hf_call(transformers.AutoModelForImageClassification.from_config, path, config)
        if not _random(weights):
            load_checkpoint(model, weights, name)
    return LoadedModel(model, name, _hf_preprocessing(path, model.config), _hf_class_names(config) if own else None,
                       path if own else (None if _random(weights) else str(weights)))


def _hf_call(function, path: str, config=None):
    """``function(path)`` (or ``function(config)``) from local files only, without transformers' progress bars;
    its errors as :py:class:`ModelError`."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # "Loading weights" bars on stderr, between our own lines
    try:
        return function(config) if config is not None else function(path, local_files_only=True)
    except (OSError, ValueError) as error:
        if isinstance(error, OSError) or (Path(path).is_dir() and not (Path(path) / "config.json").is_file()):
            where = ("this folder holds no config.json and weights" if Path(path).is_dir() else
                     "no such folder, nor a name in the local Hugging Face cache")
            raise ModelError(f"{path}: {where}; save a model there with model.save_pretrained(folder), or download "
                             "it where there is internet (hf download NAME)") from None
        # a config transformers does not know, or knows but not as an image classifier
        raise ModelError(f"{path} is not a Hugging Face image classifier: {str(error).splitlines()[0]}") from None
    finally:
        if shown:
            logging.enable_progress_bar()


def _hf_class_names(config) -> list[str] | None:
    """The class names of a Hugging Face config's ``id2label``, or None where they are the generic ``LABEL_n``."""
    labels = [config.id2label.get(index, str(index)) for index in range(config.num_labels)]
    return None if all(re.fullmatch(r"LABEL_\d+", label) for label in labels) else labels


def _hf_preprocessing(path: str, config) -> Preprocessing:
    """The preprocessing of a Hugging Face model's image processor, as near as a shorter-side resize and a center
    crop come (a resize to height x width is one of a square side); without one, the config's image size and
    ImageNet's statistics."""
    from transformers import AutoImageProcessor

    channels = getattr(config, "num_channels", 3)
    try:
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError):  # no preprocessor_config.json
        side = getattr(config, "image_size", None)
        side = min(side) if isinstance(side, (tuple, list)) else side
        return Preprocessing(resize=side, crop=side, channels=channels) if side else Preprocessing(channels=channels)
    size = _sides(processor.size) if getattr(processor, "do_resize", True) else None
    crop = _sides(processor.crop_size) if getattr(processor, "do_center_crop", False) else None
    shortest = _side(processor.size, "shortest_edge") if size else None
    crop_pct = getattr(processor, "crop_pct", None)
    if shortest and crop_pct and shortest < 384 and not crop:  # ConvNeXt's: resize to side / crop_pct, crop the side
        size, crop = int(shortest / crop_pct), shortest
    normalise = getattr(processor, "do_normalize", True)
    mean = tuple(processor.image_mean) if normalise else (0.0,) * channels
    std = tuple(processor.image_std) if normalise else (1.0,) * channels
    resample = getattr(processor, "resample", None)
    if isinstance(resample, int):  # a PIL constant, as older saved processors hold it
        from PIL import Image

        resample = Image.Resampling(resample)
    interpolation = getattr(resample, "name", "bilinear").lower()
    return Preprocessing(resize=size or 0, crop=crop or size or 0, mean=mean, std=std, channels=channels,
                         interpolation=interpolation)


def _side(size, key: str) -> int | None:
    """One entry of an image processor's size (a dict or a ``SizeDict``)."""
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _sides(size) -> int | None:
    """The square side an image processor's size stands for: its shortest edge, or the smaller of height and width."""
    if isinstance(size, int):
        return size
    if size is None:
        return None
    shortest = _side(size, "shortest_edge")
    sides = [side for side in (_side(size, "height"), _side(size, "width")) if side]
    return shortest or (min(sides) if sides else None)


def _torchvision(name, weights, num_classes) -> LoadedModel:
    """A torchvision classifier: random, from a checkpoint (both preprocessed as its published weights are, or as the
    paper's ImageNet models where it has none), or with torchvision weights by name."""
    enum = torchvision.models.get_model_weights(name)
    if _random(weights) or _looks_like_path(weights):
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes or 1000)
        names = None
        if not _random(weights):
            load_checkpoint(model, weights, name)
            # a checkpoint with as many classes as the published weights: their label set, with its names
            published = list(enum.DEFAULT.meta["categories"]) if len(enum) else []
            names = published if len(published) == (num_classes or 1000) else None
        preprocessing = Preprocessing.from_transforms(enum.DEFAULT.transforms()) if len(enum) else Preprocessing()
        return LoadedModel(model, name, preprocessing, names, None if _random(weights) else str(weights))
    model, entry = _published(name, enum, weights, num_classes)
    return LoadedModel(model, name, Preprocessing.from_transforms(entry.transforms()),
                       list(entry.meta["categories"]), str(entry))


def _published(name: str, enum, weights, num_classes: int | None) -> tuple[torch.nn.Module, object]:
    """The torchvision model ``name`` with its published weights named ``weights`` (a member of ``enum``, or
    DEFAULT), and their entry; one-line errors for an unknown name, a class count they do not have, a failed
    download."""
    choices = [member.name for member in enum] + ["DEFAULT"]
    key = str(weights).split(".")[-1]
    if key not in choices:
        raise UnknownNameError(f"unknown weights {weights!r} for {name}; choose one of {', '.join(choices)}, "
                               f"{RANDOM_WEIGHTS!r} or a checkpoint file")
    entry = enum[key] if key != "DEFAULT" else enum.DEFAULT
    classes = len(entry.meta["categories"])
    if num_classes not in (None, classes):
        raise UnknownNameError(f"{entry} has {classes} classes, not {num_classes}; drop --num-classes or use a "
                               "checkpoint file")
    try:
        return torchvision.models.get_model(name, weights=entry), entry
    except Exception as error:  # network failures come in many types
        raise ModelError(f"could not download {entry} ({error.__class__.__name__}); without internet, download the "
                         "file elsewhere and pass its path as the weights") from None


def _torchvision_segmentation(name, weights, num_classes) -> LoadedModel:
    """A torchvision segmentation model: random or from a checkpoint (with no backbone weights downloaded), or with
    torchvision weights by name (VOC's 21 classes); preprocessed as its published weights are, the resize also a
    square center crop, so images of any shape make one batch."""
    enum = torchvision.models.get_model_weights(name)
    preprocessing = _segmentation_preprocessing(enum.DEFAULT.transforms())
    if _random(weights) or _looks_like_path(weights):
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                             num_classes=num_classes or 21)
        if not _random(weights):
            load_checkpoint(model, weights, name)
        return LoadedModel(model, name, preprocessing, None, None if _random(weights) else str(weights),
                           "segmentation")
    model, entry = _published(name, enum, weights, num_classes)
    return LoadedModel(model, name, _segmentation_preprocessing(entry.transforms()),
                       list(entry.meta["categories"]), str(entry), "segmentation")


def _segmentation_preprocessing(transform) -> Preprocessing:
    """torchvision's ``SemanticSegmentation`` transform (a resize, no crop) as a resize and a square crop of the
    same side."""
    side = transform.resize_size[0] if transform.resize_size else 0
    return Preprocessing(resize=side, crop=side, mean=tuple(transform.mean), std=tuple(transform.std),
                         interpolation=transform.interpolation.value)


def _timm_model(name: str, num_classes: int | None) -> tuple[torch.nn.Module, Preprocessing]:
    """A timm architecture with random weights, and the preprocessing its pretrained configuration names."""
    try:
        import timm
        from timm.data import resolve_data_config
    except ImportError:
        raise ModelError(f"{name} needs timm: pip install 'zennit-resnet-lrp[timm]'") from None
    architecture = name[len(TIMM_PREFIX):]
    if not timm.is_model(architecture):
        raise UnknownNameError(f"unknown timm model {architecture!r}; timm.list_models() lists them")
    model = timm.create_model(architecture, pretrained=False, **({"num_classes": num_classes} if num_classes else {}))
    config = resolve_data_config({}, model=model)
    crop = config["input_size"][-1]
    resize = int(math.floor(crop / config.get("crop_pct", 0.875)))
    return model, Preprocessing(resize=resize, crop=crop, mean=tuple(config["mean"]), std=tuple(config["std"]))


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
        if zipfile.is_zipfile(path):
            raise ModelError(f"{path}: not a readable weights-only checkpoint ({error.__class__.__name__}): it holds "
                             "objects other than tensors (a whole model?); save model.state_dict() instead") from None
        raise ModelError(f"{path}: not a readable weights-only checkpoint ({error.__class__.__name__}): not a "
                         "complete torch.save file (cut short?); save model.state_dict() again") from None
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
        heads = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
        head = heads[-1] if heads else None
        if head is not None and not missing and not unexpected and all(
                key.rsplit(".", 1)[0] == head for key in shapes):  # only the classifier's size differs
            hint = f" (use --num-classes {state[f'{head}.weight'].shape[0]})"
        raise ModelError(f"{path} does not fit {name}: {'; '.join(problems)}{hint}")
    model.load_state_dict(state)


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


@dataclass(frozen=True)
class ModelSpec:
    """A model as the command line names it: name, weights, head size, device, preprocessing overrides and the
    seed of random weights. :py:meth:`load` builds it."""

    name: str
    weights: str | None = None
    num_classes: int | None = None
    device: str | torch.device = "cpu"
    resize: int | None = None
    crop: int | None = None
    mean: tuple | None = None
    std: tuple | None = None
    seed: int = 0

    @property
    def implicitly_random(self) -> bool:
        """No weights were given for a model that has no shipped ones: its weights are random without being asked
        for."""
        return not self.weights and self.name not in DEMO_MODELS and not self.name.startswith(HF_PREFIX)

    def load(self, weights: str | None = None) -> LoadedModel:
        """The model with ``weights`` (this spec's when not given), the preprocessing overrides applied; raises
        :py:class:`ModelError` (``--mean``/``--std`` of the wrong length included)."""
        loaded = load_model(self.name, weights or self.weights or None, self.num_classes, self.device, self.seed)
        base = loaded.preprocessing
        overrides = {key: value for key, value in (("resize", self.resize), ("crop", self.crop),
                                                   ("mean", self.mean), ("std", self.std)) if value is not None}
        loaded.preprocessing = dataclasses.replace(base, **overrides)
        for option, values in (("--mean", loaded.preprocessing.mean), ("--std", loaded.preprocessing.std)):
            if len(values) != base.channels:
                raise PreprocessingError(f"{option}: {self.name} takes {base.channels} channel(s), got {len(values)} "
                                         "values")
        return loaded


class PreprocessingError(UnknownNameError):
    """Preprocessing options that do not fit the model (a usage error)."""
