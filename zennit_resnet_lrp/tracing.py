"""Find residual additions, multiplicative gates and functional operations in a module's own forward by tracing it
with ``torch.fx``, and write a forward that routes them through explicit modules.

Each module is traced on its own, with every child a leaf, so that code which cannot be traced in one place (data-
dependent control flow, say) costs only that module. What is found:

- an addition of two tensors that both depend on the module's input (``a + b``, ``torch.add``, ``a += b``): a
  residual sum. The operand reached from the branch point through less computation is the skip; it is an identity
  skip when it is the branch point itself. Routed through :py:class:`~zennit_resnet_lrp.layer.ResidualSum`.
- a product of two such tensors where one factor comes from a sigmoid-like gate (through reshapes): routed through
  :py:class:`~zennit_resnet_lrp.layer.GatedProduct`.
- activations and average pools in functional form (``F.relu``, ``x.mean((2, 3))``, ``F.adaptive_avg_pool2d``,
  ``F.avg_pool2d``): routed through the equivalent modules, so that composites give them their rules.
"""
from __future__ import annotations

import inspect
import operator
import re
import types
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.fx
import torch.nn.functional as F

from .layer import FunctionalPool, GatedProduct, InputSize, ResidualSum

Node = torch.fx.Node

# binary operations by function or method -> "add" or "mul"
_BINARY = {operator.add: "add", operator.iadd: "add", torch.add: "add", "add": "add",
           operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", "mul": "mul"}
# operations that only move or reshape values: looked through when deciding whether a factor is a gate
_SHAPE_METHODS = {"view", "reshape", "expand", "expand_as", "unsqueeze", "squeeze", "flatten", "permute",
                  "contiguous", "transpose", "view_as", "reshape_as", "to", "type_as"}
_SHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.unsqueeze, torch.squeeze, torch.permute, torch.transpose}
_GATE_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, torch.softmax, F.softmax}
_GATE_METHODS = {"sigmoid", "sigmoid_", "softmax"}
_GATE_MODULES = (torch.nn.Sigmoid, torch.nn.Hardsigmoid, torch.nn.Softmax)
# functional activation -> the module that computes the same
_ACTIVATION_FUNCTIONS = {F.relu: torch.nn.ReLU, torch.relu: torch.nn.ReLU, F.relu_: torch.nn.ReLU,
                         torch.relu_: torch.nn.ReLU, F.relu6: torch.nn.ReLU6, F.silu: torch.nn.SiLU,
                         F.hardswish: torch.nn.Hardswish, F.gelu: torch.nn.GELU}
_ACTIVATION_METHODS = {"relu": torch.nn.ReLU, "relu_": torch.nn.ReLU}
_POOL_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_avg_pool1d, F.avg_pool2d, F.avg_pool1d, torch.mean}
_POOL_METHODS = {"mean": torch.mean}


class TraceFailure(Exception):
    """A module whose forward ``torch.fx`` cannot trace."""


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
    """

    forward: Callable
    children: dict[str, Callable[[], torch.nn.Module]] = field(default_factory=dict)

    def install(self, module: torch.nn.Module) -> list[str]:
        """Give ``module`` the new children and the new forward; return the children's names (to remove later)."""
        for name, make in self.children.items():
            module.add_module(name, make())
        module.__dict__["forward"] = types.MethodType(self.forward, module)
        return list(self.children)


class _OwnForwardTracer(torch.fx.Tracer):
    """Traces the root module's own forward only: every child is called as a leaf."""

    def is_leaf_module(self, module: torch.nn.Module, qualified_name: str) -> bool:
        return True


def traceable(module: torch.nn.Module) -> bool:
    """Whether ``module``'s forward is worth tracing: its own code, not torch's or zennit's (whose modules neither add
    branches nor multiply by gates), and not one of the explicit modules this package routes things through."""
    forward = type(module).forward
    origin = getattr(forward, "__module__", "") or ""
    return not origin.startswith(("torch.", "zennit.", __package__ + ".layer"))


def may_add_or_gate(module: torch.nn.Module) -> bool:
    """Whether the source of ``module``'s forward has an addition or a product at all (to warn only about untraced
    modules that could matter)."""
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return True
    body = source.split(":", 1)[-1]
    return bool(re.search(r"\+|\badd_?\(|\bmul_?\(|[^*\s(,]\s*\*\s*[^*\s]", body))


_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def rewrite(module: torch.nn.Module) -> Rewrite | None:
    """The rewritten forward of ``module``, or None when its forward has nothing to route.

    Cached per module while its class, training flag and children (the same objects) stay the same (tracing costs
    milliseconds, and composites canonize on every registration). Raises :py:class:`TraceFailure` when the forward
    cannot be traced.
    """
    key = (type(module), module.training,
           tuple((name, id(child), type(child)) for name, child in module.named_children()))
    cached = _CACHE.get(module)
    if cached is not None and cached[0] == key:
        if isinstance(cached[1], TraceFailure):
            raise cached[1]
        return cached[1]
    try:
        result = _rewrite(module)
    except TraceFailure as failure:
        _CACHE[module] = (key, failure)
        raise
    _CACHE[module] = (key, result)
    return result


def _rewrite(module: torch.nn.Module) -> Rewrite | None:
    try:
        graph = _OwnForwardTracer().trace(module)
    except Exception as error:  # tracing fails in many ways (TraceError, TypeError, NotImplementedError, ...)
        raise TraceFailure(f"{type(error).__name__}: {' '.join(str(error).split())[:200]}") from None
    nodes = list(graph.nodes)
    order = {node: index for index, node in enumerate(nodes)}
    ancestors: dict[Node, frozenset] = {}
    for node in nodes:
        ancestors[node] = frozenset({node}).union(*(ancestors[n] for n in node.all_input_nodes))
    dependent = {node for node in nodes if any(a.op == "placeholder" for a in ancestors[node])}
    sizes = {name: max(1, sum(1 for m in child.modules() if not list(m.children())))
             for name, child in module.named_modules() if name}
    identities = {name for name, child in module.named_modules() if name and (
        isinstance(child, torch.nn.Identity) or type(child) is torch.nn.Sequential and not len(child))}
    result = Rewrite(forward=None)
    taken = set(dict(module.named_children())) | set(dict(module.named_parameters(recurse=False))) \
        | set(dict(module.named_buffers(recurse=False))) | set(vars(module))

    def new_child(base: str, make: Callable[[], torch.nn.Module]) -> str:
        name, index = base, 0
        while name in taken:
            index += 1
            name = f"{base}_{index}"
        taken.add(name)
        result.children[name] = make
        return name

    def passes_through(node: Node) -> bool:  # nn.Identity, an empty nn.Sequential: the identity as a module
        return node.op == "call_module" and node.target in identities

    def cost(node: Node, branch: Node) -> int:
        weight = 0
        for item in ancestors[node] - ancestors[branch]:
            if item.op == "call_module" and not passes_through(item):
                weight += sizes.get(item.target, 1)
            elif item.op in ("call_function", "call_method"):
                weight += 1
        return weight

    for node in nodes:
        kind, operands = _binary(node)
        if kind is not None and all(o in dependent for o in operands):
            if kind == "add":
                common = ancestors[operands[0]] & ancestors[operands[1]]
                if not common:
                    continue
                branch = max(common, key=order.__getitem__)
                first, second = operands
                skip, residual = (first, second) if cost(first, branch) < cost(second, branch) else (second, first)
                plain = skip
                while passes_through(plain) and isinstance(plain.args[0], Node):
                    plain = plain.args[0]
                identity = plain is branch
                name = new_child("residual_sum", lambda identity=identity: ResidualSum(identity_skip=identity))
                with graph.inserting_before(node):
                    sum_module = graph.get_attr(name)
                    routed = graph.call_method("add", (sum_module, residual, skip))
            else:
                gates = [_is_gate(o, module) for o in operands]
                if gates.count(True) != 1:
                    continue
                gate, features = (operands[0], operands[1]) if gates[0] else (operands[1], operands[0])
                name = new_child("gated_product", GatedProduct)
                with graph.inserting_before(node):
                    routed = graph.call_module(name, (features, gate))
        else:
            made = _functional_module(node, dependent)
            if made is None:
                continue
            base, make = made
            name = new_child(base, make)
            with graph.inserting_before(node):
                routed = graph.call_module(name, (node.args[0],))
        # the routed node stands in for the original in every later decision
        ancestors[routed], order[routed] = ancestors[node] | {routed}, order[node]
        if node in dependent:
            dependent.add(routed)
        node.replace_all_uses_with(routed)
        graph.erase_node(node)
    if not result.children:
        return None
    graph.lint()
    code = graph.python_code(root_module="self")
    namespace = dict(code.globals)
    exec(compile(code.src, f"<forward of {type(module).__qualname__}, traced>", "exec"), namespace)  # noqa: S102
    result.forward = namespace["forward"]
    return result


def _binary(node: Node) -> tuple[str | None, tuple]:
    """``("add" or "mul", (a, b))`` for an addition or product of two tensors (no ``alpha``, no ``out``), else
    ``(None, ())``."""
    if node.op not in ("call_function", "call_method") or node.kwargs or len(node.args) != 2 \
            or not all(isinstance(operand, Node) for operand in node.args):
        return None, ()
    try:
        return _BINARY.get(node.target), node.args
    except TypeError:  # an unhashable target
        return None, ()


def _is_gate(node: Node, module: torch.nn.Module) -> bool:
    """Whether ``node`` is the output of a sigmoid-like gate, possibly reshaped."""
    while True:
        if node.op == "call_method" and node.target in _SHAPE_METHODS or \
                node.op == "call_function" and node.target in _SHAPE_FUNCTIONS:
            node = node.args[0]
            if not isinstance(node, Node):
                return False
            continue
        if node.op == "call_function":
            return node.target in _GATE_FUNCTIONS
        if node.op == "call_method":
            return node.target in _GATE_METHODS
        if node.op == "call_module":
            child = module.get_submodule(node.target)
            return isinstance(child, _GATE_MODULES) or "sigmoid" in type(child).__name__.lower() \
                or "gate" in type(child).__name__.lower()
        return False


def _functional_module(node: Node, dependent: set) -> tuple[str, Callable] | None:
    """``(name, factory)`` of the module that computes a functional activation or average pool, or None."""
    if node.op not in ("call_function", "call_method") or not node.args or node.args[0] not in dependent:
        return None
    source, rest = node.args[0], node.args[1:]
    if node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS:
        activation = _ACTIVATION_FUNCTIONS[node.target]
        return activation.__name__.lower(), activation
    if node.op == "call_method" and node.target in _ACTIVATION_METHODS:
        activation = _ACTIVATION_METHODS[node.target]
        return activation.__name__.lower(), activation
    function = node.target if node.op == "call_function" else _POOL_METHODS.get(node.target)
    if function not in _POOL_FUNCTIONS:
        return None
    if function is torch.mean and not rest and "dim" not in node.kwargs:
        return None  # the mean over everything, batch included: not a pool
    args = tuple(_argument(value, source) for value in rest)
    kwargs = {key: _argument(value, source) for key, value in node.kwargs.items()}
    if any(value is _VARIABLE for value in (*args, *kwargs.values())):
        return None
    return "pool", lambda: FunctionalPool(function, args, kwargs)


_VARIABLE = object()  # an argument computed at run time from something other than the input's size


def _argument(value, source: Node):
    """A constant argument as it is, the input's size along a dimension as :py:class:`InputSize`, else
    ``_VARIABLE``."""
    if isinstance(value, (tuple, list)):
        items = [_argument(item, source) for item in value]
        return _VARIABLE if any(item is _VARIABLE for item in items) else type(value)(items)
    if not isinstance(value, Node):
        return value
    # x.size(k), x.size()[k], x.shape[k]
    if value.op == "call_method" and value.target == "size" and value.args[0] is source and len(value.args) == 2:
        return InputSize(value.args[1])
    if value.op == "call_function" and value.target is operator.getitem and isinstance(value.args[1], int):
        holder = value.args[0]
        if isinstance(holder, Node) and holder.args and holder.args[0] is source and (
                holder.op == "call_method" and holder.target == "size" and len(holder.args) == 1
                or holder.op == "call_function" and holder.target is getattr and holder.args[1] == "shape"):
            return InputSize(value.args[1])
    return _VARIABLE
