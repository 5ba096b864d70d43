"""What the rules leave to the plain gradient, found so that a warning can name it: modules with weights of their own
that no rule covers (an ``nn.GRU``: relevance passes it as a gradient, which does not conserve), and custom autograd
functions in the forward (their own backward is what relevance goes through there)."""
from __future__ import annotations

import torch
from zennit.core import Hook

# where the autograd functions that are part of the method itself are defined
_OWN_FUNCTIONS = ("torch.", "zennit.", "zennit_resnet_lrp.")


def has_rule(module: torch.nn.Module) -> bool:
    """Whether a rule is registered on ``module``: zennit's hooks and our fast path both put one of the rule's bound
    methods among the module's forward pre-hooks."""
    return any(isinstance(getattr(hook, "__self__", None), Hook) for hook in module._forward_pre_hooks.values())


def uncovered_modules(model: torch.nn.Module) -> list[tuple[str, str]]:
    """``(name, class name)`` of the modules of a model with a composite registered that hold parameters of their own
    while neither they nor any module inside them has a rule: relevance crosses them as a plain gradient."""
    found = []
    for name, module in model.named_modules():
        if not name or has_rule(module) or next(module.parameters(recurse=False), None) is None:
            continue
        if any(has_rule(inner) for inner in module.modules()):  # broken down into children with rules (an LSTM)
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
