"""What an operation of a module's own forward is, decided in one place for both ways of finding operations: the
traced path (:py:mod:`.routing`, a ``torch.fx`` graph) and the run-time path (:py:mod:`.runtime_routing`, a forward
seen while it runs). Both describe an operation as ``torch.fx`` does (``op``, ``target``, ``args``, ``kwargs``;
:py:func:`~.vocabulary.as_traced`) and answer the same questions about its arguments (:py:class:`~.routes.Facts`);
:py:func:`classify` returns the route it takes, or None where its own gradient conserves relevance:

- an addition or difference of input-dependent tensors: a residual sum (:py:class:`ResidualSum`), merged with the
  earlier sums among its operands that nothing else uses; the skip as the path tells it;
- a product where exactly one factor is a gate: :py:class:`GatedProduct`; of two other input-dependent tensors:
  ``Product``; by anything else (a parameter, a number): ``Scale``; a quotient of an input-dependent tensor: ``Scale``;
- a matrix product of two input-dependent tensors (``@``, ``matmul``, ``bmm``, a two-operand ``einsum``): an
  :py:class:`AttentionProduct` where one factor holds attention weights (given first: ``v @ attn^T`` becomes an
  einsum with the weights first), a ``MatrixProduct`` otherwise; fused attention: ``Attention``; a softmax:
  ``nn.Softmax``; a concatenation of input-dependent tensors with the model's own (tokens): ``TokenConcat``;
- activations, pools, normalisations, sums over a dimension and other functions: :py:mod:`.functional_routes`.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from .functional_routes import route_function
from .modules import Attention, AttentionProduct, GatedProduct, MatrixProduct, Product, ResidualSum, Scale, TokenConcat
from .routes import Facts, Route
from .vocabulary import BINARY


def classify(op: str, target, args: tuple, kwargs: dict, facts: Facts) -> Route | None:
    """The route of the operation ``target(*args, **kwargs)`` (``op``: ``call_function`` or ``call_method``), or
    None."""
    if op not in ("call_function", "call_method"):
        return None
    kind, pair = binary_operands(op, target, args, kwargs, facts)
    if kind in ("add", "sub"):
        return _sum(kind, pair, facts)
    if kind in ("mul", "div"):
        return _product(kind, pair, facts)
    return _attention(op, target, args, kwargs, facts) or route_function(op, target, args, kwargs, facts)


def binary_operands(op: str, target, args: tuple, kwargs: dict, facts: Facts) -> tuple[str | None, tuple]:
    """``(kind, (a, b))`` for an addition, subtraction, product or quotient of two operands (tensors or numbers; no
    ``alpha``, no ``out``, no rounding mode), else ``(None, ())``."""
    if kwargs or len(args) != 2 or not any(facts.computed(operand) for operand in args):
        return None, ()
    try:
        return BINARY.get(target), tuple(args)
    except TypeError:  # an unhashable target
        return None, ()


def _sum(kind: str, pair: tuple, facts: Facts) -> Route | None:
    """A sum or difference of input-dependent tensors, merged with the sums among its operands that feed it alone."""
    if not all(facts.dependent(operand) for operand in pair):
        return None
    operands, signs, merged = [], [], []
    for operand, sign in zip(pair, (1, 1 if kind == "add" else -1)):
        inner = facts.sum_operands(operand)
        if inner is not None:
            operands += inner[0]
            signs += [sign * s for s in inner[1]]
            merged.append(operand)
        else:
            operands.append(operand)
            signs.append(sign)
    skip, identity = facts.skip(tuple(operands))
    signs = tuple(signs)
    return Route("residual_sum", lambda: ResidualSum(identity_skip=identity, skip=skip, signs=signs),
                 tuple(operands), signs, tuple(merged))


def _product(kind: str, pair: tuple, facts: Facts) -> Route | None:
    """A product or quotient with an input-dependent tensor: features times a gate; a product of two input-dependent
    tensors; a scale by anything else (a quotient's input-dependent divisor held constant, as a normalisation's)."""
    first, second = pair
    dependent = [facts.dependent(first), facts.dependent(second)]
    if kind == "div":
        return Route("scale", lambda: Scale(divide=True), (first, second)) if dependent[0] else None
    if dependent == [True, True]:
        gates = [facts.gate(first), facts.gate(second)]
        if gates.count(True) == 1:
            gate, features = (first, second) if gates[0] else (second, first)
            return Route("gated_product", GatedProduct, (features, gate))
        return Route("product", Product, (first, second))
    if dependent == [False, False]:
        return None
    scaled, factor = (first, second) if dependent[0] else (second, first)
    return Route("scale", Scale, (scaled, factor))


# matrix products of two tensors, as torch.fx names them
_MATRIX_FUNCTIONS = {operator.matmul, torch.matmul, torch.bmm}
_MATRIX_METHODS = {"matmul", "bmm"}
_CONCATENATIONS = {torch.cat, torch.concat}
# F.scaled_dot_product_attention's parameters after query, key and value, with their defaults
_ATTENTION_PARAMETERS = (("attn_mask", None), ("dropout_p", 0.0), ("is_causal", False), ("scale", None),
                         ("enable_gqa", False))


def _attention(op: str, target, args: tuple, kwargs: dict, facts: Facts) -> Route | None:
    """What attention is made of: fused attention, a concatenation with tokens, a softmax, a matrix product."""
    if op == "call_function" and target is F.scaled_dot_product_attention:
        return _fused_attention(args, kwargs, facts)
    if op == "call_function" and target in _CONCATENATIONS:
        return _tokens(args, kwargs, facts)
    if target == "softmax" and op == "call_method" or op == "call_function" and target in (torch.softmax, F.softmax):
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if args and facts.dependent(args[0]) and isinstance(dim, int) and len(args) <= 2 and set(kwargs) <= {"dim"}:
            return Route("softmax", lambda: torch.nn.Softmax(dim), (args[0],))
        return None
    equation, operands = matrix_operands(op, target, args, kwargs)
    if operands is None or not all(facts.dependent(operand) for operand in operands):
        return None
    weights = [facts.attention_weights(operand) for operand in operands]
    if weights[0] or weights[1]:
        if not weights[0]:  # ``v @ attn^T`` (EfficientViT's cascaded groups): as an einsum, the weights first
            operands, equation = operands[::-1], _swapped(equation or _MATMUL)
        return Route("attention_product", lambda: AttentionProduct(equation), operands)
    return Route("matrix_product", lambda: MatrixProduct(equation), operands)


def matrix_operands(op: str, target, args: tuple, kwargs: dict) -> tuple[str | None, tuple | None]:
    """``(einsum equation or None, (a, b))`` of a product of two tensors, else ``(None, None)``."""
    if kwargs:
        return None, None
    if op == "call_function" and target is torch.einsum and len(args) == 3 and isinstance(args[0], str) \
            and args[0].count(",") == 1 and "->" in args[0]:
        return args[0].replace(" ", ""), tuple(args[1:])
    try:
        if target in (_MATRIX_FUNCTIONS if op == "call_function" else _MATRIX_METHODS) and len(args) == 2:
            return None, tuple(args)
    except TypeError:  # an unhashable target
        pass
    return None, None


# ``a @ b`` as an einsum (batch dimensions broadcast as matmul's do), for reversing its operands
_MATMUL = "...ij,...jk->...ik"


def _swapped(equation: str) -> str:
    """An einsum equation of two operands with the operands' order reversed."""
    inputs, output = equation.split("->")
    first, second = inputs.split(",")
    return f"{second},{first}->{output}"


def _fused_attention(args: tuple, kwargs: dict, facts: Facts) -> Route | None:
    """``F.scaled_dot_product_attention(q, k, v, ...)``: through an :py:class:`Attention` that decomposes it."""
    if len(args) < 3 or not all(facts.dependent(operand) for operand in args[:3]) \
            or set(kwargs) - {name for name, _ in _ATTENTION_PARAMETERS}:
        return None
    rest = list(args[3:])
    arguments = [rest[index] if index < len(rest) else kwargs.get(name, default)
                 for index, (name, default) in enumerate(_ATTENTION_PARAMETERS)]
    return Route("attention", Attention, (*args[:3], *arguments))


def _tokens(args: tuple, kwargs: dict, facts: Facts) -> Route | None:
    """``torch.cat([...], dim)`` of input-dependent tensors and tensors of the model's own (tokens)."""
    operands = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not isinstance(operands, (list, tuple)) or not all(facts.computed(o) for o in operands) \
            or not isinstance(dim, int):
        return None
    constant = tuple(not facts.dependent(o) for o in operands)
    if all(constant) or not any(constant):
        return None
    return Route("tokens", lambda: TokenConcat(dim, constant), tuple(operands))
