"""Activations, average pools, normalisations, reductions, folds, zero padding and other elementwise functions written
as functions in a forward (``F.gelu(x)``, ``x.mean((2, 3))``, ``F.layer_norm(...)``, ``x.sum(1)``, ``x ** 2``,
``F.fold(...)``, ``F.pad(x, widths)``): routed through the modules that compute the same, so that composites give them
their rules."""
from __future__ import annotations

import inspect
import operator

import torch
import torch.nn.functional as F

from .modules import PADDING_LAYOUT, SLOT, Elementwise, Fold, FunctionalNorm, FunctionalPool, Pad, SumOver
from .routes import VARIABLE, Facts, Route


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


def route_function(op: str, target, args: tuple, kwargs: dict, facts: Facts) -> Route | None:
    """A functional activation, average pool, normalisation, sum over a dimension, fold, zero padding or elementwise
    function of an input-dependent tensor: the module that computes the same."""
    if not args or not facts.dependent(args[0]):
        return None
    try:
        if op == "call_function" and target in ACTIVATION_FUNCTIONS:
            return _route_activation(ACTIVATION_FUNCTIONS[target], args, kwargs, facts)
        if op == "call_method" and target in ACTIVATION_METHODS:
            return _route_activation(ACTIVATION_METHODS[target], args, kwargs, facts)
        if op == "call_function" and target in NORM_FUNCTIONS:
            return _route_norm(target, args, kwargs, facts)
        if op == "call_function" and target is torch.sum or op == "call_method" and target == "sum":
            return _route_reduction(args, kwargs, facts)
        if op == "call_function" and target is F.fold:
            return _route_fold(args, kwargs, facts)
        if op == "call_function" and target is F.pad:
            return _route_pad(args, kwargs, facts)
        if op == "call_function" and target in ELEMENTWISE_FUNCTIONS:
            return _route_elementwise(ELEMENTWISE_FUNCTIONS[target], args, kwargs, facts)
        if op == "call_method" and target in ELEMENTWISE_METHODS:
            return _route_elementwise(ELEMENTWISE_METHODS[target], args, kwargs, facts)
    except TypeError:  # an unhashable target
        return None
    return _route_pool(op, target, args, kwargs, facts)


def _route_activation(activation: type, args: tuple, kwargs: dict, facts: Facts) -> Route | None:
    """An activation whose further arguments are constants: the module built with them."""
    rest, kwargs = args[1:], {key: value for key, value in kwargs.items() if key != "inplace"}
    if any(facts.computed(value) for value in (*rest, *kwargs.values())):
        return None
    return Route(activation.__name__.lower(), lambda: activation(*rest, **kwargs), (args[0],))


def _route_reduction(args: tuple, kwargs: dict, facts: Facts) -> Route | None:
    """A sum over given dimensions (not over everything: that is a scalar, no classifier's output)."""
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if dim is None or facts.computed(dim) or facts.computed(keepdim) or set(kwargs) - {"dim", "keepdim"}:
        return None
    return Route("sum", lambda: SumOver(dim, keepdim), (args[0],))


def _route_fold(args: tuple, kwargs: dict, facts: Facts) -> Route | None:
    """``F.fold`` with a constant window geometry; the output size may be read off a tensor at run time."""
    try:
        bound = inspect.signature(F.fold).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    bound.apply_defaults()
    geometry = {key: bound.arguments[key] for key in ("kernel_size", "dilation", "padding", "stride")}
    if any(facts.computed(value) for value in geometry.values()):
        return None
    return Route("fold", lambda: Fold(**geometry), (args[0], bound.arguments["output_size"]))


def _route_pad(args: tuple, kwargs: dict, facts: Facts) -> Route | None:
    """``F.pad`` with zeros (windows padded to fit, then cropped): its gradient, a crop, would drop the relevance that
    reaches the padding (the padded tokens' values after a norm and a linear layer carry some), the padding rule moves
    it to the edge. The widths may be read off sizes at run time; at most three padded dimensions, less the outer
    ones padded by constant zeros (:py:func:`~.modules.padding_layout`, the layout the rule reads)."""
    try:
        bound = inspect.signature(F.pad).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    bound.apply_defaults()
    widths, mode, value = (bound.arguments[key] for key in ("pad", "mode", "value"))
    if mode != "constant" or value not in (None, 0) or not isinstance(widths, (tuple, list)) or len(widths) % 2 \
            or any(facts.dependent(width) for width in widths):
        return None
    outer = len(widths)
    while outer > 2 and all(not facts.computed(width) and width == 0 for width in widths[outer - 2:outer]):
        outer -= 2
    if outer > 6:
        return None
    return Route("padding", Pad, (bound.arguments["input"], tuple(widths)), layout=PADDING_LAYOUT)


def _route_elementwise(function, args: tuple, kwargs: dict, facts: Facts) -> Route | None:
    """An elementwise function whose further arguments are constants (``x ** 2``, ``x.clamp(min=0)``)."""
    rest, kwargs = args[1:], dict(kwargs)
    if any(facts.computed(value) for value in (*rest, *kwargs.values())):
        return None
    return Route("elementwise", lambda: Elementwise(function, rest, kwargs), (args[0],))


def _route_norm(function, args: tuple, kwargs: dict, facts: Facts) -> Route | None:
    """A functional normalisation, its arguments bound to its parameters in order: those computed in the forward
    (weight, bias, statistics, a shape read off a tensor) become the module's further inputs, the constants stay in its
    template."""
    try:
        bound = inspect.signature(function).bind(*args, **kwargs)
    except (TypeError, ValueError):  # no signature to read, or a call it does not fit
        return None
    bound.apply_defaults()
    positional = [value for name, value in bound.arguments.items()
                  if bound.signature.parameters[name].kind is not inspect.Parameter.KEYWORD_ONLY][1:]
    keywords = {name: value for name, value in bound.arguments.items()
                if bound.signature.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY}
    if any(facts.computed(value) for value in keywords.values()):
        return None
    template = tuple(SLOT if facts.computed(value) else value for value in positional)
    tensors = tuple(value for value in positional if facts.computed(value))  # computed at run time: passed in
    return Route("norm", lambda: FunctionalNorm(function, template, keywords), (args[0], *tensors))


def _route_pool(op: str, target, args: tuple, kwargs: dict, facts: Facts) -> Route | None:
    """An average pool in functional form whose arguments are constants or sizes of its input."""
    source, rest = args[0], args[1:]
    try:
        function = target if op == "call_function" else _POOL_METHODS.get(target)
        if function not in _POOL_FUNCTIONS:
            return None
    except TypeError:
        return None
    if function is torch.mean and not rest and "dim" not in kwargs:
        return None  # the mean over everything, batch included: not a pool
    pool_args = tuple(facts.size_argument(value, source) for value in rest)
    pool_kwargs = {key: facts.size_argument(value, source) for key, value in kwargs.items()}
    if any(value is VARIABLE for value in (*pool_args, *pool_kwargs.values())):
        return None
    return Route("pool", lambda: FunctionalPool(function, pool_args, pool_kwargs), (source,))
