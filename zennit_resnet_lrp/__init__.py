"""LRP with conservation for ResNets: Relevance Splitting (Otsuki et al., ECCV 2024) as zennit canonizers,
rules and composites."""
from .attribution import Attribution, AttributionError, ConservationWarning, attribute, make_composite
from .conservation import ConservationReport, check_conservation
from .canonizers import MergeBatchNorm, ResidualCanonizer, residual_blocks
from .composites import (
    DEFAULT_METHOD, OUR_COMPOSITES, PAPER_VARIANTS, EpsilonAlpha2Beta1Split, EpsilonGammaBoxSplit,
    EpsilonPlusFlatSplit, FlowsSkip, FlowsSkipConservative, FlowsSkipSimple, Latest, ResNetLRP, ResidualComposite,
    Simple,
)
from .layer import ResidualSum
from .rules import (
    FlatInputZPlus, MaxPoolAverageStandIn, MaxPoolProportional, MaxPoolWinnerTakesAll, PoolProportional,
    RelevanceSplit, ZPlus,
)
from .snapshot import ModelSnapshot
from .tracing import ModuleRelevance, RelevanceRecorder

__version__ = "0.1.0"
