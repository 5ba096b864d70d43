"""Trace one module's own forward with ``torch.fx`` (every child a leaf), and the facts about a module that tracing
and the routing decisions need: whether its forward is worth tracing, its optional arguments and flags, how much
computation a child stands for.

Each module is traced on its own, so that code which cannot be traced in one place (data-dependent control flow,
say) costs only that module. What is routed, and how, is in :py:mod:`.routing`; the rewritten forward in
:py:mod:`.rewriting`.
"""
from __future__ import annotations

import inspect
import re
from typing import Callable

import torch
import torch.fx

from .types import activation_types, normalization_types


class TraceFailure(Exception):
    """A module whose forward ``torch.fx`` cannot trace."""


class ResidualTracingWarning(UserWarning):
    """A module whose forward could not be traced nor broken down: additions or gates in it are not routed."""


class _OwnForwardTracer(torch.fx.Tracer):
    """Traces the root module's own forward only: every child is called as a leaf. An operation recorded with autograd
    off is inside a custom ``torch.autograd.Function``'s forward (or a ``no_grad`` block), which tracing would inline,
    dropping the function's own backward: such a forward is not traced (it is run as it is, and named)."""

    def is_leaf_module(self, module: torch.nn.Module, qualified_name: str) -> bool:
        return True

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        if kind in ("call_function", "call_method") and not torch.is_grad_enabled():
            raise TraceFailure("computes with autograd off (a custom autograd function or a no_grad block)")
        return super().create_node(kind, target, args, kwargs, name, type_expr)


def whole_layers() -> tuple[type, ...]:
    """The layers the composites give a rule as a whole, so that tracing their forward is no use: batch norms and
    other normalisation layers, activations (timm's included)."""
    return (torch.nn.modules.batchnorm._BatchNorm, *normalization_types(), *activation_types())


def traceable(module: torch.nn.Module, whole: tuple[type, ...] = ()) -> bool:
    """Whether ``module``'s forward is worth tracing: its own code, not torch's or zennit's (whose modules neither add
    branches nor multiply by gates), not one of the explicit modules this package routes things through, and not
    of the types ``whole`` (:py:func:`whole_layers`)."""
    forward = type(module).forward
    origin = getattr(forward, "__module__", "") or ""
    return not origin.startswith(("torch.", "zennit.", __package__ + ".modules")) and not isinstance(module, whole)


def may_add_or_gate(module: torch.nn.Module) -> bool:
    """Whether the source of ``module``'s class and its bases (their forward and the methods it calls) has an
    addition, a product, a concatenation or an attention at all (to warn only about untraced modules that could matter)."""
    classes = [cls for cls in type(module).__mro__ if not cls.__module__.startswith(("torch", "builtins"))]
    try:
        source = "\n".join(inspect.getsource(function).split(":", 1)[-1]
                           for cls in classes for name, function in vars(cls).items()
                           if inspect.isfunction(function) and name not in ("__init__", "extra_repr"))
    except (OSError, TypeError):
        return True
    return bool(re.search(r"\+|\badd_?\(|\bmul_?\(|[^*\s(,]\s*\*\s*[^*\s]|\bcat\(|@|attention|softmax", source))


def optional_arguments(module: torch.nn.Module) -> list[str]:
    """The forward's parameters that default to None (at most three: each doubles the traces)."""
    parameters = inspect.signature(type(module).forward).parameters.values()
    return [p.name for p in parameters if p.default is None
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)][:3]


def flag_arguments(module: torch.nn.Module) -> dict:
    """The forward's parameters that default to a flag (``pre_logits=False``, ``is_causal=False``): traced at their
    defaults (code branches on them), the module's own forward run where a call gives another value."""
    parameters = inspect.signature(type(module).forward).parameters.values()
    return {p.name: p.default for p in parameters if isinstance(p.default, (bool, int, str)) and p.default is not None
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def absences(module: torch.nn.Module) -> list[frozenset]:
    """Each set of the optional arguments that a call may leave None, all given first."""
    optional = optional_arguments(module)
    return [frozenset(name for bit, name in enumerate(optional) if mask >> bit & 1)
            for mask in range(2 ** len(optional))]


def trace(module: torch.nn.Module, absent: frozenset = frozenset()) -> tuple[torch.fx.Graph, dict]:
    """The graph of ``module``'s own forward, children as leaves, with the optional arguments in ``absent`` fixed to
    None and its flags to their defaults; and the tensor constants it reads (which ``torch.fx`` puts on the module
    while tracing: taken off again). The module's own attributes are left as they were (:py:func:`kept_state`).
    Raises :py:class:`TraceFailure`."""
    before, state = set(vars(module)), kept_state(module)
    try:
        fixed = {**flag_arguments(module), **{name: None for name in absent}}
        with torch.enable_grad():  # what autograd is off for is told apart by the tracer
            graph = _OwnForwardTracer().trace(module, concrete_args=fixed or None)
    except TraceFailure:
        raise
    except Exception as error:  # tracing fails in many ways (TraceError, TypeError, NotImplementedError, ...)
        raise TraceFailure(f"{type(error).__name__}: {' '.join(str(error).split())[:200]}") from None
    finally:
        added = {key: module.__dict__.pop(key) for key in set(vars(module)) - before}
        state()
    return graph, added


# the attributes every module has (parameters, buffers, children, hooks): tracing leaves them alone
_MODULE_INTERNALS = frozenset(vars(torch.nn.Module()))


def kept_state(module: torch.nn.Module) -> Callable[[], None]:
    """A function that puts ``module``'s plain attributes back as they are now: each rebound one to its object, each
    dict, list or set to its present contents (in place, the same object). A forward that caches in eval mode
    (LeViT's ``attention_bias_cache``) would otherwise keep a proxy of the trace, which the next trace reads as a node
    of a graph gone, and the cache would no longer be the model's own.

    Parameters
    ----------
    module : torch.nn.Module
        The module about to be traced (its parameters, buffers, children and hooks are not touched).

    Returns
    -------
    callable
        Of no arguments: puts the attributes back.
    """
    bound = {key: value for key, value in vars(module).items() if key not in _MODULE_INTERNALS}
    contents = {key: (list(value.items()) if isinstance(value, dict) else list(value))
                for key, value in bound.items() if isinstance(value, (dict, list, set))}

    def restore() -> None:
        for key, value in bound.items():
            if module.__dict__.get(key) is not value:
                module.__dict__[key] = value
        for key, items in contents.items():
            container = bound[key]
            container.clear()
            if isinstance(container, list):
                container.extend(items)
            else:
                container.update(items)
    return restore


def leaf_count(module: torch.nn.Module) -> int:
    """The number of leaf modules in ``module`` (at least 1): the computation it stands for."""
    return max(1, sum(1 for child in module.modules() if not list(child.children())))


def is_identity(module: torch.nn.Module) -> bool:
    """``nn.Identity`` or an empty ``nn.Sequential``: the identity written as a module."""
    return isinstance(module, torch.nn.Identity) or type(module) is torch.nn.Sequential and not len(module)


def child_of(module: torch.nn.Module, target: str) -> torch.nn.Module | None:
    try:
        return module.get_submodule(target)
    except AttributeError:
        return None
