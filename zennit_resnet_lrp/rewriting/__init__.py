"""The rewriting: how a model's operations become explicit modules that rules can be given to, and how it is undone.
Nothing here computes relevance: that is :py:mod:`zennit_resnet_lrp.rules`' business.

- :py:mod:`.modules`: the explicit modules (``ResidualSum``, ``GatedProduct``, ``Scale``, ``Attention``, ...);
- :py:mod:`.tracing`, :py:mod:`.graph_analysis`, :py:mod:`.routing`, :py:mod:`.functional_routes`,
  :py:mod:`.forward`: one module's forward traced with ``torch.fx``, its operations routed, the new forward cached;
- :py:mod:`.runtime_routing`: the same operations routed while a forward ``torch.fx`` cannot trace runs;
- :py:mod:`.breakdowns`: fused modules written out (multi-head attention, LSTM, Swin's windows), one file each;
- :py:mod:`.canonizers`: the zennit canonizers that apply all of it, and batch-norm merging;
- :py:mod:`.types`: which layers are normalisations and activations.
"""
from .modules import (
    Attention, AttentionProduct, Elementwise, Fold, FunctionalNorm, FunctionalPool, GatedProduct, MatrixProduct, Pad,
    Product, ResidualSum, Scale, SumOver, Token, TokenConcat,
)
from .types import activation_types, normalization_types
from .forward import TraceCache
from .canonizers import MergeBatchNorm, ResidualCanonizer, batchnorm_pairs, residual_blocks
from .tracing import ResidualTracingWarning
