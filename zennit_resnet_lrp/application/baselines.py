"""The baseline attribution methods other than composites: gradients (saliency, gradient x input, Integrated
Gradients, SmoothGrad), captum's attributions as the paper's evaluation called them, Grad-CAM and Score-CAM from the
grad-cam package, attention rollout and a random map; and what every method receives besides the model, inputs and
targets (:py:class:`MethodContext`). Each maps ``(model, inputs, targets, context) -> maps``, leaving the model as it
was; :py:mod:`.methods` names and registers them."""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..rewriting import TraceCache
from ..snapshot import evaluating


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


def _one_hot(targets: torch.Tensor):
    """The output relevance for zennit's attributors: 1 at each sample's target (a function of the output, so the
    number of classes comes from the forward pass that runs anyway)."""
    return lambda output: torch.zeros_like(output).scatter(1, targets[:, None].to(output.device), 1.0)


def zennit_attributor(attributor_cls, times_input=False, **kwargs) -> MethodFunction:
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


def saliency(model, inputs, targets, context):
    with evaluating(model):
        return _target_gradient(model, inputs, targets).abs().sum(1)


def smoothgrad(noise_level: float = 0.1, samples: int = 16) -> MethodFunction:
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


def cam(kind: str) -> MethodFunction:
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


def captum(kind: str, positive: bool = False) -> MethodFunction:
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


def attention_rollout(model, inputs, targets, context):
    """Attention rollout (Abnar & Zuidema 2020): each block's attention weights averaged over heads, the identity added
    for the residual path (``0.5 A + 0.5 I``), rows normalised, multiplied from the first block to the last; the class
    token's row (the mean row without one) over the patch tokens, upsampled to the image. Independent of the target."""
    from zennit.core import Composite

    from ..rewriting import AttentionProduct, ResidualCanonizer

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


def random_map(model, inputs, targets, context):
    generators = context.generators(inputs.shape[0])
    return torch.stack([torch.rand(inputs.shape[2:], generator=g, dtype=inputs.dtype) for g in generators]) \
        .to(inputs.device)
