"""Composites by name: zennit's composites with Relevance Splitting at the residual sums (registered in
``zennit.composites.COMPOSITES`` beside ours), which of the registered composites are ours, and
:py:func:`make_composite`, which turns any registered name into a ready composite (zennit's own with our residual
canonizer)."""
from __future__ import annotations

from typing import Sequence

import torch
from zennit.canonizers import Canonizer
from zennit.composites import COMPOSITES, EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat, register_composite
from zennit.core import Composite
from zennit.layer import Sum

from .composites import DEFAULT_METHOD, PAPER_VARIANTS, LayerMap, ResidualComposite, box_bounds, routed_product_rules
from .rewriting import ResidualCanonizer, ResidualSum, SumOver, TraceCache
from .rules import ReductionSplit, RelevanceSplit


class SplitCounterpart(ResidualComposite):
    """Mixin for zennit's composites: Relevance Splitting (``split``, ``split_identity``) at the residual sums and
    gates as weights, in front of the composite's own table (where zennit puts ``Norm``), batch norms merged as zennit's
    ``ResNetCanonizer`` does; every keyword of the zennit composite is accepted."""

    merge_batchnorm = True
    loss_reasons = ("zennit's epsilon rule and the layers' biases absorb some",)

    def __init__(self, split: str = "ratio", split_identity: bool = True, layer_map: LayerMap | None = None,
                 canonizers: Sequence[Canonizer] | None = None, **kwargs) -> None:
        layer_map = [(ResidualSum, RelevanceSplit(split, split_identity)), (SumOver, ReductionSplit(split)),
                     *routed_product_rules()] \
            + list(layer_map or [])
        super().__init__(layer_map=layer_map, canonizers=self._with_residual_canonizer(canonizers), **kwargs)


@register_composite("epsilon_plus_flat_split")
class EpsilonPlusFlatSplit(SplitCounterpart, EpsilonPlusFlat):
    """zennit's ``EpsilonPlusFlat`` with Relevance Splitting at the residual sums instead of ``Norm``."""


@register_composite("epsilon_gamma_box_split")
class EpsilonGammaBoxSplit(SplitCounterpart, EpsilonGammaBox):
    """zennit's ``EpsilonGammaBox`` with Relevance Splitting at the residual sums instead of ``Norm``. ``low`` and
    ``high`` default to the bounds of ImageNet-normalised images (:py:func:`box_bounds`)."""

    def __init__(self, low: torch.Tensor | None = None, high: torch.Tensor | None = None, **kwargs) -> None:
        default_low, default_high = box_bounds()
        super().__init__(low=default_low if low is None else low, high=default_high if high is None else high,
                         **kwargs)


@register_composite("epsilon_alpha2_beta1_split")
class EpsilonAlpha2Beta1Split(SplitCounterpart, EpsilonAlpha2Beta1):
    """zennit's ``EpsilonAlpha2Beta1`` with Relevance Splitting at the residual sums instead of ``Norm``."""


OUR_COMPOSITES = {
    name: COMPOSITES[name] for name in (
        DEFAULT_METHOD, *PAPER_VARIANTS, "epsilon_plus_flat_split", "epsilon_gamma_box_split",
        "epsilon_alpha2_beta1_split", "attnlrp", "cp_lrp",
    )
}


class UnknownCompositeError(ValueError):
    """A composite name that is not registered."""


def needs_box_bounds(name_or_class: str | type) -> bool:
    """Whether the composite has a box rule, whose bounds depend on the input's normalisation."""
    cls = COMPOSITES.get(name_or_class) if isinstance(name_or_class, str) else name_or_class
    return isinstance(cls, type) and issubclass(cls, EpsilonGammaBox)


def make_composite(method: str | Composite = DEFAULT_METHOD, bounds: tuple | None = None,
                   cache: TraceCache | None = None) -> Composite:
    """Return a fresh composite for ``method``: a name in zennit's registry (ours or zennit's) or an instance.

    zennit's own composites get a residual canonizer with batch-norm merging (as zennit's ``ResNetCanonizer``
    would give them), so their ``Norm`` rule applies at the sums instead of relevance doubling at every block.

    Parameters
    ----------
    method : str or Composite
        A registered name, or a composite (returned as it is).
    bounds : (low, high), optional
        The lowest and highest input values, for composites with a box rule; ImageNet's by default.
    cache : TraceCache, optional
        Where the residual canonizer keeps its traces: pass one to share them between composites (a run that makes
        a composite per batch traces each module structure once).
    """
    if isinstance(method, Composite):
        return method
    if not isinstance(method, str) or method not in COMPOSITES:
        raise UnknownCompositeError(f"unknown method {method!r}; choose one of: {', '.join(sorted(COMPOSITES))}")
    cls = COMPOSITES[method]
    kwargs = {}
    if needs_box_bounds(cls):
        kwargs["low"], kwargs["high"] = bounds if bounds is not None else box_bounds()
    if issubclass(cls, ResidualComposite):
        return cls(canonizers=[ResidualCanonizer(merge_batchnorm=cls.merge_batchnorm, cache=cache)], **kwargs)
    composite = cls(canonizers=[ResidualCanonizer(merge_batchnorm=True, cache=cache)], **kwargs)
    # the modules our canonizer adds get our rules (gates, products and scales as in ours); and zennit's Norm for its
    # stacked Sum, in the form our sums take (their operands separate), where the composite has it
    composite.layer_map[:0] = [(SumOver, ReductionSplit()), *routed_product_rules()]
    if any(_maps(types, Sum) for types, _ in composite.layer_map):
        composite.layer_map.insert(0, (ResidualSum, RelevanceSplit("signed")))
    return composite


def _maps(types: tuple[type, ...] | type, kind: type) -> bool:
    return any(issubclass(kind, item) for item in (types if isinstance(types, tuple) else (types,)))
