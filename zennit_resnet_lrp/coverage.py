"""What the rules leave to the plain gradient, where relevance may not be conserved: the leaves of the canonized model
that neither have a rule nor only move values (reshapes, dropout, padding), for the coverage report; and, for the
conservation warning, the modules with weights that no rule covers (an ``nn.LSTM`` that projects its state) and the custom autograd functions
in the forward (their own backward carries relevance there)."""
from __future__ import annotations

import torch
from zennit.core import Composite, Hook

from .snapshot import evaluating

# where the autograd functions that are part of the method itself are defined
_OWN_FUNCTIONS = ("torch.", "zennit.", "zennit_resnet_lrp.")

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


def uncovered_modules(model: torch.nn.Module) -> list[tuple[str, str]]:
    """``(name, class name)`` of the modules of a model with a composite registered that hold parameters of their own
    while neither they nor any module inside them has a rule: relevance crosses them as a plain gradient. Tokens the
    model concatenates to the input (a routed ``TokenConcat`` inside: MViT's class token) are accounted for: their
    relevance is absorbed."""
    found = []
    for name, module in model.named_modules():
        if not name or has_rule(module) or next(module.parameters(recurse=False), None) is None:
            continue
        # broken down into children with rules (an LSTM), or its parameters concatenated as tokens
        if any(has_rule(inner) or type(inner).__name__ == "TokenConcat" for inner in module.modules()):
            continue
        found.append((name, type(module).__name__))
    return found


def custom_functions(output: torch.Tensor) -> list[str]:
    """The custom ``torch.autograd.Function`` classes (``module.QualifiedName``) in ``output``'s graph, other than
    torch's, zennit's and this package's own: their backward, as their authors wrote it, carries relevance there."""
    found: dict[str, None] = {}
    seen: set[int] = set()
    pending = [output.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        cls = getattr(node, "_forward_cls", None)
        if cls is not None and not f"{cls.__module__}.".startswith(_OWN_FUNCTIONS):
            found[f"{cls.__module__}.{cls.__qualname__}"] = None
        pending.extend(next_node for next_node, _ in node.next_functions)
    return list(found)
