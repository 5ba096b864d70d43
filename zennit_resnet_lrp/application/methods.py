"""Named attribution methods: every registered composite (ours and zennit's) and the baselines (the paper's, from
captum as the paper computed them; zennit's; Grad-CAM and Score-CAM from the grad-cam package), in one registry
that ``resnet-lrp methods`` lists and ``explain --methods`` and ``evaluate --methods`` accept.

Every method maps ``(model, inputs, targets, context) -> maps``: (N, H, W), or (N, C, H, W) for the captum
baselines, whose maps the paper's metric received per channel. ``context`` holds the box bounds and a seed per
sample (every random choice of a method is drawn from its sample's seed: reproducible, and the same whatever batch
the sample is in). The model is left as it was.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from zennit.attribution import Gradient, IntegratedGradients
from zennit.composites import COMPOSITES, EpsilonPlusFlat, LayerMapComposite
from zennit.rules import Epsilon, Norm, Pass
from zennit.torchvision import ResNetCanonizer
from zennit.types import Activation, AvgPool, Convolution, Linear

from ..attribution import attribute
from ..rewriting import MergeBatchNorm
from ..composites import DEFAULT_METHOD
from ..registry import OUR_COMPOSITES, make_composite
from .baselines import (
    MethodContext, MethodError, MethodFunction, attention_rollout, cam, captum, random_map, saliency, smoothgrad,
    zennit_attributor,
)

__all__ = ["COMPOSITE_KINDS", "METHODS", "Method", "MethodContext", "MethodError", "get_method", "method_names"]

# the kinds of method that are registered composites (the other kind: "baseline")
COMPOSITE_KINDS = ("default", "ours", "zennit")


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
    # a sentence ends at a full stop before a capital letter, not at "et al. 2024" or "e.g. zennit"
    first = re.split(r"(?<!\bal)(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z`])", paragraph)[0]
    return first.rstrip(".").replace("``", "")


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
        methods.append(Method(f"captum_{kind}", "baseline", "captum", f"{text}; map per channel", captum(kind)))
        if kind != "gradient_x_input":  # the reference's -positive forms
            methods.append(Method(f"captum_{kind}_positive", "baseline", "captum", f"{text}, clipped at 0",
                                  captum(kind, positive=True)))
    return methods


BASELINES = [
    Method("zennit_epsilon_plus_flat", "baseline", "zennit",
           "zennit's EpsilonPlusFlat with its own ResNetCanonizer (Norm at the sums)",
           _composite_instance(lambda: EpsilonPlusFlat(canonizers=[ResNetCanonizer()]))),
    Method("lrp_epsilon_plain", "baseline", "zennit",
           "epsilon rules, BN merged, the residual addition left plain (not captum's LRP: see captum_lrp)",
           _composite_instance(_plain_epsilon)),
    Method("gradient", "baseline", "zennit-resnet-lrp", "saliency: |gradient| summed over channels", saliency),
    Method("gradient_x_input", "baseline", "zennit", "gradient x input",
           zennit_attributor(Gradient, times_input=True)),
    Method("integrated_gradients", "baseline", "zennit", "zennit's IntegratedGradients, 32 steps",
           zennit_attributor(IntegratedGradients, n_iter=32)),
    Method("smoothgrad", "baseline", "zennit-resnet-lrp", "SmoothGrad (zennit's formula), 16 samples, noise 0.1, "
           "seeded per image", smoothgrad()),
    *_captum_methods(),
    Method("attention_rollout", "baseline", "zennit-resnet-lrp", "attention rollout (Abnar and Zuidema 2020), "
           "vision transformers only", attention_rollout),
    Method("gradcam", "baseline", "grad-cam", "Grad-CAM on layer4[-1], upsampled", cam("gradcam")),
    Method("scorecam", "baseline", "grad-cam", "Score-CAM on layer4[-1], upsampled", cam("scorecam")),
    Method("random", "baseline", "zennit-resnet-lrp", "a uniform random map, seeded per image: the floor", random_map),
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
