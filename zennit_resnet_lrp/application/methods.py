"""Named attribution methods: every registered composite (ours and zennit's) and the baselines (the paper's, from
captum as the paper computed them; zennit's; Grad-CAM and Score-CAM from the grad-cam package), in one registry
that ``resnet-lrp methods`` lists and ``explain --methods`` and ``evaluate --methods`` accept.

Every method maps ``(model, inputs, targets, context) -> maps``: (N, H, W), or (N, C, H, W) for the captum
baselines, whose maps the paper's metric received per channel. ``context`` holds the box bounds and a seed per
sample (every random choice of a method is drawn from its sample's seed: reproducible, and the same whatever batch
the sample is in). The model is left as it was.
"""
from __future__ import annotations

import contextlib
import io
import re
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from zennit.attribution import Gradient, IntegratedGradients
from zennit.composites import COMPOSITES, EpsilonPlusFlat, LayerMapComposite
from zennit.rules import Epsilon, Norm, Pass
from zennit.torchvision import ResNetCanonizer
from zennit.types import Activation, AvgPool, Convolution, Linear

from ..attribution import attribute
from ..canonizers import MergeBatchNorm
from ..composites import DEFAULT_METHOD, OUR_COMPOSITES, make_composite
from ..snapshot import evaluating
from ..tracing import TraceCache

# the kinds of method that are registered composites (the other kind: "baseline")
COMPOSITE_KINDS = ("default", "ours", "zennit")


class MethodError(ValueError):
    """An unknown or unavailable method."""


@dataclass(frozen=True)
class MethodContext:
    """What a method needs besides the model, inputs and targets.

    Attributes
    ----------
    bounds : (low, high), optional
        The lowest and highest normalised input values per channel (for box rules); ImageNet's by default.
    seeds : sequence of int, optional
        One seed per sample for the method's random choices; ``0, 1, 2, ...`` by default.
    cache : TraceCache, optional
        Shared by the composites a run makes (one per batch), so each module structure is traced once.
    """

    bounds: tuple | None = None
    seeds: Sequence[int] | None = None
    cache: TraceCache | None = None

    def generators(self, count: int, device: torch.device | str = "cpu") -> list[torch.Generator]:
        """One seeded generator per sample."""
        seeds = list(self.seeds) if self.seeds is not None else list(range(count))
        return [torch.Generator(device).manual_seed(int(seed)) for seed in seeds[:count]]


MethodFunction = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, MethodContext], torch.Tensor]


@dataclass(frozen=True)
class Method:
    """A named attribution method.

    Attributes
    ----------
    name : str
        What ``--method`` / ``--methods`` and :py:func:`get_method` take.
    kind : {"default", "ours", "zennit", "baseline"}
        Our default composite, another composite of ours, a composite of zennit's, or a baseline.
    source : str
        Whose implementation runs: "zennit-resnet-lrp", "zennit", "captum" or "grad-cam".
    description : str
        One line.
    run : callable
        ``(model, inputs, targets, context) -> maps`` (N, H, W) or (N, C, H, W).
    """

    name: str
    kind: str
    source: str
    description: str
    run: MethodFunction

    @property
    def is_composite(self) -> bool:
        """Whether the method is a registered composite (what ``check`` takes)."""
        return self.kind in COMPOSITE_KINDS

    def __call__(self, model, inputs, targets, context: MethodContext | None = None) -> torch.Tensor:
        return self.run(model, inputs, targets, context or MethodContext())


def _first_sentence(text: str | None) -> str:
    paragraph = " ".join((text or "").strip().split("\n\n")[0].split())
    paragraph = re.sub(r"\s*:\w+(:\w+)?:`[^`]*`", "", paragraph)  # Sphinx roles: citations, cross-references
    return paragraph.split(". ")[0].rstrip(".").replace("``", "")


def _composite(name: str) -> MethodFunction:
    def run(model, inputs, targets, context):
        composite = make_composite(name, context.bounds, context.cache)
        return attribute(model, inputs, composite, targets, tolerance=None).heatmap
    return run


def _composite_instance(make: Callable) -> MethodFunction:
    def run(model, inputs, targets, context):
        return attribute(model, inputs, make(), targets, tolerance=None).heatmap
    return run


def _plain_epsilon() -> LayerMapComposite:
    """epsilon rules everywhere, batch norms merged, the residual addition left plain (relevance copied to both
    branches)."""
    return LayerMapComposite(
        layer_map=[(Activation, Pass()), (AvgPool, Norm()), (Convolution, Epsilon(1e-6)), (Linear, Epsilon(1e-6))],
        canonizers=[MergeBatchNorm()],
    )


def _one_hot(targets: torch.Tensor):
    """The output relevance for zennit's attributors: 1 at each sample's target (a function of the output, so the
    number of classes comes from the forward pass that runs anyway)."""
    return lambda output: torch.zeros_like(output).scatter(1, targets[:, None].to(output.device), 1.0)


def _zennit_attributor(attributor_cls, times_input=False, **kwargs) -> MethodFunction:
    def run(model, inputs, targets, context):
        with evaluating(model), attributor_cls(model, None, **kwargs) as attributor:
            _, relevance = attributor(inputs.detach(), _one_hot(targets))
        return (relevance * inputs if times_input else relevance).sum(1)
    return run


def _target_gradient(model, inputs, targets) -> torch.Tensor:
    with torch.enable_grad():
        x = inputs.detach().requires_grad_()
        (gradient,) = torch.autograd.grad(model(x).gather(1, targets[:, None]).sum(), x)
    return gradient


def _saliency(model, inputs, targets, context):
    with evaluating(model):
        return _target_gradient(model, inputs, targets).abs().sum(1)


def _smoothgrad(noise_level: float = 0.1, samples: int = 16) -> MethodFunction:
    """zennit's SmoothGrad formula (noise of standard deviation ``noise_level`` times each input's range, the last of
    ``samples`` gradients taken without noise, their mean), the noise drawn from each sample's own seed."""
    def run(model, inputs, targets, context):
        generators = context.generators(inputs.shape[0], inputs.device)
        dims = tuple(range(1, inputs.ndim))
        scale = noise_level * (inputs.amax(dims, keepdim=True) - inputs.amin(dims, keepdim=True))
        total = torch.zeros_like(inputs)
        with evaluating(model):
            for step in range(samples):
                noise = torch.zeros_like(inputs) if step == samples - 1 else torch.stack([
                    torch.randn(inputs.shape[1:], generator=g, device=inputs.device, dtype=inputs.dtype)
                    for g in generators]) * scale
                total += _target_gradient(model, inputs + noise, targets) / samples
        return total.sum(1)
    return run


def _cam(kind: str) -> MethodFunction:
    def run(model, inputs, targets, context):
        try:
            import pytorch_grad_cam
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        except ImportError:
            raise MethodError(f"{kind} needs the grad-cam package: pip install 'zennit-resnet-lrp[cam]'") from None
        layer = _cam_layer(model, inputs)
        cam_cls = {"gradcam": pytorch_grad_cam.GradCAM, "scorecam": pytorch_grad_cam.ScoreCAM}[kind]
        quiet = contextlib.redirect_stderr(io.StringIO())  # Score-CAM draws progress bars of its own there
        with evaluating(model), quiet, cam_cls(model=model, target_layers=[layer]) as cam:
            cam.batch_size = 64  # Score-CAM's masked images per forward pass (Grad-CAM ignores it)
            maps = cam(input_tensor=inputs.detach(), targets=[ClassifierOutputTarget(int(t)) for t in targets])
        return torch.as_tensor(maps, device=inputs.device, dtype=inputs.dtype)
    return run


def _cam_layer(model: torch.nn.Module, inputs: torch.Tensor) -> torch.nn.Module:
    """The layer a CAM reads: ``layer4[-1]`` of a ResNet (the paper's), else the last module whose output is a
    spatial map (N, C, H, W with H, W > 1) in the order the forward pass finishes them."""
    if hasattr(model, "layer4"):
        return model.layer4[-1]
    last = []

    def record(module, args, output):
        if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[2:]) > 1:
            last[:] = [module]

    handles = [module.register_forward_hook(record) for module in model.modules()]
    try:
        with torch.no_grad():
            model(inputs[:1])
    finally:
        for handle in handles:
            handle.remove()
    if not last:
        raise MethodError(f"found no layer with a spatial output in {type(model).__name__} for a CAM")
    return last[0]


def _captum(kind: str, positive: bool = False) -> MethodFunction:
    """captum's attribution with its defaults, called as the paper's evaluation calls it: one image at a time, the
    target's logit, the map per channel (N, C, H, W); ``positive`` clips it at 0 (the reference's ``-positive``)."""
    def run(model, inputs, targets, context):
        try:
            from captum import attr
        except ImportError:
            raise MethodError(f"captum_{kind} needs captum: pip install 'zennit-resnet-lrp[captum]'") from None
        make = {"lrp": attr.LRP, "integrated_gradients": attr.IntegratedGradients,
                "guided_backprop": attr.GuidedBackprop, "gradient_x_input": attr.InputXGradient}[kind]
        with evaluating(model), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # captum's notes on hooks it sets and removes
            try:
                maps = torch.cat([make(model).attribute(inputs[index:index + 1].detach().clone().requires_grad_(),
                                                        target=int(targets[index])).detach()
                                  for index in range(inputs.shape[0])])
            except TypeError as error:  # captum's LRP has rules for a few layer types only
                raise MethodError(f"captum_{kind} does not apply to {type(model).__name__}: {error}") from None
        return maps.clamp(min=0) if positive else maps
    return run


def _attention_rollout(model, inputs, targets, context):
    """Attention rollout (Abnar & Zuidema 2020): each block's attention weights averaged over heads, the identity added
    for the residual path (``0.5 A + 0.5 I``), rows normalised, multiplied from the first block to the last; the class
    token's row (the mean row without one) over the patch tokens, upsampled to the image. Independent of the target."""
    from zennit.core import Composite

    from ..canonizers import ResidualCanonizer
    from ..layer import AttentionProduct

    weights = []
    canonizer = ResidualCanonizer(cache=context.cache)
    composite = Composite(module_map=lambda ctx, name, module: None, canonizers=[canonizer])
    with evaluating(model), composite.context(model), torch.no_grad():
        products = [module for module in model.modules() if isinstance(module, AttentionProduct)]
        if not products:
            raise MethodError(f"attention_rollout needs attention; found none in {type(model).__name__}")
        handles = [module.register_forward_pre_hook(lambda module, args: weights.append(args[0].detach()))
                   for module in products]
        try:
            model(inputs)
        finally:
            for handle in handles:
                handle.remove()
    rollout = None
    for attention in weights:
        if attention.ndim != 4 or attention.shape[0] != inputs.shape[0] or attention.shape[-1] != attention.shape[-2]:
            continue  # windowed attention (windows in the batch dimension): not a token-to-token map of the image
        averaged = attention.mean(1)
        step = 0.5 * averaged + 0.5 * torch.eye(averaged.shape[-1], dtype=averaged.dtype, device=averaged.device)
        step = step / step.sum(-1, keepdim=True)
        rollout = step if rollout is None or rollout.shape != step.shape else step @ rollout
    if rollout is None:
        raise MethodError(f"attention_rollout needs global attention over tokens; {type(model).__name__} has none")
    tokens = rollout.shape[-1]
    side = int(tokens ** 0.5)
    prefix = tokens - side * side
    row = rollout[:, 0] if prefix else rollout.mean(1)
    grid = row[:, prefix:].reshape(-1, 1, side, side)
    return torch.nn.functional.interpolate(grid, size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def _random(model, inputs, targets, context):
    generators = context.generators(inputs.shape[0])
    return torch.stack([torch.rand(inputs.shape[2:], generator=g, dtype=inputs.dtype) for g in generators]) \
        .to(inputs.device)


def _composite_methods() -> list[Method]:
    ours = [DEFAULT_METHOD, *(name for name in OUR_COMPOSITES if name != DEFAULT_METHOD)]
    theirs = sorted(set(COMPOSITES) - set(OUR_COMPOSITES))
    return [
        Method(name, "default" if name == DEFAULT_METHOD else "ours" if name in OUR_COMPOSITES else "zennit",
               "zennit-resnet-lrp" if name in OUR_COMPOSITES else "zennit", _first_sentence(COMPOSITES[name].__doc__),
               _composite(name))
        for name in [*ours, *theirs]
    ]


def _captum_methods() -> list[Method]:
    described = {"lrp": "captum's LRP (epsilon rules, the residual addition unseen), the paper's LRP row",
                 "integrated_gradients": "captum's IntegratedGradients with its defaults (50 steps, zero baseline)",
                 "guided_backprop": "captum's GuidedBackprop", "gradient_x_input": "captum's InputXGradient"}
    methods = []
    for kind, text in described.items():
        methods.append(Method(f"captum_{kind}", "baseline", "captum", f"{text}; map per channel", _captum(kind)))
        if kind != "gradient_x_input":  # the reference's -positive forms
            methods.append(Method(f"captum_{kind}_positive", "baseline", "captum", f"{text}, clipped at 0",
                                  _captum(kind, positive=True)))
    return methods


BASELINES = [
    Method("zennit_epsilon_plus_flat", "baseline", "zennit",
           "zennit's EpsilonPlusFlat with its own ResNetCanonizer (Norm at the sums)",
           _composite_instance(lambda: EpsilonPlusFlat(canonizers=[ResNetCanonizer()]))),
    Method("lrp_epsilon_plain", "baseline", "zennit",
           "epsilon rules, BN merged, the residual addition left plain (not captum's LRP: see captum_lrp)",
           _composite_instance(_plain_epsilon)),
    Method("gradient", "baseline", "zennit-resnet-lrp", "saliency: |gradient| summed over channels", _saliency),
    Method("gradient_x_input", "baseline", "zennit", "gradient x input",
           _zennit_attributor(Gradient, times_input=True)),
    Method("integrated_gradients", "baseline", "zennit", "zennit's IntegratedGradients, 32 steps",
           _zennit_attributor(IntegratedGradients, n_iter=32)),
    Method("smoothgrad", "baseline", "zennit-resnet-lrp", "SmoothGrad (zennit's formula), 16 samples, noise 0.1, "
           "seeded per image", _smoothgrad()),
    *_captum_methods(),
    Method("attention_rollout", "baseline", "zennit-resnet-lrp", "attention rollout (Abnar and Zuidema 2020), "
           "vision transformers only", _attention_rollout),
    Method("gradcam", "baseline", "grad-cam", "Grad-CAM on layer4[-1], upsampled", _cam("gradcam")),
    Method("scorecam", "baseline", "grad-cam", "Score-CAM on layer4[-1], upsampled", _cam("scorecam")),
    Method("random", "baseline", "zennit-resnet-lrp", "a uniform random map, seeded per image: the floor", _random),
]

# name -> method: every registered composite, then the baselines
METHODS: dict[str, Method] = {method.name: method for method in [*_composite_methods(), *BASELINES]}


def get_method(name: str, composites_only: bool = False) -> Method:
    """The method called ``name``; raise :py:class:`MethodError` naming the choices if there is none (or, with
    ``composites_only``, if it is not a composite)."""
    method = METHODS.get(name)
    if method is None or (composites_only and not method.is_composite):
        choices = [n for n, m in METHODS.items() if m.is_composite or not composites_only]
        what = "the composites" if composites_only else "the methods"
        raise MethodError(f"unknown method {name!r}; choose one of {what}: {', '.join(choices)} "
                          "(see `resnet-lrp methods`)")
    return method


def method_names(methods: str | Sequence[str] | None, default: Sequence[str] = ()) -> list[str]:
    """The methods a run compares: a comma-separated list or a sequence (``"all"``: every method; None:
    ``default``), each known and given once; raises :py:class:`MethodError` otherwise (an empty list too)."""
    if methods is None:
        names = list(default)
    elif isinstance(methods, str):
        names = list(METHODS) if methods.strip() == "all" else [n.strip() for n in methods.split(",")]
    else:
        names = [str(n).strip() for n in methods]
    if not names or any(not name for name in names):
        raise MethodError("give at least one method, and no empty names (a comma-separated list; "
                          "`resnet-lrp methods` lists them)")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise MethodError(f"method(s) {', '.join(twice)} given more than once")
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise MethodError(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; choose "
                          f"from {', '.join(METHODS)} (see `resnet-lrp methods`)")
    return names
