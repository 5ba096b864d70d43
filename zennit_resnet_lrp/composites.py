"""Composites: the paper's four variants, the recommended conservative default, and AttnLRP and CP-LRP as their
authors' library LXT computes them beside it, each a class registered in ``zennit.composites.COMPOSITES`` by name.
zennit's composites with Relevance Splitting, and turning a name into a ready composite: :py:mod:`.registry`."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Sequence

import torch
from zennit.canonizers import Canonizer
from zennit.composites import LayerMapComposite, SpecialFirstLayerMapComposite, register_composite
from zennit.core import Hook
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer, ResNetCanonizer
from zennit.types import BatchNorm

from .rewriting import (
    AttentionProduct, Fold, FunctionalNorm, FunctionalPool, GatedProduct, MatrixProduct, Pad, Product,
    ResidualCanonizer, ResidualSum, Scale, SumOver, Token, TokenConcat, activation_types, normalization_types,
)
from .rewriting.modules import FunctionCall
from .rules import (
    DROP, FLAT, AttentionValues, BilinearSplit, CopiesBack, FlatInputZPlus, FoldSplit, GateAsWeight,
    MaxPoolAverageStandIn, MaxPoolProportional, MaxPoolWinnerTakesAll, PaddingToEdge, PassThrough, PoolProportional,
    ReductionSplit, RelevanceSplit, UniformSplit, ZPlus,
)
from .rules.lxt import (
    CentredNormRule, ConstantFactors, GradientRule, IdentityRule, TokenRule, UniformRule, over_output, times_input,
)
from .snapshot import ModelSnapshot, freeze_parameters, thaw_parameters

DEFAULT_METHOD = "flows_skip_conservative"
PAPER_VARIANTS = ("flows_skip", "flows_skip_simple", "latest", "simple")
LayerMap = Sequence[tuple[tuple[type, ...] | type, Hook]]

CONVOLUTION = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
PADDING = (torch.nn.ConstantPad1d, torch.nn.ConstantPad2d, torch.nn.ConstantPad3d, Pad)  # zero padding included
TRANSPOSED_CONVOLUTION = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
AVERAGE_POOL = (torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool3d,
                torch.nn.AvgPool1d, torch.nn.AvgPool2d, torch.nn.AvgPool3d, FunctionalPool)
FIRST_RULES = {"flat": FlatInputZPlus, "zplus": ZPlus}
MAXPOOL_RULES = {
    "average_stand_in": MaxPoolAverageStandIn,
    "proportional": MaxPoolProportional,
    "winner_takes_all": MaxPoolWinnerTakesAll,
}
_ZENNIT_RESNET_CANONIZERS = (ResNetCanonizer, ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer)

# ImageNet's per-channel normalisation: the default input space of the box rule (and of the application's images)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def box_bounds(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> tuple:
    """``(low, high)``, each (1, C, 1, 1): the normalised values of pixel 0 and pixel 1 per channel, the bounds a
    box rule (zennit's ``ZBox`` in ``EpsilonGammaBox``) needs."""
    mean = torch.as_tensor(mean, dtype=dtype, device=device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=dtype, device=device).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


class ResidualComposite:
    """Mixin for zennit composites: brings its own :py:class:`ResidualCanonizer` (also when a caller passes
    ``canonizers=[]`` or a list of its own, as Quantus does) and puts the model back exactly as it was on
    ``remove()``, whatever the rules and canonizers did to it.

    Attributes
    ----------
    merge_batchnorm : bool
        Whether the residual canonizer also merges batch norms (zennit's rule tables expect that).
    loss_reasons : list of str
        Where the rules lose relevance by design (empty where they conserve): what a warning says.
    conservative : bool
        Whether the rules promise ``sum of input relevance == start``: where they name no loss.
    """

    merge_batchnorm = False
    loss_reasons: Sequence[str] = ("its rules do not promise conservation",)

    @property
    def conservative(self) -> bool:
        return not self.loss_reasons

    def __init__(self, *args, **kwargs) -> None:
        self._snapshot: ModelSnapshot | None = None
        self._frozen: list[torch.nn.Parameter] = []
        super().__init__(*args, **kwargs)

    def _with_residual_canonizer(self, canonizers: Sequence[Canonizer] | None) -> list[Canonizer]:
        canonizers = list(canonizers or [])
        # zennit's ResNet canonizers would rewrite the same blocks; ours replaces them (with their BN merge)
        merge = self.merge_batchnorm or any(isinstance(item, ResNetCanonizer) for item in canonizers)
        kept = [item for item in canonizers if not isinstance(item, _ZENNIT_RESNET_CANONIZERS)]
        if not any(isinstance(item, ResidualCanonizer) for item in kept):
            kept.insert(0, ResidualCanonizer(merge_batchnorm=merge))
        return kept

    def register(self, module: torch.nn.Module, snapshot: bool = True) -> None:
        """Canonize ``module`` and register the rules, as zennit's composites do.

        Parameters
        ----------
        module : torch.nn.Module
        snapshot : bool
            Record the model first and put it back exactly on :py:meth:`remove` (default). False for a caller that
            restores the model itself (as :py:func:`~zennit_resnet_lrp.snapshot.evaluating` does).
        """
        self.remove()
        recorded = ModelSnapshot(module) if snapshot else None
        # what the rules hold constant is what does not depend on the input: with the parameters frozen while the
        # composite is on, that is what does not require a gradient, whoever runs the model (zennit's attributors too)
        frozen = freeze_parameters(module)
        try:
            super().register(module)  # zennit's register first calls remove(): keep the snapshot out of its reach
        except BaseException:
            super().remove()
            thaw_parameters(frozen)
            if recorded is not None:
                recorded.restore()
            raise
        self._snapshot, self._frozen = recorded, frozen

    def remove(self) -> None:
        super().remove()
        thaw_parameters(self._frozen)
        self._frozen = []
        if self._snapshot is not None:
            self._snapshot.restore()
            self._snapshot = None


def routed_product_rules(fast: bool = True) -> LayerMap:
    """The rules of the products canonizers route operations through (gates, products of branches, scales): the same
    in every composite here, ours and zennit's given by name."""
    return [
        (GatedProduct, GateAsWeight(fast=fast)),
        (Product, UniformSplit(fast=fast)),
        (Scale, PassThrough(fast=fast)),
    ]


def passing_layer_rules(fast: bool = True) -> LayerMap:
    """The layers that pass relevance as they are in the paper's rules: batch norms and other normalisation layers,
    activations (zennit's composites have rules of their own for these)."""
    return [
        ((BatchNorm, *normalization_types()), PassThrough(fast=fast)),
        (activation_types(), PassThrough(fast=fast)),
    ]


class ResNetLRP(ResidualComposite, SpecialFirstLayerMapComposite):
    """The paper's rules as a table: z+ on convolutions and linear layers, batch norm and activations pass,
    proportional average pooling, flat-input z+ on the first convolution, Relevance Splitting at the sums.

    Subclasses set their defaults as class attributes of the same names as the parameters below.

    Parameters
    ----------
    split : {"ratio", "symmetric"}
        How relevance is split between residual and skip branch (:py:class:`RelevanceSplit`).
    split_identity : bool
        Split at identity skips too (False gives the skip nothing there).
    epsilon : float
        Stabiliser of the z+ and pooling rules; 0 for exact division (see ``unsupported``).
    maxpool : {"average_stand_in", "proportional", "winner_takes_all"} or Hook
        Max-pool rule: the reference's 2x2 average stand-in (leaks), or a conservative one.
    unsupported : {"drop", "flat"}
        Relevance arriving at units whose positive pre-activation is 0: lost (reference) or spread flat.
    first_rule : {"flat", "zplus"} or Hook, optional
        Rule of the first convolution: the paper's :py:class:`FlatInputZPlus` (``flat``: the pixels' values ignored),
        :py:class:`ZPlus` on the pixels (``zplus``), or a rule of your own.
    layer_map, first_map : list of (types, Hook), optional
        Entries put in front of this composite's own tables, as in zennit.
    canonizers : list of Canonizer, optional
        Further canonizers; the residual canonizer is always applied.
    zero_params : list of str, optional
        Accepted for compatibility with zennit's composites; the z+ rules here always ignore biases.
    stabilizer : float, optional
        zennit's name for ``epsilon``; used if given.
    fast : bool
        Run this composite's own rules as autograd functions around each module's forward (default), or through
        zennit's hooks (the slower reference path; the results are the same, except for modules called more than
        once in a forward, which zennit's hooks do not track call by call: the children that route operations while
        a module runs, an LSTM's steps). Rules passed in keep their own.
    """

    split = "ratio"
    split_identity = True
    rule_losses: Sequence[str] = ()  # where a subclass's own rules lose relevance, whatever its parameters
    epsilon = 1e-5
    maxpool = "average_stand_in"
    unsupported = DROP
    first_rule = "flat"

    def __init__(
        self,
        *,
        split: str | None = None,
        split_identity: bool | None = None,
        epsilon: float | None = None,
        maxpool: str | Hook | None = None,
        unsupported: str | None = None,
        first_rule: str | Hook | None = None,
        layer_map: LayerMap | None = None,
        first_map: LayerMap | None = None,
        canonizers: Sequence[Canonizer] | None = None,
        zero_params: Sequence[str] | None = None,
        stabilizer: float | None = None,
        fast: bool = True,
    ) -> None:
        given = {"split": split, "split_identity": split_identity, "epsilon": stabilizer if stabilizer is not None
                 else epsilon, "maxpool": maxpool, "unsupported": unsupported}
        for key, value in given.items():
            if value is not None:
                setattr(self, key, value)
        rule_args = {"epsilon": self.epsilon, "unsupported": self.unsupported, "fast": fast}
        maxpool_rule = self._maxpool_rule(self.maxpool, rule_args)
        # exact division, flat fallback and a max-pool rule that keeps every output's relevance conserve
        self.loss_reasons = [*self.rule_losses, *(reason for reason, loses in (
            ("identity skips get none of it", not self.split_identity),
            (f"the stabiliser epsilon={self.epsilon:g} absorbs some", self.epsilon != 0),
            ("units without positive pre-activation drop what reaches them", self.unsupported != FLAT),
            ("the reference's average stand-in for max-pooling leaks",
             not isinstance(maxpool_rule, (MaxPoolProportional, MaxPoolWinnerTakesAll))),
        ) if loses)]
        layer_map = list(layer_map or []) + [
            (ResidualSum, RelevanceSplit(self.split, self.split_identity, fast=fast)),
            (SumOver, ReductionSplit(self.split, fast=fast)),
            ((Fold, torch.nn.Fold), FoldSplit(self.split, fast=fast)),  # a sum of overlapping columns
            (torch.nn.Unfold, CopiesBack(fast=fast)),
            *self.attention_rules(rule_args),
            *routed_product_rules(fast),
            *passing_layer_rules(fast),
            (CONVOLUTION, ZPlus(**rule_args)),
            (TRANSPOSED_CONVOLUTION, ZPlus(**rule_args)),  # upsampling (LowFormer): z+ through its linear map
            (torch.nn.Linear, ZPlus(**rule_args)),
            (AVERAGE_POOL, PoolProportional(**rule_args)),
            (torch.nn.Upsample, PoolProportional(**rule_args)),  # also a linear map of the input: nearest, bilinear
            (PADDING, PaddingToEdge(fast=fast)),
            (torch.nn.MaxPool2d, maxpool_rule),
            # signals' and clips' max-pools: the rules that take any rank (the reference's stand-in is 2x2)
            *([((torch.nn.MaxPool1d, torch.nn.MaxPool3d), maxpool_rule)]
              if isinstance(maxpool_rule, (MaxPoolProportional, MaxPoolWinnerTakesAll)) else []),
        ]
        first = first_rule if first_rule is not None else self.first_rule
        if isinstance(first, str):
            if first not in FIRST_RULES:
                raise ValueError(f"unknown first-layer rule {first!r}; choose one of {', '.join(FIRST_RULES)}")
            first = FIRST_RULES[first](**rule_args)
        first_map = list(first_map or []) + [(CONVOLUTION, first)]
        super().__init__(layer_map=layer_map, first_map=first_map, canonizers=self._with_residual_canonizer(canonizers))

    @staticmethod
    def attention_rules(rule_args: dict) -> LayerMap:
        """Attention: the weights held constant, relevance through the values (z+), none to queries and keys."""
        return [(AttentionProduct, AttentionValues(**rule_args)),
                (MatrixProduct, BilinearSplit("positive", fast=rule_args["fast"]))]

    @staticmethod
    def _maxpool_rule(maxpool: str | Hook, rule_args: dict) -> Hook:
        if not isinstance(maxpool, str):
            return maxpool
        if maxpool not in MAXPOOL_RULES:
            raise ValueError(f"unknown max-pool rule {maxpool!r}; choose one of {', '.join(MAXPOOL_RULES)}")
        if MAXPOOL_RULES[maxpool] is MaxPoolWinnerTakesAll:
            return MaxPoolWinnerTakesAll(fast=rule_args["fast"])
        return MAXPOOL_RULES[maxpool](**rule_args)


@register_composite("flows_skip")
class FlowsSkip(ResNetLRP):
    """The paper's proposed method, as the reference computes it: ratio split at every sum."""

    split, split_identity = "ratio", True


@register_composite("flows_skip_simple")
class FlowsSkipSimple(ResNetLRP):
    """Reference variant: symmetric split (1/2) at every sum."""

    split, split_identity = "symmetric", True


@register_composite("latest")
class Latest(ResNetLRP):
    """Reference variant: identity skips get nothing, ratio split at projection skips."""

    split, split_identity = "ratio", False


@register_composite("simple")
class Simple(ResNetLRP):
    """Reference variant: identity skips get nothing, symmetric split at projection skips."""

    split, split_identity = "symmetric", False


@register_composite("flows_skip_conservative")
class FlowsSkipConservative(FlowsSkip):
    """The recommended default: ``flows_skip`` made exactly conservative, on every architecture the canonizer
    covers. Exact division (``epsilon=0``), the max-pool split over its real windows, relevance reaching units with
    zero positive pre-activation spread flat, so the input relevance sums to the relevance put in at the output; and
    z+ on the pixels at the first layer instead of the paper's flat rule, which ignores them (docs/method.md)."""

    epsilon, maxpool, unsupported, first_rule = 0.0, "proportional", FLAT, "zplus"


class GradientForm(ResidualComposite, LayerMapComposite):
    """Base of the transformer composites as LXT (the AttnLRP authors' library) computes them: gradient times input
    (:py:mod:`~zennit_resnet_lrp.rules.lxt`). What flows backward between modules is ``g``, the relevance of a
    tensor ``t`` being ``t g``: the model's input gets ``R = x g`` and its output turns the relevance put in into
    ``g = R / y``, so that the relevance at the input and at the model's tokens is what LXT's ``x * x.grad`` gives.
    Every layer without a rule of its own here is LRP-0 by its gradient (linear layers, convolutions, sums, the
    softmax, scales, an added position embedding), as LXT leaves it.

    Relevance is not conserved (biases absorb some; AttnLRP's softmax and bilinear rules do not add up): use the
    default to keep it.

    Parameters
    ----------
    layer_map : list of (types, Hook), optional
        Entries put in front of this composite's own table, as in zennit.
    canonizers : list of Canonizer, optional
        Further canonizers; the residual canonizer is always applied.
    """

    gradient_form = True  # what reaches a tensor in the backward pass is g; its relevance is the tensor times g
    loss_reasons: Sequence[str] = (
        "LXT's rules do not conserve: biases (linear layers, layer norms, position embeddings) absorb relevance",
    )

    def __init__(self, *, layer_map: LayerMap | None = None, canonizers: Sequence[Canonizer] | None = None) -> None:
        layer_map = list(layer_map or []) + [
            ((TokenConcat, Token), TokenRule()),
            *self.product_rules(),
            ((torch.nn.LayerNorm, FunctionalNorm, FunctionCall), CentredNormRule()),
            (BatchNorm, GradientRule()),  # in eval mode an affine map: LRP-0, its bias absorbing
            ((*normalization_types(), *activation_types()), IdentityRule()),
            (torch.nn.Module, GradientRule()),  # every other layer: its gradient, LRP-0
        ]
        super().__init__(layer_map=layer_map, canonizers=self._with_residual_canonizer(canonizers))

    @staticmethod
    def product_rules() -> LayerMap:
        """The rules of the products of input-dependent tensors."""
        raise NotImplementedError

    def register(self, module: torch.nn.Module, snapshot: bool = True) -> None:
        """Canonize ``module`` and register the rules, and the conversions at its input and output (see
        :py:meth:`ResidualComposite.register` for ``snapshot``)."""
        super().register(module, snapshot)
        # the conversions at the model's boundary: relevance in, gradient through, relevance out
        self.handles.append(module.register_forward_pre_hook(_inputs_times))
        self.handles.append(module.register_forward_hook(_outputs_over))


def _inputs_times(module: torch.nn.Module, args: tuple):
    return tuple(times_input(x) if isinstance(x, torch.Tensor) and x.requires_grad else x for x in args)


def _outputs_over(module: torch.nn.Module, args: tuple, output):
    if isinstance(output, torch.Tensor):
        return over_output(output) if output.requires_grad else output
    if isinstance(output, (tuple, list)):
        return type(output)(_outputs_over(module, args, item) for item in output)
    if isinstance(output, Mapping):  # a dict, a Hugging Face ModelOutput: its tensors in place
        for key, value in list(output.items()):
            if isinstance(value, torch.Tensor) and value.requires_grad:
                output[key] = over_output(value)
    return output


@register_composite("attnlrp")
class AttnLRP(GradientForm):
    """AttnLRP (Achtibat et al. 2024) exactly as LXT 2.1 computes it, tested against LXT on torchvision's and timm's
    ViTs: not conserving. LRP-0 by the gradient at linear layers and sums (biases and the position embedding absorb),
    layer norms with their standard deviation held constant, the identity rule at activations (LXT's stabiliser
    1e-10), the softmax rule, and half to each factor of ``q k^T`` and ``A v`` (the uniform rule). For comparison with
    the default, which conserves."""

    @staticmethod
    def product_rules() -> LayerMap:
        return [((MatrixProduct, Product, GatedProduct), UniformRule())]


@register_composite("cp_lrp")
class CpLRP(GradientForm):
    """CP-LRP (Ali et al. 2022) as LXT 2.1 ships it for torchvision's ViT, and for timm's ViTs too: not conserving.
    LXT's ``cp_LRP`` (``lxt.efficient.models.vit_torch``): AttnLRP's rules outside attention, and inside it the
    attention weights held constant, so that the values get LRP-0 through ``v -> A v`` and the queries and keys
    nothing; a gate is held constant too."""

    @staticmethod
    def product_rules() -> LayerMap:
        return [(AttentionProduct, ConstantFactors((0,))), (GatedProduct, ConstantFactors((1,))),
                ((MatrixProduct, Product), UniformRule())]
