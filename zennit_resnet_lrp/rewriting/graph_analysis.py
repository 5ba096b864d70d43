"""What the routing decisions read off a traced graph: which nodes depend on the module's input, what each is
computed from, whether a factor is a gate, whether a node reads only a size; and the insertion of a routing module in
place of a node."""
from __future__ import annotations

import operator
from typing import Callable, NamedTuple

import torch
import torch.fx
import torch.nn.functional as F

from .modules import InputSize
from .tracing import TraceFailure, child_of, is_identity, leaf_count, trace, traceable


Node = torch.fx.Node


class Route(NamedTuple):
    """How one operation is routed: through a new child named after ``base``, made by ``make``, called on
    ``operands`` (nodes of the graph or constants); for a sum, the operands' ``signs`` and the earlier sums it
    takes the place of (``merged``)."""

    base: str
    make: Callable[[], torch.nn.Module]
    operands: tuple
    signs: tuple = ()
    merged: tuple = ()


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
            if node.op == "placeholder" or not reads_size(node) and any(
                    item in self.dependent for item in node.all_input_nodes):
                self.dependent.add(node)
        self.sizes = {name: leaf_count(child) for name, child in module.named_modules() if name}
        self.identities = {name for name, child in module.named_modules() if name and is_identity(child)}
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


class ChildNames:
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


def insert(graph: torch.fx.Graph, node: Node, route: Route, names: ChildNames, analysis: Analysis) -> None:
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


# binary operations by function or method -> kind
_BINARY = {operator.add: "add", operator.iadd: "add", torch.add: "add", "add": "add", "add_": "add",
           operator.sub: "sub", operator.isub: "sub", torch.sub: "sub", "sub": "sub", "sub_": "sub",
           operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", "mul": "mul", "mul_": "mul",
           operator.truediv: "div", operator.itruediv: "div", torch.div: "div", "div": "div", "div_": "div"}


def binary_operands(node: Node) -> tuple[str | None, tuple]:
    """``(kind, (a, b))`` for an addition, subtraction, product or quotient of two operands (tensors or numbers; no
    ``alpha``, no ``out``, no rounding mode), else ``(None, ())``."""
    if node.op not in ("call_function", "call_method") or node.kwargs or len(node.args) != 2 \
            or not any(isinstance(operand, Node) for operand in node.args):
        return None, ()
    try:
        return _BINARY.get(node.target), node.args
    except TypeError:  # an unhashable target
        return None, ()


# operations that only move or reshape values: looked through when deciding whether a factor is a gate
SHAPE_METHODS = {"view", "reshape", "expand", "expand_as", "unsqueeze", "squeeze", "flatten", "permute",
                  "contiguous", "transpose", "view_as", "reshape_as", "to", "type_as"}


SHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.unsqueeze, torch.squeeze, torch.permute, torch.transpose}


GATE_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, torch.softmax, F.softmax}


GATE_METHODS = {"sigmoid", "sigmoid_", "softmax"}


_GATE_MODULES = (torch.nn.Sigmoid, torch.nn.Hardsigmoid, torch.nn.Softmax)


def is_gate(node: Node, module: torch.nn.Module, kinds: dict | None = None) -> bool:
    """Whether ``node`` is the output of a sigmoid-like gate or a softmax (values in [0, 1] by construction), possibly
    reshaped or dropped out: a function, a method, a gate module, a child whose own forward ends in one, or a node
    this rewrite routed through a softmax (``kinds``)."""
    node = _through_reshapes(node, module)
    if node is None:
        return False
    if kinds and kinds.get(node) == "softmax":
        return True
    if node.op == "call_function":
        return node.target in GATE_FUNCTIONS
    if node.op == "call_method":
        return node.target in GATE_METHODS
    if node.op == "call_module":
        try:
            child = module.get_submodule(node.target)
        except AttributeError:  # a child this rewrite adds (an activation, a pool): not a gate
            return False
        return is_gate_module(child)
    return False


def is_attention_weights(node: Node, module: torch.nn.Module, kinds: dict | None = None) -> bool:
    """Whether ``node`` holds attention weights: a softmax's (or gate's) output, or such an output mixed across heads
    by a linear child (EfficientFormer v2's "talking heads", a 1x1 convolution after the softmax)."""
    if is_gate(node, module, kinds):
        return True
    node = _through_reshapes(node, module)
    if node is None or node.op != "call_module" or not node.args or not isinstance(node.args[0], Node):
        return False
    child = child_of(module, node.target)
    return isinstance(child, _MIXING_MODULES) and is_gate(node.args[0], module, kinds)


_MIXING_MODULES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)


def is_gate_module(child: torch.nn.Module) -> bool:
    """Whether a module computes a gate: a sigmoid-like or softmax module (by type or name), or one whose own forward
    ends in one."""
    name = type(child).__name__.lower()
    return isinstance(child, _GATE_MODULES) or any(word in name for word in ("sigmoid", "gate", "softmax")) \
        or _ends_in_gate(child)


def _through_reshapes(node: Node, module: torch.nn.Module) -> Node | None:
    """``node`` with reshapes and passive children (dropout, identity) looked through; None where a reshape's input is
    not a node."""
    while True:
        if node.op == "call_method" and node.target in SHAPE_METHODS or \
                node.op == "call_function" and (node.target in SHAPE_FUNCTIONS or node.target in DROPOUTS):
            node = node.args[0]
        elif node.op == "call_module" and type(child_of(module, node.target)).__name__ in PASSIVE_CHILDREN:
            node = node.args[0]
        else:
            return node
        if not isinstance(node, Node):
            return None


PASSIVE_CHILDREN = {"Dropout", "Identity", "DropPath", "Dropout1d", "Dropout2d"}


DROPOUTS = {F.dropout, F.dropout1d, F.dropout2d, torch.dropout}


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
    return isinstance(output, Node) and is_gate(output, child)


_SIZE_METHODS = {"size", "dim", "numel", "ndimension", "get_device"}


_SIZE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda"}


def reads_size(node: Node) -> bool:
    """Whether ``node`` reads a tensor's size, dtype or device, not its values (``x.shape[0]``, ``x.size(1)``): what is
    computed from it does not depend on the input's values (a class token expanded to the batch's size)."""
    if node.op == "call_method":
        return node.target in _SIZE_METHODS
    return node.op == "call_function" and node.target is getattr and len(node.args) > 1 \
        and node.args[1] in _SIZE_ATTRIBUTES


def holds_node(value) -> bool:
    """Whether an argument is, or holds, a node of the graph (computed at run time)."""
    if isinstance(value, (tuple, list)):
        return any(holds_node(item) for item in value)
    if isinstance(value, dict):
        return any(holds_node(item) for item in value.values())
    return isinstance(value, Node)


VARIABLE = object()  # an argument computed at run time from something other than the input's size


def size_argument(value, source: Node):
    """A constant argument as it is, the input's size along a dimension as :py:class:`InputSize`, else
    ``VARIABLE``."""
    if isinstance(value, (tuple, list)):
        items = [size_argument(item, source) for item in value]
        return VARIABLE if any(item is VARIABLE for item in items) else type(value)(items)
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
    return VARIABLE
