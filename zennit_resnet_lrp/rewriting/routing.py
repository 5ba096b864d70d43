"""Which operations of a traced forward are routed through explicit modules, and through which:

- an addition or difference of tensors that both depend on the module's input (``a + b``, ``torch.add``,
  ``a += b``): a residual sum, :py:class:`~zennit_resnet_lrp.layer.ResidualSum`. The operand reached from the branch
  point through less computation is the skip; it is an identity skip when it is the branch point itself.
- a product where one factor comes from a sigmoid-like gate (through reshapes): a
  :py:class:`~zennit_resnet_lrp.layer.GatedProduct`; of two other input-dependent tensors: a ``Product``; by a
  parameter or a number: a ``Scale``.
- attention (matrix products with softmax weights, fused attention), tokens concatenated to the input-dependent
  ones, and a linear child's weight used functionally.
- activations, pools, normalisations and reductions in functional form: :py:mod:`.functional_routes`.
"""
from __future__ import annotations

import functools
import operator

import torch
import torch.fx
import torch.nn.functional as F

from .functional_routes import route_function
from .graph_analysis import (
    Analysis, ChildNames, Node, Route, binary_operands, insert, is_attention_weights, is_gate, reads_size,
)
from .modules import (
    Attention, AttentionProduct, GatedProduct, MatrixProduct, Product, ResidualSum, Scale, Token, TokenConcat,
)
from .tracing import child_of


def route_operations(graph: torch.fx.Graph, module: torch.nn.Module, names: ChildNames) -> None:
    """Route every operation of ``graph`` that needs a module of its own."""
    analysis = Analysis(module, graph)
    for node in list(graph.nodes):
        route = _route_sum(node, analysis) or _route_product(node, analysis) or _route_attention(node, analysis) \
            or route_function(node, analysis)
        if route is not None:
            insert(graph, node, route, names, analysis)
        elif node.op == "call_module":
            _mark_tokens(graph, node, names, analysis)
        elif node.op == "call_function" and node.target is F.linear:
            _linear_through_child(graph, node, analysis, names)
        elif node.op == "call_function" and node.target in (operator.matmul, torch.matmul):
            _matrix_product_with_own_matrix(graph, node, analysis, names)


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
        weight = weight.t() if self.transposed else weight
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        layer.weight = torch.nn.Parameter(weight, requires_grad=False)
        return layer


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


def _route_sum(node: Node, analysis: Analysis) -> Route | None:
    """A sum or difference of input-dependent tensors, merged with the sums among its operands that feed it alone:
    a residual sum whose skip is the operand reached from the branch point (the latest node all operands come from;
    the module's inputs when they come from different ones, as a shortcut passed in as an argument) through the
    least computation, an identity skip when it is the branch point (or an input) itself."""
    kind, pair = binary_operands(node)
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
    kind, operands = binary_operands(node)
    if kind not in ("mul", "div"):
        return None
    first, second = operands
    dependent = [isinstance(o, Node) and o in analysis.dependent for o in (first, second)]
    if kind == "div":
        return Route("scale", lambda: Scale(divide=True), (first, second)) if dependent[0] else None
    if dependent == [True, True]:
        gates = [is_gate(operand, analysis.module, analysis.kinds) for operand in (first, second)]
        if gates.count(True) == 1:
            gate, features = (first, second) if gates[0] else (second, first)
            return Route("gated_product", GatedProduct, (features, gate))
        return Route("product", Product, (first, second))
    if dependent == [False, False]:
        return None
    scaled, factor = (first, second) if dependent[0] else (second, first)
    return Route("scale", Scale, (scaled, factor))


# matrix products of two tensors -> einsum equation (None: a matrix product)
_MATRIX_FUNCTIONS = {operator.matmul: None, torch.matmul: None, torch.bmm: None}


_MATRIX_METHODS = {"matmul": None, "bmm": None}


_CONCATENATIONS = {torch.cat, torch.concat}


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
    gates = [is_attention_weights(operand, analysis.module, analysis.kinds) for operand in operands]
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
