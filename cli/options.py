"""Options shared by the commands: run configurations, models, devices, preprocessing."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import click
import torch

from zennit_resnet_lrp.composites import DEFAULT_METHOD, PAPER_VARIANTS
from zennit_resnet_lrp.data import Preprocessing
from zennit_resnet_lrp.demo import DEFAULT_DEMO
from zennit_resnet_lrp.models import LoadedModel, load_model

# keys a JSON run configuration may hold; "image_size" is the crop size
CONFIG_KEYS = {"model", "weights", "num_classes", "resize", "crop", "image_size", "mean", "std", "batch_size",
               "method", "dataset", "dataset_root", "per_class", "limit", "device", "seed", "output"}


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None):
    """Eager callback of ``-c/--config``: the file's values become defaults, so flags still override them."""
    if value is None:
        return None
    path = Path(value)
    try:
        config = json.loads(path.read_text())
    except OSError as error:
        raise click.BadParameter(f"cannot read {path}: {error.strerror}", ctx, param) from None
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"{path} is not valid JSON ({error.msg}, line {error.lineno})", ctx, param) from None
    if not isinstance(config, dict):
        raise click.BadParameter(f"{path} must hold a JSON object", ctx, param)
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise click.BadParameter(
            f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(CONFIG_KEYS))}", ctx, param
        )
    if "image_size" in config:
        config.setdefault("crop", config.pop("image_size"))
    for key in ("mean", "std"):
        if isinstance(config.get(key), list):
            config[key] = ",".join(str(value) for value in config[key])
    params = {p.name: p for p in ctx.command.params}
    config = {k: v for k, v in config.items() if k in params}
    for key, value in config.items():
        if getattr(params[key], "multiple", False) and not isinstance(value, list):
            config[key] = [value]  # e.g. one checkpoint where several may be given
    ctx.default_map = {**(ctx.default_map or {}), **config}
    return value


class FloatList(click.ParamType):
    name = "FLOATS"

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return tuple(float(v) for v in value)
        try:
            return tuple(float(part) for part in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)


def model_options(command=None, *, several_weights: bool = False):
    """--config, --model, --weights, --num-classes, --device, preprocessing and --method options."""
    if command is None:
        return functools.partial(model_options, several_weights=several_weights)
    weights_help = "torchvision weights name (IMAGENET1K_V1, DEFAULT) or a checkpoint file (a state_dict)."
    if several_weights:
        weights_help += " Repeat it to evaluate several models (e.g. the paper's five CUB checkpoints)."
    decorators = [
        click.option("-c", "--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                     callback=_load_config, help="JSON run configuration (see configs/); flags override it."),
        click.option("--model", default=DEFAULT_DEMO, show_default=True,
                     help="torchvision ResNet-family name (resnet50, resnext50_32x4d, ...) or a shipped demo model."),
        click.option("--weights", default=None, multiple=several_weights, help=weights_help),
        click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Output classes (200 for CUB)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--resize", type=click.IntRange(min=0), default=None,
                     help="Shorter side after resizing (default: the model's, 256 for ImageNet)."),
        click.option("--crop", type=click.IntRange(min=0), default=None, help="Center crop size (224 for ImageNet)."),
        click.option("--mean", type=FloatList(), default=None, help="Per-channel mean, e.g. 0.485,0.456,0.406."),
        click.option("--std", type=FloatList(), default=None, help="Per-channel std, e.g. 0.229,0.224,0.225."),
        click.option("--method", default=None,
                     help=f"Any registered composite (see `resnet-lrp methods`); default {DEFAULT_METHOD}."),
        click.option("--skip-connection-prop-type", type=click.Choice(list(PAPER_VARIANTS)), default=None,
                     help="The paper's variant, as the reference spells it (same as --method NAME)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True),
    ]
    return functools.reduce(lambda cmd, decorate: decorate(cmd), reversed(decorators), command)


def resolve_device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise click.BadParameter(f"{text!r} is not a device; use auto, cpu, cuda or cuda:N",
                                 param_hint="--device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise click.BadParameter(f"{text}: no CUDA GPU is available here; use --device cpu (or auto)",
                                     param_hint="--device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise click.BadParameter(f"{text}: only {torch.cuda.device_count()} GPU(s) here", param_hint="--device")
    elif device.type != "cpu":
        raise click.BadParameter(f"{text}: use auto, cpu, cuda or cuda:N", param_hint="--device")
    return device


def resolve_method(method: str | None, variant: str | None) -> str:
    """The composite named by --method or --skip-connection-prop-type (default: ours), checked to exist."""
    from zennit.composites import COMPOSITES

    if method and variant and method != variant:
        raise click.UsageError(f"--method {method} and --skip-connection-prop-type {variant} disagree; give one")
    name = variant or method or DEFAULT_METHOD
    if name not in COMPOSITES:
        raise click.BadParameter(f"unknown method {name!r}; see `resnet-lrp methods`", param_hint="--method")
    return name


def build_model(model: str, weights, num_classes, device, resize, crop, mean, std) -> LoadedModel:
    """Load the model and apply the preprocessing overrides."""
    loaded = load_model(model, weights, num_classes, resolve_device(device))
    base = loaded.preprocessing
    loaded.preprocessing = Preprocessing(
        resize=base.resize if resize is None else resize,
        crop=base.crop if crop is None else crop,
        mean=base.mean if mean is None else mean,
        std=base.std if std is None else std,
        channels=base.channels,
    )
    for name, values in (("--mean", loaded.preprocessing.mean), ("--std", loaded.preprocessing.std)):
        if len(values) != base.channels:
            raise click.BadParameter(f"{model} takes {base.channels} channel(s), got {len(values)} values",
                                     param_hint=name)
    return loaded
