"""Which layers of a model a composite gives no rule: the leaves of the canonized model that neither have a rule nor
only move values (reshapes, dropout, padding), where relevance follows the gradient and may not be conserved."""
from __future__ import annotations

import torch
from zennit.core import Composite, Hook

from .snapshot import evaluating

# leaves that only move, copy or drop values: their gradient passes relevance unchanged in eval mode
PASSIVE = {
    "Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout", "Flatten",
    "Unflatten", "ZeroPad1d", "ZeroPad2d", "ZeroPad3d", "ConstantPad1d", "ConstantPad2d", "ConstantPad3d",
    "ReflectionPad1d", "ReflectionPad2d", "ReplicationPad2d", "PixelShuffle", "PixelUnshuffle", "ChannelShuffle",
    "Permute", "StochasticDepth", "DropPath", "DropBlock2d", "PatchDropout", "Format", "Sequential", "ModuleList",
    "ModuleDict", "TokenConcat", "Token",
    # attention's softmax: its output, the attention weights, gets no relevance under the conservative rules
    "Softmax",
}


def has_rule(module: torch.nn.Module) -> bool:
    """Whether a rule is registered on ``module``: a forward pre-hook bound to a zennit ``Hook`` (our fast path's
    marker, or zennit's own hook)."""
    return any(isinstance(getattr(hook, "__self__", None), Hook) for hook in module._forward_pre_hooks.values())


def unruled_modules(model: torch.nn.Module, composite: Composite) -> list[tuple[str, str]]:
    """``(name, class name)`` of every leaf of the canonized model with no rule of ``composite`` and not
    :py:data:`PASSIVE`; the model is restored afterwards."""
    with evaluating(model):
        composite.register(model)
        try:
            return [(name, type(module).__name__) for name, module in model.named_modules()
                    if not any(True for _ in module.children()) and type(module).__name__ not in PASSIVE
                    and not has_rule(module)]
        finally:
            composite.remove()
