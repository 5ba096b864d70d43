"""Activations, average pools, normalisations, reductions, folds and other elementwise functions written as functions
in a forward (``F.gelu(x)``, ``x.mean((2, 3))``, ``F.layer_norm(...)``, ``x.sum(1)``, ``x ** 2``, ``F.fold(...)``):
routed through the modules that compute the same, so that composites give them their rules."""
from __future__ import annotations

import inspect
import operator

import torch
import torch.nn.functional as F

from .graph_analysis import VARIABLE, Analysis, Node, Route, holds_node, size_argument
from .modules import SLOT, Elementwise, Fold, FunctionalNorm, FunctionalPool, SumOver


# functional activation -> the module that computes the same (built with the call's further arguments)
ACTIVATION_FUNCTIONS = {F.relu: torch.nn.ReLU, torch.relu: torch.nn.ReLU, F.relu_: torch.nn.ReLU,
                         torch.relu_: torch.nn.ReLU, F.relu6: torch.nn.ReLU6, F.silu: torch.nn.SiLU,
                         F.hardswish: torch.nn.Hardswish, F.gelu: torch.nn.GELU, F.leaky_relu: torch.nn.LeakyReLU,
                         F.elu: torch.nn.ELU, F.selu: torch.nn.SELU, F.celu: torch.nn.CELU, F.mish: torch.nn.Mish,
                         F.softplus: torch.nn.Softplus, F.hardtanh: torch.nn.Hardtanh, torch.tanh: torch.nn.Tanh,
                         F.tanh: torch.nn.Tanh}


ACTIVATION_METHODS = {"relu": torch.nn.ReLU, "relu_": torch.nn.ReLU, "tanh": torch.nn.Tanh}


_POOL_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_avg_pool1d, F.avg_pool2d, F.avg_pool1d, torch.mean}


_POOL_METHODS = {"mean": torch.mean}


# elementwise functions with constant further arguments -> routed as activations (relevance passes)
ELEMENTWISE_FUNCTIONS = {operator.pow: torch.pow, torch.pow: torch.pow, torch.square: torch.square,
                          torch.clamp: torch.clamp, torch.clamp_min: torch.clamp_min, torch.abs: torch.abs}


ELEMENTWISE_METHODS = {"pow": torch.pow, "square": torch.square, "clamp": torch.clamp, "clamp_min": torch.clamp_min,
                        "abs": torch.abs}


NORM_FUNCTIONS = {F.layer_norm, F.group_norm, F.batch_norm, F.instance_norm, F.local_response_norm, F.normalize,
                   *((F.rms_norm,) if hasattr(F, "rms_norm") else ())}


def route_function(node: Node, analysis: Analysis) -> Route | None:
    """A functional activation, average pool or normalisation of an input-dependent tensor: the module that computes
    the same."""
    if node.op not in ("call_function", "call_method") or not node.args or node.args[0] not in analysis.dependent:
        return None
    if node.op == "call_function" and node.target in ACTIVATION_FUNCTIONS:
        activation = ACTIVATION_FUNCTIONS[node.target]
    elif node.op == "call_method" and node.target in ACTIVATION_METHODS:
        activation = ACTIVATION_METHODS[node.target]
    elif node.op == "call_function" and node.target in NORM_FUNCTIONS:
        return _route_norm(node)
    elif node.op == "call_function" and node.target is torch.sum or node.op == "call_method" and node.target == "sum":
        return _route_reduction(node)
    elif node.op == "call_function" and node.target is F.fold:
        return _route_fold(node)
    elif node.op == "call_function" and node.target in ELEMENTWISE_FUNCTIONS \
            or node.op == "call_method" and node.target in ELEMENTWISE_METHODS:
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
    if dim is None or holds_node(dim) or holds_node(keepdim):
        return None
    return Route("sum", lambda: SumOver(dim, keepdim), (node.args[0],))


def _route_fold(node: Node) -> Route | None:
    """``F.fold`` with a constant window geometry; the output size may be read off a tensor at run time."""
    try:
        bound = inspect.signature(F.fold).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):
        return None
    bound.apply_defaults()
    geometry = {key: bound.arguments[key] for key in ("kernel_size", "dilation", "padding", "stride")}
    if any(holds_node(value) for value in geometry.values()):
        return None
    return Route("fold", lambda: Fold(**geometry), (node.args[0], bound.arguments["output_size"]))


def _route_elementwise(node: Node) -> Route | None:
    """An elementwise function whose further arguments are constants (``x ** 2``, ``x.clamp(min=0)``)."""
    function = (ELEMENTWISE_FUNCTIONS if node.op == "call_function" else ELEMENTWISE_METHODS)[node.target]
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
    if any(holds_node(value) for value in keywords.values()):
        return None
    template = tuple(SLOT if holds_node(value) else value for value in positional)
    tensors = tuple(value for value in positional if holds_node(value))  # computed at run time: passed in
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
    args = tuple(size_argument(value, source) for value in rest)
    kwargs = {key: size_argument(value, source) for key, value in node.kwargs.items()}
    if any(value is VARIABLE for value in (*args, *kwargs.values())):
        return None
    return Route("pool", lambda: FunctionalPool(function, args, kwargs), (source,))
