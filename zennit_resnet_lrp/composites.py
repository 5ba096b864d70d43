"""Composites: the paper's four variants, the recommended conservative default, and zennit's composites with
Relevance Splitting at the residual sums. Each is registered in ``zennit.composites.COMPOSITES`` by name."""
from __future__ import annotations

from typing import Sequence

import torch
from zennit.canonizers import Canonizer
from zennit.composites import (
    COMPOSITES, EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat, SpecialFirstLayerMapComposite,
    register_composite,
)
from zennit.core import Hook
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer, ResNetCanonizer
from zennit.types import Activation, BatchNorm

from .canonizers import MergeBatchNorm, ResidualCanonizer
from .layer import ResidualSum
from .rules import (
    DROP, FLAT, FlatInputZPlus, MaxPoolAverageStandIn, MaxPoolProportional, MaxPoolWinnerTakesAll, Pass,
    PoolProportional, RelevanceRule, RelevanceSplit, ZPlus,
)
from .snapshot import ModelSnapshot, protected

LayerMap = Sequence[tuple[tuple[type, ...] | type, Hook]]

CONVOLUTION = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
AVERAGE_POOL = (torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool3d,
                torch.nn.AvgPool1d, torch.nn.AvgPool2d, torch.nn.AvgPool3d)
MAXPOOL_RULES = {
    "average_stand_in": MaxPoolAverageStandIn,
    "proportional": MaxPoolProportional,
    "winner_takes_all": MaxPoolWinnerTakesAll,
}
_ZENNIT_RESNET_CANONIZERS = (ResNetCanonizer, ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer)

# the reference implementation's variant names -> (split mode, split identity skips)
PAPER_VARIANTS = {
    "flows_skip": ("ratio", True),
    "flows_skip_simple": ("symmetric", True),
    "latest": ("ratio", False),
    "simple": ("symmetric", False),
}


class ResidualComposite:
    """Mixin for zennit composites: brings its own :py:class:`ResidualCanonizer` (also when a caller passes
    ``canonizers=[]`` or a list of its own, as Quantus does) and puts the model back exactly as it was on
    ``remove()``, whatever the rules and canonizers did to it."""

    merge_batchnorm = False

    def _with_residual_canonizer(self, canonizers: Sequence[Canonizer] | None) -> list[Canonizer]:
        canonizers = list(canonizers or [])
        # zennit's ResNet canonizers would rewrite the same blocks; ours replaces them (with their BN merge)
        merge = self.merge_batchnorm or any(isinstance(item, ResNetCanonizer) for item in canonizers)
        kept = [item for item in canonizers if not isinstance(item, _ZENNIT_RESNET_CANONIZERS)]
        if not any(isinstance(item, ResidualCanonizer) for item in kept):
            kept.insert(0, ResidualCanonizer(merge_batchnorm=merge))
        return kept

    def register(self, module: torch.nn.Module) -> None:
        self.remove()
        # inside evaluating() (attribute() and the evaluation methods) that context's snapshot restores the model
        snapshot = None if protected(module) else ModelSnapshot(module)
        try:
            super().register(module)  # zennit's register first calls remove(): keep the snapshot out of its reach
        except BaseException:
            super().remove()
            if snapshot is not None:
                snapshot.restore()
            raise
        self._snapshot = snapshot

    def remove(self) -> None:
        super().remove()
        snapshot = getattr(self, "_snapshot", None)
        if snapshot is not None:
            snapshot.restore()
            self._snapshot = None


class ResNetLRP(ResidualComposite, SpecialFirstLayerMapComposite):
    """The paper's rules as a table: z+ on convolutions and linear layers, batch norm and activations pass,
    proportional average pooling, flat-input z+ on the first convolution, Relevance Splitting at the sums.

    Parameters
    ----------
    split : {"ratio", "symmetric"}
        How relevance is split between residual and skip branch (:py:class:`RelevanceSplit`).
    split_identity : bool
        Split at identity skips too (False gives the skip nothing there).
    epsilon : float
        Stabiliser of the z+ and pooling rules; 0 for exact division (see ``inactive``).
    maxpool : {"average_stand_in", "proportional", "winner_takes_all"} or Hook
        Max-pool rule: the reference's 2x2 average stand-in (leaks), or a conservative one.
    inactive : {"drop", "flat"}
        Relevance arriving at units whose positive pre-activation is 0: lost (reference) or spread flat.
    first_rule : Hook, optional
        Rule of the first convolution; :py:class:`FlatInputZPlus` by default.
    layer_map, first_map : list of (types, Hook), optional
        Entries put in front of this composite's own tables, as in zennit.
    canonizers : list of Canonizer, optional
        Further canonizers; the residual canonizer is always applied.
    zero_params : list of str, optional
        Accepted for compatibility with zennit's composites; the z+ rules here always ignore biases.
    stabilizer : float, optional
        zennit's name for ``epsilon``; used if given.
    fast : bool
        Run this composite's rules as autograd functions around each module's forward (default), or through
        zennit's hooks (the slower reference path; the results are the same).
    """

    def __init__(
        self,
        split: str = "ratio",
        split_identity: bool = True,
        epsilon: float = 1e-5,
        maxpool: str | Hook = "average_stand_in",
        inactive: str = DROP,
        first_rule: Hook | None = None,
        layer_map: LayerMap | None = None,
        first_map: LayerMap | None = None,
        canonizers: Sequence[Canonizer] | None = None,
        zero_params: Sequence[str] | None = None,
        stabilizer: float | None = None,
        fast: bool = True,
    ) -> None:
        if stabilizer is not None:
            epsilon = stabilizer
        if isinstance(maxpool, str):
            if maxpool not in MAXPOOL_RULES:
                raise ValueError(f"unknown max-pool rule {maxpool!r}; choose one of {', '.join(MAXPOOL_RULES)}")
            maxpool_cls = MAXPOOL_RULES[maxpool]
            maxpool = maxpool_cls() if maxpool_cls is MaxPoolWinnerTakesAll else maxpool_cls(epsilon, inactive)
        self.split, self.split_identity, self.epsilon, self.inactive = split, split_identity, epsilon, inactive
        # exact division, flat fallback and a max-pool rule that keeps every output's relevance
        self.conservative = (epsilon == 0 and inactive == FLAT
                             and isinstance(maxpool, (MaxPoolProportional, MaxPoolWinnerTakesAll)))
        rule_args = {"epsilon": epsilon, "inactive": inactive}
        layer_map = list(layer_map or []) + [
            (ResidualSum, RelevanceSplit(split, split_identity)),
            (CONVOLUTION, ZPlus(**rule_args)),
            (torch.nn.Linear, ZPlus(**rule_args)),
            (BatchNorm, Pass()),
            (Activation, Pass()),
            (AVERAGE_POOL, PoolProportional(**rule_args)),
            (torch.nn.MaxPool2d, maxpool),
        ]
        first_map = list(first_map or []) + [(CONVOLUTION, first_rule or FlatInputZPlus(**rule_args))]
        for _, rule in layer_map + first_map:
            if isinstance(rule, RelevanceRule):
                rule.fast = fast
        super().__init__(layer_map=layer_map, first_map=first_map, canonizers=self._with_residual_canonizer(canonizers))


def _paper_variant(name: str, doc: str) -> type:
    split, split_identity = PAPER_VARIANTS[name]

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("split", split)
        kwargs.setdefault("split_identity", split_identity)
        ResNetLRP.__init__(self, **kwargs)

    cls = type(
        "".join(part.capitalize() for part in name.split("_")), (ResNetLRP,), {"__init__": __init__, "__doc__": doc}
    )
    return register_composite(name)(cls)


FlowsSkip = _paper_variant(
    "flows_skip", "The paper's proposed method, as the reference computes it: ratio split at every sum.")
FlowsSkipSimple = _paper_variant(
    "flows_skip_simple", "Reference variant: symmetric split (1/2) at every sum.")
Latest = _paper_variant(
    "latest", "Reference variant: identity skips get nothing, ratio split at projection skips.")
Simple = _paper_variant(
    "simple", "Reference variant: identity skips get nothing, symmetric split at projection skips.")


@register_composite("flows_skip_conservative")
class FlowsSkipConservative(ResNetLRP):
    """The recommended default: ``flows_skip`` made exactly conservative. Exact division (``epsilon=0``), the max-pool
    split over its real windows, and relevance reaching units with zero positive pre-activation spread flat,
    so the input relevance sums to the relevance put in at the output."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("epsilon", 0.0)
        kwargs.setdefault("maxpool", "proportional")
        kwargs.setdefault("inactive", FLAT)
        super().__init__(**kwargs)


DEFAULT_METHOD = "flows_skip_conservative"


def _imagenet_bounds() -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def _split_counterpart(zennit_cls: type, name: str, defaults=None) -> type:
    """zennit's composite with the ratio split at residual sums instead of ``Norm``, and BN merged as zennit's
    ``ResNetCanonizer`` does."""

    def __init__(self, split: str = "ratio", split_identity: bool = True, layer_map=None, canonizers=None,
                 **kwargs) -> None:
        for key, make in (defaults or {}).items():
            kwargs.setdefault(key, make())
        layer_map = [(ResidualSum, RelevanceSplit(split, split_identity))] + list(layer_map or [])
        zennit_cls.__init__(self, layer_map=layer_map, canonizers=self._with_residual_canonizer(canonizers), **kwargs)

    doc = (f"zennit's ``{zennit_cls.__name__}`` with Relevance Splitting (``split``, ``split_identity``) at the "
           "residual sums instead of ``Norm``; batch norms merged; all of zennit's keywords accepted.")
    cls = type(f"{zennit_cls.__name__}Split", (ResidualComposite, zennit_cls),
               {"__init__": __init__, "__doc__": doc, "merge_batchnorm": True})
    return register_composite(name)(cls)


EpsilonPlusFlatSplit = _split_counterpart(EpsilonPlusFlat, "epsilon_plus_flat_split")
EpsilonGammaBoxSplit = _split_counterpart(
    EpsilonGammaBox, "epsilon_gamma_box_split",
    {"low": lambda: _imagenet_bounds()[0], "high": lambda: _imagenet_bounds()[1]},
)
EpsilonAlpha2Beta1Split = _split_counterpart(EpsilonAlpha2Beta1, "epsilon_alpha2_beta1_split")

OUR_COMPOSITES = {
    name: COMPOSITES[name] for name in (
        DEFAULT_METHOD, *PAPER_VARIANTS, "epsilon_plus_flat_split", "epsilon_gamma_box_split",
        "epsilon_alpha2_beta1_split",
    )
}
