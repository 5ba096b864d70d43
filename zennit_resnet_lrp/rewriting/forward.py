"""A module's forward rewritten with its residual additions, gates and functional operations routed through explicit
modules, made once per module structure (:py:class:`TraceCache`).

The steps: :py:func:`~.tracing.trace` the forward (once for each set of absent optional arguments), route its
operations (:py:func:`~.routing.route_operations`), and :py:func:`compile_forward` the graph into the new forward.
"""
from __future__ import annotations

import inspect
import types
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.fx

from .graph_analysis import ChildNames
from .routing import route_operations
from .tracing import TraceFailure, absences, flag_arguments, is_identity, leaf_count, optional_arguments, trace


@dataclass
class Rewrite:
    """A module's forward with its residual additions, gates and functional operations routed through modules.

    Attributes
    ----------
    forward : callable
        The new forward, a function of ``(self, *inputs)`` to bind to the module.
    children : dict of str to callable
        Name -> factory of each module the forward calls that the module does not have yet: one per routed
        addition, gate or functional operation.
    constants : dict of str to tensor
        Tensors the forward reads as attributes of the module (constants made in the forward while tracing).
    """

    forward: Callable
    children: dict[str, Callable[[], torch.nn.Module]] = field(default_factory=dict)
    constants: dict[str, torch.Tensor] = field(default_factory=dict)

    def install(self, module: torch.nn.Module) -> list[str]:
        """Give ``module`` the new children, the tensor constants its new forward reads and the new forward; return
        the names added (to remove later). Raises :py:class:`TraceFailure`, the module left as it was, where a child
        cannot be added."""
        added = []
        try:
            for name, make in self.children.items():  # a factory marked from_module builds from this module's own
                module.add_module(name, make(module) if getattr(make, "from_module", False) else make())
                added.append(name)
        except Exception as error:  # a name the module's own __setattr__ or add_module refuses
            for name in added:
                module._modules.pop(name, None)
            raise TraceFailure(f"could not add {name!r}: {type(error).__name__}: {error}") from None
        module.__dict__.update(self.constants)
        module.__dict__["forward"] = types.MethodType(self.forward, module)
        return added + list(self.constants)


class TraceCache:
    """Rewrites already made, by the structure of the module they were made for: its class, training flag, plain
    attributes (which tracing reads as constants) and children (their names, types, sizes and whether they are the
    identity). Modules of the same structure, in one model or several, share one trace. A residual canonizer holds
    one; hold on to the composite (and so its canonizer) to keep the traces between attributions."""

    def __init__(self) -> None:
        self._rewrites: dict[tuple, Rewrite | TraceFailure | None] = {}

    def rewrite(self, module: torch.nn.Module) -> Rewrite | None:
        """:py:func:`rewrite`, made once per structure; raises :py:class:`TraceFailure` as it does."""
        key = structure(module)
        if key is None:
            return rewrite(module)
        if key not in self._rewrites:
            try:
                self._rewrites[key] = rewrite(module)
            except TraceFailure as failure:
                self._rewrites[key] = failure
        result = self._rewrites[key]
        if isinstance(result, TraceFailure):
            raise result
        return result


def structure(module: torch.nn.Module) -> tuple | None:
    """What a module's rewrite depends on, as a hashable key; None when a plain attribute cannot be hashed."""
    children = tuple((name, type(child), plain_attributes(child), leaf_count(child), is_identity(child))
                     for name, child in module.named_children())
    key = (type(module), module.training, plain_attributes(module), children, tuple(module._parameters),
           tuple(module._buffers))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def plain_attributes(module: torch.nn.Module) -> tuple:
    """A module's plain attributes (tracing reads them as constants; a child's too, as in ``self.conv.stride``),
    lists and dicts among them as tuples, so that a module holding a configuration dict (timm's ``pretrained_cfg``)
    still has a key."""
    return tuple(sorted((key, _frozen(value)) for key, value in vars(module).items()
                        if not key.startswith("_") and key != "forward"))


def _frozen(value):
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted(((str(key), _frozen(item)) for key, item in value.items()), key=lambda pair: pair[0]))
    return value


def rewrite(module: torch.nn.Module) -> Rewrite | None:
    """The rewritten forward of ``module``, or None when its forward has nothing to route. A forward with optional
    arguments (``mask=None``) is traced once for each of them given or None (code often branches on that), and the
    rewritten forward picks the trace that fits each call. Raises :py:class:`TraceFailure` when a trace fails: a
    call of that form would otherwise run unrouted (a decoder block traced without its skip, called with one, adds
    the skip by the gradient), so the module is routed while it runs instead, whatever the form."""
    names, variants = ChildNames(module), {}
    for absent in absences(module):
        try:
            graph, constants = trace(module, absent)
        except TraceFailure as error:
            given = sorted(set(optional_arguments(module)) - set(absent))
            raise TraceFailure(f"{error}" + (f" (with {', '.join(given)} given)" if given else "")) from None
        route_operations(graph, module, names)
        variants[absent] = (graph, constants)
    if not names.made:
        return None
    forwards = {absent: compile_forward(graph, module) for absent, (graph, _) in variants.items()}
    constants = {name: value for _, values in variants.values() for name, value in values.items()}
    single = list(forwards) == [frozenset()] and not flag_arguments(module)
    forward = next(iter(forwards.values())) if single else _Variants(module, forwards)
    return Rewrite(forward=forward, children=names.made, constants=constants)


class _Variants:
    """A rewritten forward with a trace for each set of absent optional arguments: each call bound to the forward's
    signature and run through the trace that fits (the module's own forward where none does)."""

    def __init__(self, module: torch.nn.Module, forwards: dict) -> None:
        self.signature = inspect.signature(type(module).forward)
        self.optional, self.flags, self.forwards = optional_arguments(module), flag_arguments(module), forwards

    def __call__(self, module, *args, **kwargs):
        bound = self.signature.bind(module, *args, **kwargs)
        bound.apply_defaults()
        absent = frozenset(name for name in self.optional if bound.arguments.get(name) is None)
        forward = self.forwards.get(absent)
        if forward is None or any(bound.arguments.get(name) != value for name, value in self.flags.items()):
            return type(module).forward(module, *args, **kwargs)
        return forward(*bound.args, **bound.kwargs)  # positional: a trace renames the arguments it fixed


def compile_forward(graph: torch.fx.Graph, module: torch.nn.Module) -> Callable:
    """The graph's code as a forward function of ``(self, *inputs)``."""
    graph.lint()
    code = graph.python_code(root_module="self")
    namespace = dict(code.globals)
    exec(compile(code.src, f"<forward of {type(module).__qualname__}, traced>", "exec"), namespace)  # noqa: S102
    return namespace["forward"]
