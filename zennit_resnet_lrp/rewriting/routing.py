"""The traced path: every operation of a traced forward that needs a module of its own is routed through the one
:py:func:`~.operations.classify` names (what an operation is is decided there, for the run-time path too); besides,
tokens of the model's own handed to a child, and a linear child's weight or another matrix of the model's own used
functionally (``F.linear``, ``x @ W``), which need the graph itself rewritten. A forward that calls a function
hidden from ``torch.fx`` for what it writes into its arguments is not routed from its trace (a
:py:class:`~.tracing.TraceFailure`: it is routed while it runs, where those writes are seen)."""
from __future__ import annotations

import functools
import operator
import types

import torch
import torch.fx
import torch.nn.functional as F

from .graph_analysis import Analysis, ChildNames, Node, TracedFacts, insert, reads_size
from .modules import Token, linear_child
from .operations import classify, matrix_operands
from .tracing import TraceFailure, child_of


def route_operations(graph: torch.fx.Graph, module: torch.nn.Module, names: ChildNames) -> None:
    """Route every operation of ``graph`` that needs a module of its own."""
    analysis = Analysis(module, graph)
    _refuse_hidden_writes(graph, analysis)
    facts = TracedFacts(analysis)
    for node in list(graph.nodes):
        route = classify(node.op, node.target, node.args, dict(node.kwargs), facts)
        if route is not None:
            insert(graph, node, route, names, analysis)
        elif node.op == "call_module":
            _mark_tokens(graph, node, names, analysis)
        elif node.op == "call_function" and node.target is F.linear:
            _linear_through_child(graph, node, analysis, names)
        elif matrix_operands(node.op, node.target, node.args, dict(node.kwargs)) != (None, None):
            _matrix_product_with_own_matrix(graph, node, analysis, names)


def _refuse_hidden_writes(graph: torch.fx.Graph, analysis: Analysis) -> None:
    """Raise :py:class:`TraceFailure` where the forward calls a function hidden from ``torch.fx`` (``torch.fx.wrap``)
    with an input-dependent tensor and uses no result: it is called for what it writes into its arguments (MViT's
    ``_add_shortcut``, ``x.add_(shortcut)``), an addition the trace cannot see, whose gradient doubles relevance."""
    for node in graph.nodes:
        target = node.target
        if node.op != "call_function" or node.users or not isinstance(target, types.FunctionType) \
                or (getattr(target, "__module__", None) or "").split(".")[0] == "torch":
            continue
        given: list[Node] = []
        torch.fx.node.map_arg((node.args, node.kwargs), given.append)
        if any(arg in analysis.dependent for arg in given):
            raise TraceFailure(f"calls {target.__name__}, hidden from torch.fx, for what it writes into its arguments")


def _linear_through_child(graph: torch.fx.Graph, node: Node, analysis: Analysis, names: ChildNames) -> None:
    """``F.linear(x, self.layer.weight, bias)`` with a linear child's own weight (BEiT's and others' attention add a
    bias of their own): the child called on ``x``, its own bias swapped for the given one as constants, so that the
    child's rule applies and the output stays the same. With another weight of the model's own (a parameter or a
    buffer: CSATv2's fixed discrete cosine transform): a new linear child that computes with that very tensor."""
    args = dict(zip(("input", "weight", "bias"), node.args), **node.kwargs)
    weight, source = args.get("weight"), args.get("input")
    if not (isinstance(weight, Node) and weight.op == "get_attr"
            and isinstance(source, Node) and source in analysis.dependent):
        return
    owner = weight.target[:-len(".weight")] if weight.target.endswith(".weight") else None
    child = child_of(analysis.module, owner) if owner else None
    if not isinstance(child, torch.nn.Linear):
        if not _is_matrix(analysis.module, weight.target):
            return
        owner, child = names.new("linear", LinearOfOwnMatrix(weight.target)), None
    bias = args.get("bias")
    with graph.inserting_before(node):
        routed = graph.call_module(owner, (source,))
        if child is not None and child.bias is not None:
            routed = graph.call_function(operator.sub, (routed, graph.get_attr(f"{owner}.bias")))
        if bias is not None:
            routed = graph.call_function(operator.add, (routed, bias))
    analysis.replace(node, routed)
    node.replace_all_uses_with(routed)
    graph.erase_node(node)


def _matrix_product_with_own_matrix(graph: torch.fx.Graph, node: Node, analysis: Analysis, names: ChildNames) -> None:
    """``x @ W`` with ``W`` a matrix of the model's own (SwiftFormer's ``query @ self.w_g``): ``F.linear(x, W^T)``
    through a new linear child that computes with ``W``, so that z+ applies where the gradient would not conserve."""
    if len(node.args) != 2 or node.kwargs:
        return
    source, weight = node.args
    if not (isinstance(weight, Node) and weight.op == "get_attr" and isinstance(source, Node)
            and source in analysis.dependent and _is_matrix(analysis.module, weight.target)):
        return
    name = names.new("linear", LinearOfOwnMatrix(weight.target, transposed=True))
    with graph.inserting_before(node):
        routed = graph.call_module(name, (source,))
    analysis.replace(node, routed)
    node.replace_all_uses_with(routed)
    graph.erase_node(node)


def _is_matrix(module: torch.nn.Module, target: str) -> bool:
    tensor = functools.reduce(getattr, target.split("."), module)
    return isinstance(tensor, torch.Tensor) and tensor.ndim == 2


class LinearOfOwnMatrix:
    """Factory of a linear child without bias that computes with a matrix of the module it is installed on (its
    ``target`` attribute, transposed for ``x @ W``; shared, not copied; no gradient). It reads the matrix off that
    module, so a rewrite cached for one module serves every other of the same structure with its own matrix."""

    from_module = True  # called with the module being rewritten (Rewrite.install)

    def __init__(self, target: str, transposed: bool = False) -> None:
        self.target, self.transposed = target, transposed

    def __call__(self, module: torch.nn.Module) -> torch.nn.Linear:
        weight = functools.reduce(getattr, self.target.split("."), module)
        return linear_child(weight.t() if self.transposed else weight.detach())


def _mark_tokens(graph: torch.fx.Graph, node: Node, names: ChildNames, analysis: Analysis) -> None:
    """A child called with a tensor of the model's own besides the input-dependent ones (a class token handed to a
    block, also inside a tuple as PiT's stages take it): that argument through a :py:class:`Token`, which reports the
    relevance it takes."""
    given: list[Node] = []
    torch.fx.node.map_arg(node.args, given.append)
    if not any(arg in analysis.dependent for arg in given):
        return
    tokens: dict[Node, Node] = {}

    def through_token(arg: Node) -> Node:
        if arg in analysis.dependent or reads_size(arg) or not any(item.op == "get_attr"
                                                                   for item in analysis.ancestors[arg]):
            return arg
        if arg not in tokens:
            with graph.inserting_before(node):
                tokens[arg] = graph.call_module(names.new("token", Token), (arg,))
            analysis.ancestors[tokens[arg]] = analysis.ancestors[arg] | {tokens[arg]}
        return tokens[arg]

    node.args = torch.fx.node.map_arg(node.args, through_token)
