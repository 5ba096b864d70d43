"""Named attribution methods: every registered composite (ours and zennit's) and the paper's baselines, in one
registry that ``resnet-lrp methods`` lists and ``evaluate --methods`` accepts.

Every method maps ``(model, inputs, targets, bounds) -> maps (N, H, W)``, where ``bounds`` are the lowest and highest
normalised pixel values per channel (for box rules); the model is left as it was.
"""
from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from typing import Callable

import torch
from zennit.attribution import Gradient, IntegratedGradients, SmoothGrad
from zennit.composites import COMPOSITES, EpsilonPlusFlat, LayerMapComposite
from zennit.rules import Epsilon, Norm, Pass
from zennit.torchvision import ResNetCanonizer
from zennit.types import Activation, AvgPool, Convolution, Linear

from ..attribution import attribute
from ..canonizers import MergeBatchNorm
from ..composites import DEFAULT_METHOD, OUR_COMPOSITES
from ..snapshot import evaluating

MethodFunction = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, tuple], torch.Tensor]

# the kinds of method that are registered composites (the other kind: "baseline")
COMPOSITE_KINDS = ("default", "ours", "zennit")


class MethodError(ValueError):
    """An unknown or unavailable method."""


@dataclass(frozen=True)
class Method:
    """A named attribution method.

    Attributes
    ----------
    name : str
        What ``--method`` / ``--methods`` and :py:func:`get_method` take.
    kind : {"default", "ours", "zennit", "baseline"}
        Our default composite, another composite of ours, a composite of zennit's, or a baseline of the paper's.
    description : str
        One line.
    run : callable
        ``(model, inputs, targets, bounds) -> maps (N, H, W)``.
    """

    name: str
    kind: str
    description: str
    run: MethodFunction

    @property
    def is_composite(self) -> bool:
        """Whether the method is a registered composite (what ``explain`` and ``check`` take)."""
        return self.kind in COMPOSITE_KINDS

    def __call__(self, model, inputs, targets, bounds=None) -> torch.Tensor:
        return self.run(model, inputs, targets, bounds)


def _first_sentence(text: str | None) -> str:
    paragraph = " ".join((text or "").strip().split("\n\n")[0].split())
    paragraph = re.sub(r"\s*:\w+(:\w+)?:`[^`]*`", "", paragraph)  # Sphinx roles: citations, cross-references
    return paragraph.split(". ")[0].rstrip(".").replace("``", "")


def _composite(name: str) -> MethodFunction:
    def run(model, inputs, targets, bounds=None):
        return attribute(model, inputs, name, targets, bounds=bounds, tolerance=None).heatmap
    return run


def _composite_instance(make: Callable) -> MethodFunction:
    def run(model, inputs, targets, bounds=None):
        return attribute(model, inputs, make(), targets, tolerance=None).heatmap
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


def _zennit_attributor(attributor_cls, times_input=False, **kwargs) -> MethodFunction:
    def run(model, inputs, targets, bounds=None):
        with evaluating(model), attributor_cls(model, None, **kwargs) as attributor:
            _, relevance = attributor(inputs.detach(), _one_hot(targets))
        return (relevance * inputs if times_input else relevance).sum(1)
    return run


def _saliency(model, inputs, targets, bounds=None):
    with evaluating(model), torch.enable_grad():
        x = inputs.detach().requires_grad_()
        (gradient,) = torch.autograd.grad(model(x).gather(1, targets[:, None]).sum(), x)
    return gradient.abs().sum(1)


def _cam(kind: str) -> MethodFunction:
    def run(model, inputs, targets, bounds=None):
        try:
            import pytorch_grad_cam
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        except ImportError:
            raise MethodError(f"{kind} needs the grad-cam package: pip install 'zennit-resnet-lrp[cam]'") from None
        layer = model.layer4[-1]  # the paper's target layer
        cam_cls = {"gradcam": pytorch_grad_cam.GradCAM, "scorecam": pytorch_grad_cam.ScoreCAM}[kind]
        quiet = contextlib.redirect_stderr(io.StringIO())  # Score-CAM draws progress bars of its own there
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


def _composite_methods() -> list[Method]:
    ours = [DEFAULT_METHOD, *(name for name in OUR_COMPOSITES if name != DEFAULT_METHOD)]
    theirs = sorted(set(COMPOSITES) - set(OUR_COMPOSITES))
    return [
        Method(name, "default" if name == DEFAULT_METHOD else "ours" if name in OUR_COMPOSITES else "zennit",
               _first_sentence(COMPOSITES[name].__doc__), _composite(name))
        for name in [*ours, *theirs]
    ]


BASELINES = [
    Method("zennit_epsilon_plus_flat", "baseline",
           "zennit's EpsilonPlusFlat with its own ResNetCanonizer (Norm at the sums)",
           _composite_instance(lambda: EpsilonPlusFlat(canonizers=[ResNetCanonizer()]))),
    Method("lrp_epsilon_plain", "baseline",
           "the paper's LRP baseline: epsilon rules, BN merged, the residual add left plain",
           _composite_instance(_plain_epsilon)),
    Method("gradient", "baseline", "saliency: |gradient| summed over channels", _saliency),
    Method("gradient_x_input", "baseline", "gradient x input", _zennit_attributor(Gradient, times_input=True)),
    Method("integrated_gradients", "baseline", "zennit's IntegratedGradients, 32 steps",
           _zennit_attributor(IntegratedGradients, n_iter=32)),
    Method("smoothgrad", "baseline", "zennit's SmoothGrad, 16 samples, noise 0.1",
           _zennit_attributor(SmoothGrad, noise_level=0.1, n_iter=16)),
    Method("gradcam", "baseline", "Grad-CAM on layer4[-1], upsampled (grad-cam package)", _cam("gradcam")),
    Method("scorecam", "baseline", "Score-CAM on layer4[-1], upsampled (grad-cam package)", _cam("scorecam")),
    Method("random", "baseline", "a uniform random map: the floor", _random),
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
