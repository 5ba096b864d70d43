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

The steps, one function each: :py:func:`trace` the forward, :py:class:`Analysis` of its graph (what depends on the
input, what each node is computed from), one ``_route_*`` function per kind of operation deciding whether and how it
is routed, :py:func:`_insert` to put the routing module in the graph, and :py:func:`_compile` for the new forward.
"""
from __future__ import annotations

import inspect
import operator
import re
import types
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch
import torch.fx
import torch.nn.functional as F

from .layer import (
    SLOT, Attention, AttentionProduct, Elementwise, FunctionalNorm, FunctionalPool, GatedProduct, InputSize,
    MatrixProduct, Product, ResidualSum, Scale, SumOver, Token, TokenConcat,
)
from .types import activation_types, normalization_types

Node = torch.fx.Node

# binary operations by function or method -> kind
_BINARY = {operator.add: "add", operator.iadd: "add", torch.add: "add", "add": "add", "add_": "add",
           operator.sub: "sub", operator.isub: "sub", torch.sub: "sub", "sub": "sub", "sub_": "sub",
           operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", "mul": "mul", "mul_": "mul",
           operator.truediv: "div", operator.itruediv: "div", torch.div: "div", "div": "div", "div_": "div"}
# operations that only move or reshape values: looked through when deciding whether a factor is a gate
_SHAPE_METHODS = {"view", "reshape", "expand", "expand_as", "unsqueeze", "squeeze", "flatten", "permute",
                  "contiguous", "transpose", "view_as", "reshape_as", "to", "type_as"}
_SHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.unsqueeze, torch.squeeze, torch.permute, torch.transpose}
_GATE_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, torch.softmax, F.softmax}
_GATE_METHODS = {"sigmoid", "sigmoid_", "softmax"}
_GATE_MODULES = (torch.nn.Sigmoid, torch.nn.Hardsigmoid, torch.nn.Softmax)
# functional activation -> the module that computes the same (built with the call's further arguments)
_ACTIVATION_FUNCTIONS = {F.relu: torch.nn.ReLU, torch.relu: torch.nn.ReLU, F.relu_: torch.nn.ReLU,
                         torch.relu_: torch.nn.ReLU, F.relu6: torch.nn.ReLU6, F.silu: torch.nn.SiLU,
                         F.hardswish: torch.nn.Hardswish, F.gelu: torch.nn.GELU, F.leaky_relu: torch.nn.LeakyReLU,
                         F.elu: torch.nn.ELU, F.selu: torch.nn.SELU, F.celu: torch.nn.CELU, F.mish: torch.nn.Mish,
                         F.softplus: torch.nn.Softplus, F.hardtanh: torch.nn.Hardtanh, torch.tanh: torch.nn.Tanh,
                         F.tanh: torch.nn.Tanh}
_ACTIVATION_METHODS = {"relu": torch.nn.ReLU, "relu_": torch.nn.ReLU, "tanh": torch.nn.Tanh}
_POOL_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_avg_pool1d, F.avg_pool2d, F.avg_pool1d, torch.mean}
_POOL_METHODS = {"mean": torch.mean}
# elementwise functions with constant further arguments -> routed as activations (relevance passes)
_ELEMENTWISE_FUNCTIONS = {operator.pow: torch.pow, torch.pow: torch.pow, torch.square: torch.square,
                          torch.clamp: torch.clamp, torch.clamp_min: torch.clamp_min, torch.abs: torch.abs}
_ELEMENTWISE_METHODS = {"pow": torch.pow, "square": torch.square, "clamp": torch.clamp, "clamp_min": torch.clamp_min,
                        "abs": torch.abs}
# matrix products of two tensors -> einsum equation (None: a matrix product)
_MATRIX_FUNCTIONS = {operator.matmul: None, torch.matmul: None, torch.bmm: None}
_MATRIX_METHODS = {"matmul": None, "bmm": None}
_CONCATENATIONS = {torch.cat, torch.concat}
_NORM_FUNCTIONS = {F.layer_norm, F.group_norm, F.batch_norm, F.instance_norm, F.local_response_norm, F.normalize,
                   *((F.rms_norm,) if hasattr(F, "rms_norm") else ())}


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
            for name, make in self.children.items():
                module.add_module(name, make())
                added.append(name)
        except Exception as error:  # a name the module's own __setattr__ or add_module refuses
            for name in added:
                module._modules.pop(name, None)
            raise TraceFailure(f"could not add {name!r}: {type(error).__name__}: {error}") from None
        module.__dict__.update(self.constants)
        module.__dict__["forward"] = types.MethodType(self.forward, module)
        return added + list(self.constants)


class Route(NamedTuple):
    """How one operation is routed: through a new child named after ``base``, made by ``make``, called on
    ``operands`` (nodes of the graph or constants); for a sum, the operands' ``signs`` and the earlier sums it
    takes the place of (``merged``)."""

    base: str
    make: Callable[[], torch.nn.Module]
    operands: tuple
    signs: tuple = ()
    merged: tuple = ()


class _OwnForwardTracer(torch.fx.Tracer):
    """Traces the root module's own forward only: every child is called as a leaf."""

    def is_leaf_module(self, module: torch.nn.Module, qualified_name: str) -> bool:
        return True


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
    return not origin.startswith(("torch.", "zennit.", __package__ + ".layer")) and not isinstance(module, whole)


def may_add_or_gate(module: torch.nn.Module) -> bool:
    """Whether the source of ``module``'s class (its forward and the methods it calls) has an addition, a product, a
    concatenation or an attention at all (to warn only about untraced modules that could matter)."""
    try:
        source = "\n".join(inspect.getsource(function).split(":", 1)[-1] for name, function in vars(type(module)).items()
                           if inspect.isfunction(function) and name not in ("__init__", "extra_repr"))
    except (OSError, TypeError):
        return True
    return bool(re.search(r"\+|\badd_?\(|\bmul_?\(|[^*\s(,]\s*\*\s*[^*\s]|\bcat\(|@|attention|softmax", source))


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
    children = tuple((name, type(child), _plain(child), _size(child), _is_identity(child))
                     for name, child in module.named_children())
    key = (type(module), module.training, _plain(module), children, tuple(module._parameters),
           tuple(module._buffers))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _plain(module: torch.nn.Module) -> tuple:
    """A module's plain attributes (tracing reads them as constants; a child's too, as in ``self.conv.stride``)."""
    return tuple(sorted((key, value) for key, value in vars(module).items()
                        if not key.startswith("_") and key != "forward"))


def _size(module: torch.nn.Module) -> int:
    """The number of leaf modules in ``module`` (at least 1): the computation it stands for."""
    return max(1, sum(1 for child in module.modules() if not list(child.children())))


def _is_identity(module: torch.nn.Module) -> bool:
    """``nn.Identity`` or an empty ``nn.Sequential``: the identity written as a module."""
    return isinstance(module, torch.nn.Identity) or type(module) is torch.nn.Sequential and not len(module)


def rewrite(module: torch.nn.Module) -> Rewrite | None:
    """The rewritten forward of ``module``, or None when its forward has nothing to route. A forward with optional
    arguments (``mask=None``) is traced once for each of them given or None (code often branches on that), and the
    rewritten forward picks the trace that fits each call. Raises :py:class:`TraceFailure` when no trace succeeds."""
    names, variants, failure = _ChildNames(module), {}, None
    for absent in _absences(module):
        try:
            graph, constants = trace(module, absent)
        except TraceFailure as error:
            failure = failure or error
            continue
        _route(graph, module, names)
        variants[absent] = (graph, constants)
    if not variants:
        raise failure
    if not names.made:
        return None
    forwards = {absent: _compile(graph, module) for absent, (graph, _) in variants.items()}
    constants = {name: value for _, values in variants.values() for name, value in values.items()}
    single = list(forwards) == [frozenset()] and not _flags(module)
    forward = next(iter(forwards.values())) if single else _Variants(module, forwards)
    return Rewrite(forward=forward, children=names.made, constants=constants)


def _route(graph: torch.fx.Graph, module: torch.nn.Module, names: _ChildNames) -> None:
    """Route every operation of ``graph`` that needs a module of its own."""
    analysis = Analysis(module, graph)
    for node in list(graph.nodes):
        route = _route_sum(node, analysis) or _route_product(node, analysis) or _route_attention(node, analysis) \
            or _route_function(node, analysis)
        if route is not None:
            _insert(graph, node, route, names, analysis)
        elif node.op == "call_module":
            _mark_tokens(graph, node, names, analysis)
        elif node.op == "call_function" and node.target is F.linear:
            _linear_through_child(graph, node, analysis)


def _linear_through_child(graph: torch.fx.Graph, node: Node, analysis: Analysis) -> None:
    """``F.linear(x, self.layer.weight, bias)`` with a linear child's own weight (BEiT's and others' attention add a
    bias of their own): the child called on ``x``, its own bias swapped for the given one as constants, so that the
    child's rule applies and the output stays the same."""
    args = dict(zip(("input", "weight", "bias"), node.args), **node.kwargs)
    weight, source = args.get("weight"), args.get("input")
    if not (isinstance(weight, Node) and weight.op == "get_attr" and weight.target.endswith(".weight")
            and isinstance(source, Node) and source in analysis.dependent):
        return
    owner = weight.target[:-len(".weight")]
    child = _child(analysis.module, owner)
    if not isinstance(child, torch.nn.Linear):
        return
    bias = args.get("bias")
    with graph.inserting_before(node):
        routed = graph.call_module(owner, (source,))
        if child.bias is not None:
            routed = graph.call_function(operator.sub, (routed, graph.get_attr(f"{owner}.bias")))
        if bias is not None:
            routed = graph.call_function(operator.add, (routed, bias))
    analysis.replace(node, routed)
    node.replace_all_uses_with(routed)
    graph.erase_node(node)


def _mark_tokens(graph: torch.fx.Graph, node: Node, names: _ChildNames, analysis: Analysis) -> None:
    """A child called with a tensor of the model's own besides the input-dependent ones (a class token handed to a
    block): that argument through a :py:class:`Token`, which reports the relevance it takes."""
    if not any(isinstance(arg, Node) and arg in analysis.dependent for arg in node.args):
        return
    args = list(node.args)
    for index, arg in enumerate(args):
        if isinstance(arg, Node) and arg not in analysis.dependent and not _reads_size(arg) \
                and any(item.op == "get_attr" for item in analysis.ancestors[arg]):
            name = names.new("token", Token)
            with graph.inserting_before(node):
                args[index] = graph.call_module(name, (arg,))
            analysis.ancestors[args[index]] = analysis.ancestors[arg] | {args[index]}
    node.args = tuple(args)


def _optional(module: torch.nn.Module) -> list[str]:
    """The forward's parameters that default to None (at most three: each doubles the traces)."""
    parameters = inspect.signature(type(module).forward).parameters.values()
    return [p.name for p in parameters if p.default is None
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)][:3]


def _flags(module: torch.nn.Module) -> dict:
    """The forward's parameters that default to a flag (``pre_logits=False``, ``is_causal=False``): traced at their
    defaults (code branches on them), the module's own forward run where a call gives another value."""
    parameters = inspect.signature(type(module).forward).parameters.values()
    return {p.name: p.default for p in parameters if isinstance(p.default, (bool, int, str)) and p.default is not None
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def _absences(module: torch.nn.Module) -> list[frozenset]:
    """Each set of the optional arguments that a call may leave None, all given first."""
    optional = _optional(module)
    return [frozenset(name for bit, name in enumerate(optional) if mask >> bit & 1)
            for mask in range(2 ** len(optional))]


class _Variants:
    """A rewritten forward with a trace for each set of absent optional arguments: each call bound to the forward's
    signature and run through the trace that fits (the module's own forward where none does)."""

    def __init__(self, module: torch.nn.Module, forwards: dict) -> None:
        self.signature = inspect.signature(type(module).forward)
        self.optional, self.flags, self.forwards = _optional(module), _flags(module), forwards

    def __call__(self, module, *args, **kwargs):
        bound = self.signature.bind(module, *args, **kwargs)
        bound.apply_defaults()
        absent = frozenset(name for name in self.optional if bound.arguments.get(name) is None)
        forward = self.forwards.get(absent)
        if forward is None or any(bound.arguments.get(name) != value for name, value in self.flags.items()):
            return type(module).forward(module, *args, **kwargs)
        return forward(*bound.args, **bound.kwargs)  # positional: a trace renames the arguments it fixed


def trace(module: torch.nn.Module, absent: frozenset = frozenset()) -> tuple[torch.fx.Graph, dict]:
    """The graph of ``module``'s own forward, children as leaves, with the optional arguments in ``absent`` fixed to
    None and its flags to their defaults; and the tensor constants it reads (which ``torch.fx`` puts on the module while tracing: taken off again).
    Raises :py:class:`TraceFailure`."""
    before = set(vars(module))
    try:
        graph = _OwnForwardTracer().trace(module, concrete_args={**_flags(module), **{name: None for name in absent}}
                                          or None)
    except Exception as error:  # tracing fails in many ways (TraceError, TypeError, NotImplementedError, ...)
        raise TraceFailure(f"{type(error).__name__}: {' '.join(str(error).split())[:200]}") from None
    finally:
        added = {key: module.__dict__.pop(key) for key in set(vars(module)) - before}
    return graph, added


class Analysis:
    """What the routing decisions read off a traced graph: each node's position and ancestors (itself included),
    which nodes depend on the module's input, and how much computation each child module stands for."""

    def __init__(self, module: torch.nn.Module, graph: torch.fx.Graph) -> None:
        self.module = module
        self.order: dict[Node, int] = {}
        self.ancestors: dict[Node, frozenset] = {}
        for index, node in enumerate(graph.nodes):
            self.order[node] = index
            self.ancestors[node] = frozenset({node}).union(*(self.ancestors[n] for n in node.all_input_nodes))
        self.dependent: set[Node] = set()  # nodes whose values (not just sizes) come from the module's inputs
        for node in graph.nodes:
            if node.op == "placeholder" or not _reads_size(node) and any(
                    item in self.dependent for item in node.all_input_nodes):
                self.dependent.add(node)
        self.sizes = {name: _size(child) for name, child in module.named_modules() if name}
        self.identities = {name for name, child in module.named_modules() if name and _is_identity(child)}
        self.sums: dict[Node, tuple[str, tuple, tuple]] = {}  # routed sum -> (child name, operands, signs)
        self.kinds: dict[Node, str] = {}  # routed node -> what it was routed through (its child's base name)

    def passes_through(self, node: Node) -> bool:
        """Whether ``node`` calls a child that is the identity."""
        return node.op == "call_module" and node.target in self.identities

    def cost(self, node: Node, branch: Node | None) -> int:
        """The computation between ``branch`` (None: the module's inputs) and ``node``: leaf modules (identities free)
        and operations."""
        weight = 0
        for item in self.ancestors[node] - (self.ancestors[branch] if branch is not None else frozenset()):
            if item.op == "call_module" and not self.passes_through(item):
                weight += self.sizes.get(item.target, 1)
            elif item.op in ("call_function", "call_method"):
                weight += 1
        return weight

    def plain(self, node: Node) -> Node:
        """``node`` with calls of identity children looked through."""
        while self.passes_through(node) and isinstance(node.args[0], Node):
            node = node.args[0]
        return node

    def replace(self, node: Node, routed: Node) -> None:
        """``routed`` stands in for ``node`` in every later decision."""
        self.ancestors[routed], self.order[routed] = self.ancestors[node] | {routed}, self.order[node]
        if node in self.dependent:
            self.dependent.add(routed)


class _ChildNames:
    """Names for the children a rewrite adds, unused by anything the module has (children, parameters, buffers,
    instance and class attributes), and the factory of each."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.made: dict[str, Callable[[], torch.nn.Module]] = {}

    def new(self, base: str, make: Callable[[], torch.nn.Module]) -> str:
        name, index = base, 0
        while name in self.made or hasattr(self.module, name):
            index += 1
            name = f"{base}_{index}"
        self.made[name] = make
        return name


def _insert(graph: torch.fx.Graph, node: Node, route: Route, names: _ChildNames, analysis: Analysis) -> None:
    """Call a new child instead of ``node``; a sum whose operands include earlier sums used by it alone takes their
    place (one sum of all the operands)."""
    for merged in route.merged:
        name, _, _ = analysis.sums.pop(merged)
        names.made.pop(name)
    name = names.new(route.base, route.make)
    with graph.inserting_before(node):
        routed = graph.call_module(name, route.operands)
    analysis.replace(node, routed)
    node.replace_all_uses_with(routed)
    graph.erase_node(node)
    for merged in route.merged:
        graph.erase_node(merged)
    analysis.kinds[routed] = route.base
    if route.base == "residual_sum":
        analysis.sums[routed] = (name, route.operands, route.signs)


def _compile(graph: torch.fx.Graph, module: torch.nn.Module) -> Callable:
    """The graph's code as a forward function of ``(self, *inputs)``."""
    graph.lint()
    code = graph.python_code(root_module="self")
    namespace = dict(code.globals)
    exec(compile(code.src, f"<forward of {type(module).__qualname__}, traced>", "exec"), namespace)  # noqa: S102
    return namespace["forward"]


def _binary(node: Node) -> tuple[str | None, tuple]:
    """``(kind, (a, b))`` for an addition, subtraction, product or quotient of two operands (tensors or numbers; no
    ``alpha``, no ``out``, no rounding mode), else ``(None, ())``."""
    if node.op not in ("call_function", "call_method") or node.kwargs or len(node.args) != 2 \
            or not any(isinstance(operand, Node) for operand in node.args):
        return None, ()
    try:
        return _BINARY.get(node.target), node.args
    except TypeError:  # an unhashable target
        return None, ()


def _route_sum(node: Node, analysis: Analysis) -> Route | None:
    """A sum or difference of input-dependent tensors, merged with the sums among its operands that feed it alone:
    a residual sum whose skip is the operand reached from the branch point (the latest node all operands come from;
    the module's inputs when they come from different ones, as a shortcut passed in as an argument) through the
    least computation, an identity skip when it is the branch point (or an input) itself."""
    kind, pair = _binary(node)
    if kind not in ("add", "sub") or not all(isinstance(o, Node) and o in analysis.dependent for o in pair):
        return None
    operands, signs, merged = [], [], []
    for operand, sign in zip(pair, (1, 1 if kind == "add" else -1)):
        inner = analysis.sums.get(operand)
        if inner is not None and len(operand.users) == 1:
            operands += inner[1]
            signs += [sign * s for s in inner[2]]
            merged.append(operand)
        else:
            operands.append(operand)
            signs.append(sign)
    common = frozenset.intersection(*(analysis.ancestors[o] for o in operands))
    branch = max(common, key=analysis.order.__getitem__) if common else None
    skip = min(range(len(operands)), key=lambda i: analysis.cost(operands[i], branch))
    plain = analysis.plain(operands[skip])
    identity = plain is branch if branch is not None else plain.op == "placeholder"
    signs = tuple(signs)
    return Route("residual_sum", lambda: ResidualSum(identity_skip=identity, skip=skip, signs=signs),
                 tuple(operands), signs, tuple(merged))


def _route_product(node: Node, analysis: Analysis) -> Route | None:
    """A product or quotient with an input-dependent tensor: times a gate (a sigmoid-like factor), features times
    gate; times another input-dependent tensor, a product of both; times or by anything else (a parameter, a buffer,
    a number; a quotient's input-dependent divisor is held constant, as a normalisation's), a scale."""
    kind, operands = _binary(node)
    if kind not in ("mul", "div"):
        return None
    first, second = operands
    dependent = [isinstance(o, Node) and o in analysis.dependent for o in (first, second)]
    if kind == "div":
        return Route("scale", lambda: Scale(divide=True), (first, second)) if dependent[0] else None
    if dependent == [True, True]:
        gates = [_is_gate(operand, analysis.module, analysis.kinds) for operand in (first, second)]
        if gates.count(True) == 1:
            gate, features = (first, second) if gates[0] else (second, first)
            return Route("gated_product", GatedProduct, (features, gate))
        return Route("product", Product, (first, second))
    if dependent == [False, False]:
        return None
    scaled, factor = (first, second) if dependent[0] else (second, first)
    return Route("scale", Scale, (scaled, factor))


def _route_attention(node: Node, analysis: Analysis) -> Route | None:
    """What attention is made of: a matrix product (``@``, ``matmul``, ``bmm``, ``einsum``) of two input-dependent
    tensors (attention weights and values when one of them is a softmax's output: given first, the equation
    reordered), fused scaled dot-product attention (decomposed), a softmax, and a concatenation of input-dependent
    tensors with tokens of the model's own (a class token)."""
    if node.op not in ("call_function", "call_method"):
        return None
    if node.op == "call_function" and node.target is F.scaled_dot_product_attention:
        return _route_fused_attention(node, analysis)
    if node.op == "call_function" and node.target in _CONCATENATIONS:
        return _route_tokens(node, analysis)
    if node.target in ("softmax",) or node.target in (torch.softmax, F.softmax):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if node.args and node.args[0] in analysis.dependent and isinstance(dim, int) and len(node.args) <= 2 \
                and set(node.kwargs) <= {"dim"}:
            return Route("softmax", lambda: torch.nn.Softmax(dim), (node.args[0],))
        return None
    equation, operands = _matrix_operands(node)
    if operands is None or not all(isinstance(o, Node) and o in analysis.dependent for o in operands):
        return None
    gates = [_is_gate(operand, analysis.module, analysis.kinds) for operand in operands]
    if gates[0] or gates[1] and equation is not None:
        if not gates[0]:
            operands, equation = operands[::-1], _swapped(equation)
        return Route("attention_product", lambda: AttentionProduct(equation), operands)
    return Route("matrix_product", lambda: MatrixProduct(equation), operands)


def _matrix_operands(node: Node) -> tuple[str | None, tuple | None]:
    """``(einsum equation or None, (a, b))`` of a product of two tensors, else ``(None, None)``."""
    if node.kwargs:
        return None, None
    if node.op == "call_function" and node.target is torch.einsum and len(node.args) == 3 \
            and isinstance(node.args[0], str) and node.args[0].count(",") == 1 and "->" in node.args[0]:
        return node.args[0].replace(" ", ""), tuple(node.args[1:])
    table = _MATRIX_FUNCTIONS if node.op == "call_function" else _MATRIX_METHODS
    try:
        if node.target in table and len(node.args) == 2:
            return None, tuple(node.args)
    except TypeError:  # an unhashable target
        pass
    return None, None


def _swapped(equation: str) -> str:
    """An einsum equation of two operands with the operands' order reversed."""
    inputs, output = equation.split("->")
    first, second = inputs.split(",")
    return f"{second},{first}->{output}"


# F.scaled_dot_product_attention's parameters after query, key and value, with their defaults
_ATTENTION_PARAMETERS = (("attn_mask", None), ("dropout_p", 0.0), ("is_causal", False), ("scale", None),
                         ("enable_gqa", False))


def _route_fused_attention(node: Node, analysis: Analysis) -> Route | None:
    """``F.scaled_dot_product_attention(q, k, v, ...)``: through an :py:class:`Attention` that decomposes it."""
    if len(node.args) < 3 or not all(isinstance(o, Node) for o in node.args[:3]) \
            or set(node.kwargs) - {name for name, _ in _ATTENTION_PARAMETERS}:
        return None
    rest = list(node.args[3:])
    arguments = [rest[index] if index < len(rest) else node.kwargs.get(name, default)
                 for index, (name, default) in enumerate(_ATTENTION_PARAMETERS)]
    return Route("attention", Attention, (*node.args[:3], *arguments))


def _route_tokens(node: Node, analysis: Analysis) -> Route | None:
    """``torch.cat([...], dim)`` of input-dependent tensors and tensors of the model's own (tokens)."""
    operands = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(operands, (list, tuple)) or not all(isinstance(o, Node) for o in operands) \
            or not isinstance(dim, int):
        return None
    constant = tuple(o not in analysis.dependent for o in operands)
    if all(constant) or not any(constant):
        return None
    return Route("tokens", lambda: TokenConcat(dim, constant), tuple(operands))


def _route_function(node: Node, analysis: Analysis) -> Route | None:
    """A functional activation, average pool or normalisation of an input-dependent tensor: the module that computes
    the same."""
    if node.op not in ("call_function", "call_method") or not node.args or node.args[0] not in analysis.dependent:
        return None
    if node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS:
        activation = _ACTIVATION_FUNCTIONS[node.target]
    elif node.op == "call_method" and node.target in _ACTIVATION_METHODS:
        activation = _ACTIVATION_METHODS[node.target]
    elif node.op == "call_function" and node.target in _NORM_FUNCTIONS:
        return _route_norm(node)
    elif node.op == "call_function" and node.target is torch.sum or node.op == "call_method" and node.target == "sum":
        return _route_reduction(node)
    elif node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS \
            or node.op == "call_method" and node.target in _ELEMENTWISE_METHODS:
        return _route_elementwise(node)
    else:
        return _route_pool(node)
    args, kwargs = node.args[1:], {key: value for key, value in node.kwargs.items() if key != "inplace"}
    if any(isinstance(value, Node) for value in (*args, *kwargs.values())):
        return None
    return Route(activation.__name__.lower(), lambda: activation(*args, **kwargs), (node.args[0],))


def _route_reduction(node: Node) -> Route | None:
    """A sum over given dimensions (not over everything: that is a scalar, no classifier's output)."""
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if dim is None or _holds_node(dim) or _holds_node(keepdim):
        return None
    return Route("sum", lambda: SumOver(dim, keepdim), (node.args[0],))


def _route_elementwise(node: Node) -> Route | None:
    """An elementwise function whose further arguments are constants (``x ** 2``, ``x.clamp(min=0)``)."""
    function = (_ELEMENTWISE_FUNCTIONS if node.op == "call_function" else _ELEMENTWISE_METHODS)[node.target]
    args, kwargs = node.args[1:], dict(node.kwargs)
    if any(isinstance(value, Node) for value in (*args, *kwargs.values())):
        return None
    return Route("elementwise", lambda: Elementwise(function, args, kwargs), (node.args[0],))


def _route_norm(node: Node) -> Route | None:
    """A functional normalisation, its arguments bound to its parameters in order: those computed in the forward
    (weight, bias, statistics, a shape read off a tensor) become the module's further inputs, the constants stay in its
    template."""
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):  # no signature to read, or a call it does not fit
        return None
    bound.apply_defaults()
    positional = [value for name, value in bound.arguments.items()
                  if bound.signature.parameters[name].kind is not inspect.Parameter.KEYWORD_ONLY][1:]
    keywords = {name: value for name, value in bound.arguments.items()
                if bound.signature.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY}
    if any(_holds_node(value) for value in keywords.values()):
        return None
    template = tuple(SLOT if _holds_node(value) else value for value in positional)
    tensors = tuple(value for value in positional if _holds_node(value))  # computed at run time: passed in
    function = node.target
    return Route("norm", lambda: FunctionalNorm(function, template, keywords), (node.args[0], *tensors))


def _route_pool(node: Node) -> Route | None:
    """An average pool in functional form whose arguments are constants or sizes of its input."""
    source, rest = node.args[0], node.args[1:]
    function = node.target if node.op == "call_function" else _POOL_METHODS.get(node.target)
    if function not in _POOL_FUNCTIONS:
        return None
    if function is torch.mean and not rest and "dim" not in node.kwargs:
        return None  # the mean over everything, batch included: not a pool
    args = tuple(_argument(value, source) for value in rest)
    kwargs = {key: _argument(value, source) for key, value in node.kwargs.items()}
    if any(value is _VARIABLE for value in (*args, *kwargs.values())):
        return None
    return Route("pool", lambda: FunctionalPool(function, args, kwargs), (source,))


def _is_gate(node: Node, module: torch.nn.Module, kinds: dict | None = None) -> bool:
    """Whether ``node`` is the output of a sigmoid-like gate or a softmax (values in [0, 1] by construction), possibly
    reshaped or dropped out: a function, a method, a gate module, a child whose own forward ends in one, or a node
    this rewrite routed through a softmax (``kinds``)."""
    node = _through_reshapes(node, module)
    if node is None:
        return False
    if kinds and kinds.get(node) == "softmax":
        return True
    if node.op == "call_function":
        return node.target in _GATE_FUNCTIONS
    if node.op == "call_method":
        return node.target in _GATE_METHODS
    if node.op == "call_module":
        try:
            child = module.get_submodule(node.target)
        except AttributeError:  # a child this rewrite adds (an activation, a pool): not a gate
            return False
        name = type(child).__name__.lower()
        return isinstance(child, _GATE_MODULES) or any(word in name for word in ("sigmoid", "gate", "softmax")) \
            or _ends_in_gate(child)
    return False


def _through_reshapes(node: Node, module: torch.nn.Module) -> Node | None:
    """``node`` with reshapes and passive children (dropout, identity) looked through; None where a reshape's input is
    not a node."""
    while True:
        if node.op == "call_method" and node.target in _SHAPE_METHODS or \
                node.op == "call_function" and (node.target in _SHAPE_FUNCTIONS or node.target in _DROPOUTS):
            node = node.args[0]
        elif node.op == "call_module" and type(_child(module, node.target)).__name__ in _PASSIVE_CHILDREN:
            node = node.args[0]
        else:
            return node
        if not isinstance(node, Node):
            return None


_PASSIVE_CHILDREN = {"Dropout", "Identity", "DropPath", "Dropout1d", "Dropout2d"}
_DROPOUTS = {F.dropout, F.dropout1d, F.dropout2d, torch.dropout}


def _child(module: torch.nn.Module, target: str) -> torch.nn.Module | None:
    try:
        return module.get_submodule(target)
    except AttributeError:
        return None


def _ends_in_gate(child: torch.nn.Module) -> bool:
    """Whether a child module's own forward returns a gate's output (selective kernels' and split attention's
    softmax over paths, computed in a module of their own)."""
    if not traceable(child):
        return False
    try:
        graph, _ = trace(child)
    except TraceFailure:
        return False
    output = next(node for node in graph.nodes if node.op == "output").args[0]
    return isinstance(output, Node) and _is_gate(output, child)


_SIZE_METHODS = {"size", "dim", "numel", "ndimension", "get_device"}
_SIZE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda"}


def _reads_size(node: Node) -> bool:
    """Whether ``node`` reads a tensor's size, dtype or device, not its values (``x.shape[0]``, ``x.size(1)``): what is
    computed from it does not depend on the input's values (a class token expanded to the batch's size)."""
    if node.op == "call_method":
        return node.target in _SIZE_METHODS
    return node.op == "call_function" and node.target is getattr and len(node.args) > 1 \
        and node.args[1] in _SIZE_ATTRIBUTES


def _holds_node(value) -> bool:
    """Whether an argument is, or holds, a node of the graph (computed at run time)."""
    if isinstance(value, (tuple, list)):
        return any(_holds_node(item) for item in value)
    if isinstance(value, dict):
        return any(_holds_node(item) for item in value.values())
    return isinstance(value, Node)


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
