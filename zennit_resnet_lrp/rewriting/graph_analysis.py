"""What the routing decisions read off a traced graph: which nodes depend on the module's input, what each is
computed from, whether a factor is a gate, whether a node reads only a size; and the insertion of a routing module in
place of a node."""
from __future__ import annotations

import operator
from typing import Callable

import torch
import torch.fx

from .modules import InputSize
from .routes import VARIABLE, Facts, Route
from .tracing import TraceFailure, child_of, is_identity, leaf_count, trace, traceable
from .vocabulary import GATE_MODULES, PASSIVE_CHILDREN, keeps_gate, makes_gate, reshapes_only


Node = torch.fx.Node


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


class TracedFacts(Facts):
    """What a traced graph tells of an operation's arguments, for :py:func:`~.operations.classify`."""

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis

    def dependent(self, value) -> bool:
        return isinstance(value, Node) and value in self.analysis.dependent

    def computed(self, value) -> bool:
        return holds_node(value)

    def gate(self, value) -> bool:
        analysis = self.analysis
        return isinstance(value, Node) and is_gate(value, analysis.module, analysis.kinds, analysis.dependent)

    def attention_weights(self, value) -> bool:
        analysis = self.analysis
        return isinstance(value, Node) and is_attention_weights(value, analysis.module, analysis.kinds,
                                                                analysis.dependent)

    def size_argument(self, value, source):
        return size_argument(value, source)

    def sum_operands(self, value) -> tuple[tuple, tuple] | None:
        inner = self.analysis.sums.get(value)
        return None if inner is None or len(value.users) != 1 else (inner[1], inner[2])

    def skip(self, operands: tuple) -> tuple[int, bool]:
        """The operand reached from the branch point (the latest node all operands come from; the module's inputs
        when they come from different ones, as a shortcut passed in as an argument) through the least computation;
        an identity skip when it is the branch point (or an input) itself."""
        analysis = self.analysis
        common = frozenset.intersection(*(analysis.ancestors[o] for o in operands))
        branch = max(common, key=analysis.order.__getitem__) if common else None
        skip = min(range(len(operands)), key=lambda i: analysis.cost(operands[i], branch))
        plain = analysis.plain(operands[skip])
        return skip, (plain is branch if branch is not None else plain.op == "placeholder")


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


# what a routed node that was a gate is recorded as (in ``Analysis.kinds``)
GATE = "gate"


def insert(graph: torch.fx.Graph, node: Node, route: Route, names: ChildNames, analysis: Analysis) -> None:
    """Call a new child instead of ``node`` (its operands brought into the layout the route names and back); a sum
    whose operands include earlier sums used by it alone takes their place (one sum of all the operands)."""
    # a gate stays one through the module routing it (a quotient of norms, ``g / 2``): what uses it still sees a gate
    was_gate = is_gate(node, analysis.module, analysis.kinds, analysis.dependent)
    for merged in route.merged:
        name, _, _ = analysis.sums.pop(merged)
        names.made.pop(name)
    name = names.new(route.base, route.make)
    with graph.inserting_before(node):
        operands = route.operands
        if route.layout is not None:
            moved = graph.call_function(route.layout[0], operands)
            operands = tuple(graph.call_function(operator.getitem, (moved, index)) for index in range(len(operands)))
        routed = graph.call_module(name, operands)
        if route.layout is not None:
            routed = graph.call_function(route.layout[1], (routed, *route.operands))
    analysis.replace(node, routed)
    node.replace_all_uses_with(routed)
    graph.erase_node(node)
    for merged in route.merged:
        graph.erase_node(merged)
    analysis.kinds[routed] = GATE if was_gate and route.base != "softmax" else route.base
    if route.base == "residual_sum":
        analysis.sums[routed] = (name, route.operands, route.signs)


def is_gate(node: Node, module: torch.nn.Module, kinds: dict | None = None, dependent: set | None = None) -> bool:
    """Whether ``node`` is a gate (:py:mod:`.vocabulary`): the output of a gate function, method or module, of a child
    whose own forward ends in one, of a node this rewrite routed through a softmax (``kinds``), or of an operation that
    keeps gates whose input-dependent operands (``dependent``; every node where None) are all gates."""
    if kinds and kinds.get(node) in ("softmax", GATE):
        return True
    if node.op == "call_module":
        child = child_of(module, node.target)
        if child is None:  # a child this rewrite adds (an activation, a pool): not a gate
            return False
        if type(child).__name__ in PASSIVE_CHILDREN:
            return isinstance(node.args[0], Node) and is_gate(node.args[0], module, kinds, dependent)
        return is_gate_module(child)
    if node.op not in ("call_function", "call_method"):
        return False
    if makes_gate(node.op, node.target):
        return True
    if not keeps_gate(node.op, node.target):
        return False
    operands = node.args[:1] if reshapes_only(node.op, node.target) else node.args
    operands = [arg for arg in operands if isinstance(arg, Node)
                and (arg in dependent if dependent is not None else arg.op != "get_attr")]
    return bool(operands) and all(is_gate(arg, module, kinds, dependent) for arg in operands)


def is_attention_weights(node: Node, module: torch.nn.Module, kinds: dict | None = None,
                         dependent: set | None = None) -> bool:
    """Whether ``node`` holds attention weights: a gate's output, or one mixed across heads by a linear child
    (EfficientFormer v2's "talking heads", a 1x1 convolution after the softmax)."""
    if is_gate(node, module, kinds, dependent):
        return True
    node = _through_moves(node, module)  # CaiT's talking heads: dropout and permutes after the mixing
    if node is None or node.op != "call_module" or not node.args or not isinstance(node.args[0], Node):
        return False
    return isinstance(child_of(module, node.target), _MIXING_MODULES) and is_gate(node.args[0], module, kinds,
                                                                                   dependent)


def _through_moves(node: Node, module: torch.nn.Module) -> Node | None:
    """``node`` with the operations that only move its values (reshapes, indexing, dropout, passive children) looked
    through; None where what they move is not a node."""
    while node.op in ("call_function", "call_method") and reshapes_only(node.op, node.target) or \
            node.op == "call_module" and type(child_of(module, node.target)).__name__ in PASSIVE_CHILDREN:
        node = node.args[0] if node.args else None
        if not isinstance(node, Node):
            return None
    return node


_MIXING_MODULES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)


def is_gate_module(child: torch.nn.Module) -> bool:
    """Whether a module computes a gate: a sigmoid-like or softmax module (by type or name), or one whose own forward
    ends in one."""
    name = type(child).__name__.lower()
    return isinstance(child, GATE_MODULES) or any(word in name for word in ("sigmoid", "gate", "softmax")) \
        or _ends_in_gate(child)


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
