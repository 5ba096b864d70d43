"""The words both paths read operations in: how ``torch.fx`` names each operation (``call_function`` with a function or
an operator, ``call_method`` with a method's name), the run-time path's calls put into those names
(:py:func:`as_traced`), and what makes and what keeps a gate.

A gate is a factor a product holds constant, all relevance going to the other factor: a sigmoid's, hard sigmoid's
or softmax's output (values in [0, 1] by construction; a function, a method or a module), or a norm of the features
(a normalisation statistic, as global response normalisation's ``x * ||x|| / mean(||x||)``: held constant, as a
quotient's divisor is). It stays one through reshapes, dropout, indexing, conversions and means, and through
arithmetic whose input-dependent operands are all gates (``1 - z``, ``g / 2``, ``g1 + g2``): :py:func:`keeps_gate`.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# operations that only move or reshape values
SHAPE_METHODS = {"view", "reshape", "expand", "expand_as", "unsqueeze", "squeeze", "flatten", "permute",
                 "contiguous", "transpose", "view_as", "reshape_as", "to", "type_as", "float", "double"}
SHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.unsqueeze, torch.squeeze, torch.permute, torch.transpose,
                   operator.getitem}
DROPOUTS = {F.dropout, F.dropout1d, F.dropout2d, torch.dropout}
# children that pass their input on (in eval mode)
PASSIVE_CHILDREN = {"Dropout", "Identity", "DropPath", "Dropout1d", "Dropout2d"}

# what makes a gate
GATE_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, torch.softmax, F.softmax,
                  torch.norm, torch.linalg.vector_norm, torch.linalg.norm}
GATE_METHODS = {"sigmoid", "sigmoid_", "softmax", "norm"}
# reductions that keep a gate one (a mean of norms normalises them)
GATE_REDUCTIONS = {torch.mean, "mean"}
GATE_MODULES = (torch.nn.Sigmoid, torch.nn.Hardsigmoid, torch.nn.Softmax)

# additions, subtractions, products and quotients of two operands, as torch.fx names them -> kind
BINARY = {operator.add: "add", operator.iadd: "add", torch.add: "add", "add": "add", "add_": "add",
          operator.sub: "sub", operator.isub: "sub", torch.sub: "sub", "sub": "sub", "sub_": "sub",
          operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", "mul": "mul", "mul_": "mul",
          operator.truediv: "div", operator.itruediv: "div", torch.div: "div", "div": "div", "div_": "div"}
# the in-place ones: the run-time path writes their routed result into the tensor
IN_PLACE = {operator.iadd, operator.isub, operator.imul, operator.itruediv, "add_", "sub_", "mul_", "div_"}

# Python's operators on tensors, as the run-time path sees them -> (torch.fx's operator, whether reflected)
_OPERATORS = {Tensor.__add__: (operator.add, False), Tensor.__radd__: (operator.add, True),
              Tensor.__iadd__: (operator.iadd, False), Tensor.__sub__: (operator.sub, False),
              Tensor.__rsub__: (operator.sub, True), Tensor.__isub__: (operator.isub, False),
              Tensor.__mul__: (operator.mul, False), Tensor.__rmul__: (operator.mul, True),
              Tensor.__imul__: (operator.imul, False), Tensor.__truediv__: (operator.truediv, False),
              Tensor.__rtruediv__: (operator.truediv, True), Tensor.__itruediv__: (operator.itruediv, False),
              Tensor.__matmul__: (operator.matmul, False), Tensor.__rmatmul__: (operator.matmul, True),
              Tensor.__getitem__: (operator.getitem, False), Tensor.__pow__: (operator.pow, False),
              Tensor.__neg__: (operator.neg, False)}


def as_traced(func, args: tuple) -> tuple[str, object, tuple]:
    """A call the run-time path sees (``func(*args)``) as ``torch.fx`` records it: ``(op, target, args)``, reflected
    operators put in their written order (``1 - z`` arrives as ``z.__rsub__(1)``: ``operator.sub(1, z)``)."""
    if func in _OPERATORS:
        target, reflected = _OPERATORS[func]
        return "call_function", target, (args[1], args[0], *args[2:]) if reflected else args
    name = getattr(func, "__name__", None)
    if name is not None and getattr(Tensor, name, None) is func:
        return "call_method", name, args
    return "call_function", func, args


def makes_gate(op: str, target) -> bool:
    """Whether an operation's output is a gate whatever its input."""
    try:
        return target in (GATE_METHODS if op == "call_method" else GATE_FUNCTIONS)
    except TypeError:  # an unhashable target
        return False


def keeps_gate(op: str, target) -> bool:
    """Whether an operation's output is a gate when its input-dependent operands all are: reshapes, dropout,
    indexing, conversions, and arithmetic (with constants or other gates)."""
    try:
        if op == "call_method":
            return target in SHAPE_METHODS or target in BINARY or target in GATE_REDUCTIONS
        return target in SHAPE_FUNCTIONS or target in DROPOUTS or target in BINARY or target in GATE_REDUCTIONS
    except TypeError:
        return False


def reshapes_only(op: str, target) -> bool:
    """Whether an operation only moves values (its first argument's): a reshape, an index, dropout."""
    try:
        if op == "call_method":
            return target in SHAPE_METHODS
        return target in SHAPE_FUNCTIONS or target in DROPOUTS
    except TypeError:
        return False
