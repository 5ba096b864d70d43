"""Options shared by the commands (run configuration, model, weights, device, preprocessing, method), parsed once
into one :py:class:`RunOptions`."""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import click
import torch

from zennit_resnet_lrp.application.demo import DEFAULT_DEMO, DEMO_MODELS
from zennit_resnet_lrp.application.images import DEFAULT_MAX_PIXELS, DISPLAY_SIDE
from zennit_resnet_lrp.application.models import (RANDOM_WEIGHTS, SEGMENTATION_MODELS, TASKS, TIMM_PREFIX, LoadedModel,
                                                   ModelSpec, model_task)
from zennit_resnet_lrp.application.threads import choose_threads
from zennit_resnet_lrp.attribution import START_WITH
from zennit_resnet_lrp.composites import DEFAULT_METHOD, PAPER_VARIANTS

# keys a JSON run configuration may hold; "image_size" is the crop size
CONFIG_KEYS = {"model", "weights", "num_classes", "resize", "crop", "image_size", "mean", "std", "batch_size",
               "method", "methods", "dataset", "dataset_root", "per_class", "limit", "device", "seed", "output",
               "protocol", "heat_quantization", "hq_level", "patch_size", "step", "points", "baseline", "explain",
               "max_pixels", "task"}


# configuration keys whose option has another parameter name
CONFIG_PARAMETERS = {"methods": "method_list", "explain": "explain_target"}


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
    config = {CONFIG_PARAMETERS.get(k, k): v for k, v in config.items()}
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


@dataclass(frozen=True)
class RunOptions:
    """The options every command shares, as given (None: the model's own default)."""

    model: str
    weights: tuple | str | None
    num_classes: int | None
    device: str
    resize: int | None
    crop: int | None
    mean: tuple | None
    std: tuple | None
    method: str | None
    batch_size: int
    seed: int | None

    def spec(self) -> ModelSpec:
        """The model these options name (the first weights if several), on the resolved device."""
        weights = self.weights[0] if isinstance(self.weights, tuple) and self.weights else self.weights
        return ModelSpec(self.model, weights or None, self.num_classes, resolve_device(self.device), self.resize,
                         self.crop, self.mean, self.std, 0 if self.seed is None else self.seed)

    def use_threads(self) -> int:
        """Set torch's thread count for this run (:py:func:`choose_threads`: the demo models are small); return it."""
        threads = choose_threads(small=self.model in DEMO_MODELS)
        torch.set_num_threads(threads)
        return threads

    def load(self) -> LoadedModel:
        """The model, warning on stderr when its weights are random without being asked for."""
        loaded = self.spec().load()
        self.warn_if_random()
        return loaded

    def warn_if_random(self) -> None:
        if self.spec().implicitly_random:
            click.echo(f"warning: no --weights: {self.model} has random weights; give a weights name or checkpoint, "
                       f"or --weights {RANDOM_WEIGHTS} to ask for them", err=True)


# options that more than one command takes, declared once
START_WITH_OPTION = click.option(
    "--start-with", type=click.Choice(START_WITH), default="softmax", show_default=True,
    help="Relevance put in at the target: its probability (paper), its logit or 1.")
HEAT_QUANTIZATION_OPTION = click.option(
    "--heat-quantization/--no-heat-quantization", default=None,
    help="Quantize each map into --hq-level levels (paper section 4); evaluate: the protocol's default.")
HQ_LEVEL_OPTION = click.option("--hq-level", type=click.IntRange(min=2), default=8, show_default=True)
MAX_PIXELS_OPTION = click.option(
    "--max-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_PIXELS, show_default=True,
    callback=lambda ctx, param, value: value or None,
    help=f"Refuse, by name, an image that decodes to more pixels (a decompression bomb); 0: no limit. The default is "
         f"PIL's own. Photos are decoded reduced, to no less than {DISPLAY_SIDE} pixels (or twice the resize) on "
         "their shorter side, so a JPEG counts at its reduced size (a progressive one at its full size); heatmaps at "
         "the photo's size are drawn over that reduced photo.")


TASK_OPTION = click.option(
    "--task", type=click.Choice(TASKS), default=None,
    help="classification: a class per image; segmentation: why the pixels the model assigns to --label are that "
         "class (a model with output (N, K, H, W); default model: the shipped segmentation demo). Default: the "
         "model's own task.")


def segmentation_demo() -> str | None:
    """The shipped segmentation demo model's name (the default model of ``--task segmentation``), None if none."""
    return next((name for name, spec in DEMO_MODELS.items() if spec.task == "segmentation"), None)


def resolve_task(run: RunOptions, task: str | None, label: int | None,
                 label_option: str = "--label") -> tuple[RunOptions, str]:
    """The run and the task it does: ``--task`` as given, else the model's own; ``--task segmentation`` without
    ``--model`` (nor a configuration's) takes the segmentation demo. A segmentation needs ``--label``; a segmentation
    model cannot be explained as a classifier. Raises ``click.UsageError`` (one line)."""
    ctx = click.get_current_context()
    given = ctx.get_parameter_source("model") not in (None, click.core.ParameterSource.DEFAULT)
    if task == "segmentation" and not given and segmentation_demo() is not None:
        run = dataclasses.replace(run, model=segmentation_demo())
    own = model_task(run.model)
    if task == "classification" and own == "segmentation":
        raise click.UsageError(f"{run.model} is a segmentation model (a class per pixel): drop --task classification "
                               "or give --task segmentation with --label N")
    task = task or own
    if task == "segmentation" and label is None:
        raise click.UsageError(f"a segmentation is explained for one class: give {label_option} N (the pixels "
                               f"{run.model} assigns to class N are explained)")
    return run, task


# the options that become RunOptions (--skip-connection-prop-type merges into its method)
_SHARED = (*(field.name for field in dataclasses.fields(RunOptions)), "skip_connection_prop_type")


def run_options(command=None, *, several_weights: bool = False):
    """Add --config, --model, --weights, --num-classes, --device, preprocessing, --method and --batch-size to a
    command, which receives them as one ``run: RunOptions`` argument."""
    if command is None:
        return functools.partial(run_options, several_weights=several_weights)
    weights_help = (f"torchvision weights name (IMAGENET1K_V1, DEFAULT), a checkpoint file (a state_dict), or "
                    f"'{RANDOM_WEIGHTS}'. Without it: the demo models' shipped weights, random weights (with a "
                    "warning) for the others.")
    if several_weights:
        weights_help += " Repeat it to evaluate several models (e.g. the paper's five CUB checkpoints)."
    decorators = [
        click.option("-c", "--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                     callback=_load_config, help="JSON run configuration (see configs/); flags override it."),
        click.option("--model", default=DEFAULT_DEMO, show_default=True,
                     help=f"torchvision classifier (resnet50, convnext_tiny, vit_b_16, ...) or segmentation model "
                          f"({', '.join(SEGMENTATION_MODELS[:3])}, ...), {TIMM_PREFIX}NAME for any "
                          "timm model (timm/resnet50d; needs timm), hf/FOLDER for a Hugging Face image classifier "
                          "(a saved folder or cached name; needs transformers), or a shipped demo model."),
        click.option("--weights", default=None, multiple=several_weights, help=weights_help),
        click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Output classes (200 for CUB)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--resize", type=click.IntRange(min=0), default=None,
                     help="Shorter side after resizing (default: the model's; the paper's 256 for ImageNet)."),
        click.option("--crop", type=click.IntRange(min=0), default=None,
                     help="Center crop size (default: the model's; 224 for ImageNet)."),
        click.option("--mean", type=FloatList(), default=None, help="Per-channel mean, e.g. 0.485,0.456,0.406."),
        click.option("--std", type=FloatList(), default=None, help="Per-channel std, e.g. 0.229,0.224,0.225."),
        click.option("--method", default=None,
                     help=f"Any composite `resnet-lrp methods` lists; default {DEFAULT_METHOD}."),
        click.option("--skip-connection-prop-type", type=click.Choice(list(PAPER_VARIANTS)), default=None,
                     help="The paper's variant, as the reference spells it (same as --method NAME)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True),
        click.option("--seed", type=int, default=None,
                     help="Seed of every random choice: random weights, random inputs, sampling, the methods' noise "
                          "(default 0; evaluate --protocol reference: 42)."),
    ]
    decorated = functools.reduce(lambda cmd, decorate: decorate(cmd), reversed(decorators), _collect(command))
    return decorated


def _collect(command):
    @functools.wraps(command)
    def wrapper(**kwargs):
        given = {key: kwargs.pop(key) for key in _SHARED}
        method, variant = given.pop("method"), given.pop("skip_connection_prop_type")
        if method and variant and method != variant:
            raise click.UsageError(f"--method {method} and --skip-connection-prop-type {variant} disagree; give one")
        return command(run=RunOptions(method=variant or method, **given), **kwargs)
    return wrapper


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
