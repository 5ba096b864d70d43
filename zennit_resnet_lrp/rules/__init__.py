"""The rules: how relevance crosses one module, each declared once (which inputs it keeps, the relevance of each) and
run either as an autograd function around the module's forward or through zennit's hooks (:py:mod:`.core`). Nothing
here knows how a model's operations became modules: that is :py:mod:`zennit_resnet_lrp.rewriting`'s business.

- :py:mod:`.core`: ``RelevanceRule`` and the two ways it runs;
- :py:mod:`.maps`: the linear maps rules redistribute through (convolutions, pools, padding);
- :py:mod:`.splits`: sums (Relevance Splitting), products, gates, layers that pass relevance;
- :py:mod:`.zplus`: the z+ family (convolutions, linear layers), the flat-input first rule;
- :py:mod:`.pools`: pools, upsampling, padding; :py:mod:`.attention`: attention; :py:mod:`.patches`: unfold, fold;
- :py:mod:`.lxt`: AttnLRP and CP-LRP in the gradient-times-input form LXT computes them in (``attnlrp``, ``cp_lrp``).
"""
from .core import RelevanceRule
from .splits import GateAsWeight, PassThrough, ReductionSplit, RelevanceSplit, UniformSplit
from .zplus import DROP, FLAT, FlatInputZPlus, PositiveProportional, ZPlus
from .pools import (
    MaxPoolAverageStandIn, MaxPoolProportional, MaxPoolWinnerTakesAll, PaddingToEdge, PoolProportional,
)
from .attention import AttentionValues, BilinearSplit, SoftmaxRule
from .patches import CopiesBack, FoldSplit
from .lxt import CentredNormRule, ConstantFactors, GradientRule, IdentityRule, TokenRule, UniformRule
