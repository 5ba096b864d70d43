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
from .snapshot import ModelSnapshot

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


def _zennit_attributor(attributor_cls, composite=None, times_input=False, **kwargs) -> Method:
    def run(model, inputs, targets, bounds=None):
        snapshot = ModelSnapshot(model)
        try:
            model.eval()
            made = composite() if composite is not None else None
            with attributor_cls(model, made, **kwargs) as attributor:
                eye = torch.eye(_classes(model, inputs), device=inputs.device, dtype=inputs.dtype)
                _, relevance = attributor(inputs.detach(), eye[targets])
        finally:
            snapshot.restore()
            model.zero_grad(set_to_none=True)
        return (relevance * inputs if times_input else relevance).sum(1)
    return run


def _classes(model, inputs) -> int:
    with torch.no_grad():
        return model(inputs[:1]).shape[1]


def _saliency(model, inputs, targets, bounds=None):
    snapshot = ModelSnapshot(model)
    try:
        model.eval()
        with torch.enable_grad():
            x = inputs.detach().requires_grad_()
            output = model(x)
            (gradient,) = torch.autograd.grad(output.gather(1, targets[:, None]).sum(), x)
    finally:
        snapshot.restore()
    return gradient.abs().sum(1)


def _cam(kind: str) -> Method:
    def run(model, inputs, targets, bounds=None):
        try:
            import pytorch_grad_cam
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        except ImportError:
            raise MethodError(f"{kind} needs the grad-cam package: pip install 'zennit-resnet-lrp[cam]'") from None
        layer = model.layer4[-1]  # the paper's target layer
        snapshot = ModelSnapshot(model)
        try:
            model.eval()
            kwargs = {"batch_size": 64} if kind == "scorecam" else {}
            cam_cls = {"gradcam": pytorch_grad_cam.GradCAM, "scorecam": pytorch_grad_cam.ScoreCAM}[kind]
            quiet = mock.patch("pytorch_grad_cam.score_cam.tqdm.tqdm", lambda items, **_: items)  # its own bars
            with quiet, cam_cls(model=model, target_layers=[layer]) as cam:
                if kwargs:
                    cam.batch_size = kwargs["batch_size"]
                maps = cam(input_tensor=inputs.detach(),
                           targets=[ClassifierOutputTarget(int(t)) for t in targets])
        finally:
            snapshot.restore()
            model.zero_grad(set_to_none=True)
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

DESCRIPTIONS = {
    "zennit_epsilon_plus_flat": "zennit's EpsilonPlusFlat with its own ResNetCanonizer (Norm at the sums)",
    "lrp_epsilon_plain": "the paper's LRP baseline: epsilon rules, BN merged, residual add left plain",
    "gradient": "saliency: |gradient| summed over channels",
    "gradient_x_input": "gradient times input, summed over channels",
    "integrated_gradients": "Integrated Gradients (zennit, 32 steps from a zero baseline)",
    "smoothgrad": "SmoothGrad (zennit, 16 samples, noise 0.1)",
    "guided_backprop": "Guided Backprop (zennit)",
    "gradcam": "Grad-CAM on layer4[-1], upsampled (grad-cam package)",
    "scorecam": "Score-CAM on layer4[-1], upsampled (grad-cam package)",
    "random": "uniform random map (the floor)",
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}")
    return METHODS[name]
