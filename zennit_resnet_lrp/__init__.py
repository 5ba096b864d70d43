"""LRP with conservation for ResNets: Relevance Splitting (Otsuki et al., ECCV 2024) as zennit canonizers,
rules and composites.

The top level is the zennit extension (the core); ``zennit_resnet_lrp.application`` reads images and models and
writes heatmaps, ``zennit_resnet_lrp.evaluation`` measures faithfulness, ``zennit_resnet_lrp.cli`` is the command
line. Each layer imports only the ones before it.
"""
from .versions import check_torchvision

check_torchvision()  # before anything imports torchvision: a torch it does not fit is one line, not a traceback

from .attribution import (
    AttributionError, START_WITH, TrainingModeWarning, attribute, check_conservation, locate_violation,
)
from .canonizers import MergeBatchNorm, ResidualCanonizer, ResidualTracingWarning, batchnorm_pairs, residual_blocks
from .composites import (
    DEFAULT_METHOD, IMAGENET_MEAN, IMAGENET_STD, PAPER_VARIANTS, AttnLRP, FlowsSkip, FlowsSkipConservative,
    FlowsSkipSimple, Latest, ResidualComposite, ResNetLRP, Simple, box_bounds,
)
from .registry import (
    OUR_COMPOSITES, EpsilonAlpha2Beta1Split, EpsilonGammaBoxSplit, EpsilonPlusFlatSplit, SplitCounterpart,
    UnknownCompositeError, make_composite,
)
from .conservation import DEFAULT_TOLERANCE, ConservationReport, ConservationWarning, Place, Violation
from .core import RelevanceRule
from .attention import AttentionValues, BilinearSplit, SoftmaxRule
from .layer import (
    Attention, AttentionProduct, Elementwise, FunctionalNorm, FunctionalPool, GatedProduct, MatrixProduct, Product,
    ResidualSum, Scale, SumOver, TokenConcat,
)
from .recording import ModuleRelevance, RelevanceRecorder
from .results import Attribution, relative_error
from .pool_rules import (
    MaxPoolAverageStandIn, MaxPoolProportional, MaxPoolWinnerTakesAll, PaddingToEdge, PoolProportional,
)
from .rules import (
    FlatInputZPlus, GateAsWeight, PassThrough, PositiveProportional, ReductionSplit, RelevanceSplit, UniformSplit,
    ZPlus,
)
from .snapshot import ModelSnapshot, evaluating
from .rewriting import TraceCache

__version__ = "0.1.0"
