"""LRP with conservation for ResNets: Relevance Splitting (Otsuki et al., ECCV 2024) as zennit canonizers,
rules and composites.

Two independent halves: :py:mod:`.rules` (how relevance crosses one module) and :py:mod:`.rewriting` (how a model's
operations become explicit modules). They meet at the top: :py:mod:`.composites` and :py:mod:`.registry` (which rule
for which module), :py:mod:`.attribution` (``attribute``, ``check_conservation``), :py:mod:`.conservation`.
``zennit_resnet_lrp.application`` reads images and models and writes heatmaps, ``zennit_resnet_lrp.evaluation``
measures faithfulness, ``zennit_resnet_lrp.cli`` is the command line. Each layer imports only the ones before it.
"""
from .versions import check_torchvision

check_torchvision()  # before anything imports torchvision: a torch it does not fit is one line, not a traceback

from .attribution import (
    AttributionError, START_WITH, TrainingModeWarning, attribute, check_conservation, locate_violation,
)
from .composites import (
    DEFAULT_METHOD, IMAGENET_MEAN, IMAGENET_STD, PAPER_VARIANTS, AttnLRP, CpLRP, FlowsSkip, FlowsSkipConservative,
    FlowsSkipSimple, Latest, ResidualComposite, ResNetLRP, Simple, box_bounds,
)
from .registry import (
    OUR_COMPOSITES, EpsilonAlpha2Beta1Split, EpsilonGammaBoxSplit, EpsilonPlusFlatSplit, SplitCounterpart,
    UnknownCompositeError, make_composite,
)
from .conservation import DEFAULT_TOLERANCE, ConservationReport, ConservationWarning, Place, Violation
from .recording import ModuleRelevance, RelevanceRecorder
from .results import Attribution, relative_error
from .rewriting import (
    Attention, AttentionProduct, Elementwise, FunctionalNorm, FunctionalPool, GatedProduct, MatrixProduct,
    MergeBatchNorm, Product, ResidualCanonizer, ResidualSum, ResidualTracingWarning, Scale, SumOver, TokenConcat,
    TraceCache, batchnorm_pairs, residual_blocks,
)
from .rules import (
    AttentionValues, BilinearSplit, FlatInputZPlus, GateAsWeight, MaxPoolAverageStandIn, MaxPoolProportional,
    MaxPoolWinnerTakesAll, PaddingToEdge, PassThrough, PoolProportional, PositiveProportional, ReductionSplit,
    RelevanceRule, RelevanceSplit, SoftmaxRule, UniformSplit, ZPlus,
)
from .snapshot import ModelSnapshot, evaluating
from .targets import Region

__version__ = "0.1.0"
