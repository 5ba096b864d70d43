"""Named attribution methods for the evaluation: our composites, zennit's, and the paper's baselines.

Every method maps ``(model, inputs, targets, bounds) -> maps (N, H, W)``, where ``bounds`` are the lowest and highest
normalised pixel values per channel (for box rules); the model is left as it was.
"""
from __future__ import annotations

from typing import Callable
from unittest import mock

import torch
from zennit.attribution import Gradient, IntegratedGradients, SmoothGrad
from zennit.composites import COMPOSITES, EpsilonGammaBox, EpsilonPlusFlat, LayerMapComposite
from zennit.rules import Epsilon, Norm, Pass
from zennit.torchvision import ResNetCanonizer
from zennit.types import Activation, AvgPool, Convolution, Linear

from .attribution import attribute
from .canonizers import MergeBatchNorm
from .composites import OUR_COMPOSITES
from .snapshot import evaluating

Method = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, tuple], torch.Tensor]


class MethodError(ValueError):
    """An unknown or unavailable method."""


def _composite_method(make) -> Method:
    def run(model, inputs, targets, bounds=None):
        return attribute(model, inputs, make(), targets, tolerance=None).heatmap
    return run


def _box_method(cls) -> Method:
    """A composite with a box rule (EpsilonGammaBox) bounded by the model's own pixel range."""
    def run(model, inputs, targets, bounds=None):
        kwargs = {}
        if bounds is not None:
            kwargs["low"], kwargs["high"] = (
                torch.as_tensor(edge, dtype=inputs.dtype, device=inputs.device).view(1, -1, 1, 1) for edge in bounds
            )
        return attribute(model, inputs, cls(**kwargs), targets, tolerance=None).heatmap
    return run


def _plain_epsilon() -> LayerMapComposite:
    """The paper's LRP baseline: epsilon rules everywhere, batch norms merged, the residual add left plain (so
    relevance is handed to both branches in full)."""
    return LayerMapComposite(
        layer_map=[(Activation, Pass()), (AvgPool, Norm()), (Convolution, Epsilon(1e-6)), (Linear, Epsilon(1e-6))],
        canonizers=[MergeBatchNorm()],
    )


def _one_hot(targets: torch.Tensor):
    """The output relevance for zennit's attributors: 1 at each sample's target (a function of the output, so the
    number of classes comes from the forward pass that runs anyway)."""
    return lambda output: torch.zeros_like(output).scatter(1, targets[:, None].to(output.device), 1.0)


def _zennit_attributor(attributor_cls, composite=None, times_input=False, **kwargs) -> Method:
    def run(model, inputs, targets, bounds=None):
        with evaluating(model):
            made = composite() if composite is not None else None
            with attributor_cls(model, made, **kwargs) as attributor:
                _, relevance = attributor(inputs.detach(), _one_hot(targets))
        return (relevance * inputs if times_input else relevance).sum(1)
    return run


def _saliency(model, inputs, targets, bounds=None):
    with evaluating(model), torch.enable_grad():
        x = inputs.detach().requires_grad_()
        (gradient,) = torch.autograd.grad(model(x).gather(1, targets[:, None]).sum(), x)
    return gradient.abs().sum(1)


def _cam(kind: str) -> Method:
    def run(model, inputs, targets, bounds=None):
        try:
            import pytorch_grad_cam
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        except ImportError:
            raise MethodError(f"{kind} needs the grad-cam package: pip install 'zennit-resnet-lrp[cam]'") from None
        layer = model.layer4[-1]  # the paper's target layer
        cam_cls = {"gradcam": pytorch_grad_cam.GradCAM, "scorecam": pytorch_grad_cam.ScoreCAM}[kind]
        quiet = mock.patch("pytorch_grad_cam.score_cam.tqdm.tqdm", lambda items, **_: items)  # its own bars
        with evaluating(model), quiet, cam_cls(model=model, target_layers=[layer]) as cam:
            cam.batch_size = 64  # Score-CAM's masked images per forward pass (Grad-CAM ignores it)
            maps = cam(input_tensor=inputs.detach(), targets=[ClassifierOutputTarget(int(t)) for t in targets])
        return torch.as_tensor(maps, device=inputs.device, dtype=inputs.dtype)
    return run


def _random(model, inputs, targets, bounds=None):
    # seeded by the input, so the floor is reproducible and resumable
    seed = int(inputs.detach().double().abs().sum().item() * 1e6) % (2 ** 31)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(inputs.shape[0], *inputs.shape[2:], generator=generator, dtype=inputs.dtype).to(inputs.device)


METHODS: dict[str, Method] = {
    **{name: (_box_method if issubclass(COMPOSITES[name], EpsilonGammaBox) else _composite_method)(COMPOSITES[name])
       for name in OUR_COMPOSITES},
    "zennit_epsilon_plus_flat": _composite_method(lambda: EpsilonPlusFlat(canonizers=[ResNetCanonizer()])),
    "lrp_epsilon_plain": _composite_method(_plain_epsilon),
    "gradient": _saliency,
    "gradient_x_input": _zennit_attributor(Gradient, times_input=True),
    "integrated_gradients": _zennit_attributor(IntegratedGradients, n_iter=32),
    "smoothgrad": _zennit_attributor(SmoothGrad, noise_level=0.1, n_iter=16),
    "guided_backprop": _zennit_attributor(Gradient, COMPOSITES["guided_backprop"]),
    "gradcam": _cam("gradcam"),
    "scorecam": _cam("scorecam"),
    "random": _random,
}

def get_method(name: str) -> Method:
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}")
    return METHODS[name]
