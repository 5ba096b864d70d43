"""The explicit modules that canonizers route a model's additions, gates and functional operations through, so that
composites can give them rules."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


class ResidualSum(torch.nn.Module):
    """A residual sum, ``h_out = sum_i sign_i h_i``, called with its operands as separate tensors:
    ``sum(residual, skip)`` for a residual block, any number of operands for a many-way sum.

    Parameters
    ----------
    identity_skip : bool
        True when the skip operand is the block's input itself (an "S-block"), False when it went through a
        projection (a "D-block"). Splitting rules read this to treat the two kinds differently.
    skip : int
        Which operand is the skip (the one reached from the block's input through the least computation); the last
        by default.
    signs : sequence of +1 / -1, optional
        The sign of each operand (``a - b``: ``(1, -1)``); all +1 by default.
    """

    def __init__(self, identity_skip: bool = True, skip: int = -1, signs: Sequence[int] | None = None) -> None:
        super().__init__()
        self.identity_skip, self.skip = identity_skip, skip
        self.signs = None if signs is None or all(sign == 1 for sign in signs) else tuple(signs)

    def forward(self, *operands: torch.Tensor) -> torch.Tensor:
        if self.signs is None:
            total = operands[0] + operands[1]
            for operand in operands[2:]:
                total = total + operand
            return total
        total = operands[0] if self.signs[0] == 1 else -operands[0]
        for sign, operand in zip(self.signs[1:], operands[1:]):
            total = total + operand if sign == 1 else total - operand
        return total

    def add(self, residual: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``residual + skip`` through this module: the by-hand route for a block the canonizer cannot trace."""
        return self(residual, skip)

    def extra_repr(self) -> str:
        signs = "" if self.signs is None else f", signs={self.signs}"
        return f"identity_skip={self.identity_skip}, skip={self.skip}{signs}"


class SumOver(torch.nn.Module):
    """A sum of an input-dependent tensor over a dimension, ``x.sum(dim)``: a many-way sum of the slices along
    ``dim`` (the paths of selective kernels and split attention). Its rule splits relevance over the slices as a
    :py:class:`ResidualSum`'s over its operands, where the gradient would hand the full relevance to every slice.

    Parameters
    ----------
    dim : int or tuple of int
    keepdim : bool
    """

    def __init__(self, dim, keepdim: bool = False) -> None:
        super().__init__()
        self.dim, self.keepdim = dim, keepdim

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the module's input
        return input.sum(self.dim, keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}"


class GatedProduct(torch.nn.Module):
    """A multiplicative gate, ``features * gate``: squeeze-excitation, ECA and other ``x * sigmoid(...)`` attention.

    Canonizers route such products through this module so that a rule can treat the gate as a weight
    (:py:class:`~zennit_resnet_lrp.rules.GateAsWeight`: all relevance to the gated features, none to the gate),
    which conserves relevance where the product's gradient would hand it to both factors.
    """

    def forward(self, features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return features * gate


class Product(torch.nn.Module):
    """A product of two tensors that both depend on the input, neither a gate: ``a * b`` (StarNet's
    ``act(f1(x)) * f2(x)``, gated linear units with other activations, FocalNet's modulation). Canonizers route such
    products through this module so that a rule (:py:class:`~zennit_resnet_lrp.rules.UniformSplit`) can give each
    factor its share, where the product's gradient would hand the full relevance to both."""

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return first * second


class Scale(torch.nn.Module):
    """An input-dependent tensor times (or divided by) a factor that does not depend on the input: a parameter (layer
    scale, ``x * self.gamma``), a buffer or a number (scaled residual branches, ``x * 0.17``). An elementwise linear
    map: its rule passes relevance to the scaled tensor unchanged, where the gradient would scale it by the factor.

    Parameters
    ----------
    divide : bool
        ``x / factor`` instead of ``x * factor``.
    """

    def __init__(self, divide: bool = False) -> None:
        super().__init__()
        self.divide = divide

    def forward(self, input: torch.Tensor, factor) -> torch.Tensor:  # noqa: A002 - the module's input
        return input / factor if self.divide else input * factor

    def extra_repr(self) -> str:
        return "divide=True" if self.divide else ""


class _Slot:
    __slots__ = ()

    def __repr__(self) -> str:
        return "SLOT"


SLOT = _Slot()  # where a tensor argument goes in a FunctionalNorm's template


class FunctionalNorm(torch.nn.Module):
    """A normalisation written as a function call in a model's forward (``F.layer_norm``, ``F.group_norm``,
    ``F.rms_norm``, ``F.batch_norm``), made a module so that composites give it the rule of normalisation layers.

    Parameters
    ----------
    function : callable
        Called as ``function(input, *arguments)``, where the arguments are ``template`` with each :py:data:`SLOT`
        filled, in order, by a tensor the module is called with (the norm's weight and bias).
    template : tuple
        The further arguments, :py:data:`SLOT` where a tensor goes.
    kwargs : dict, optional
        Keyword arguments (constants).
    """

    def __init__(self, function, template: tuple = (), kwargs: dict | None = None) -> None:
        super().__init__()
        self.function, self.template, self.kwargs = function, tuple(template), dict(kwargs or {})

    def forward(self, input: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the input
        filled = iter(tensors)
        arguments = [next(filled) if item is SLOT else item for item in self.template]
        return self.function(input, *arguments, **self.kwargs)

    def extra_repr(self) -> str:
        return getattr(self.function, "__name__", repr(self.function))


class Elementwise(torch.nn.Module):
    """An elementwise function of an input-dependent tensor written in a forward (``x ** 2``, ``x.clamp(min=0)``,
    ``x.abs()``): an activation, made a module so that composites give it the activations' rule.

    Parameters
    ----------
    function : callable
        Called as ``function(input, *args, **kwargs)``.
    args, kwargs
        Its further arguments (constants).
    """

    def __init__(self, function, args: tuple = (), kwargs: dict | None = None) -> None:
        super().__init__()
        self.function, self.args, self.kwargs = function, tuple(args), dict(kwargs or {})

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the module's input
        return self.function(input, *self.args, **self.kwargs)

    def extra_repr(self) -> str:
        name = getattr(self.function, "__name__", repr(self.function))
        return ", ".join([name, *map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])


class FunctionCall(torch.nn.Module):
    """An activation, normalisation or other elementwise function called in a forward that is routed while it runs
    (:py:mod:`~zennit_resnet_lrp.rewriting.runtime_routing`): the function and its further arguments come with each call,
    ``call(input, function=F.gelu, arguments=(), keywords={})``, so one module serves every such call; it passes
    relevance as activations and normalisation layers do."""

    def forward(self, input: torch.Tensor, *, function, arguments: tuple = (),  # noqa: A002 - the input
                keywords: dict | None = None) -> torch.Tensor:
        return function(input, *arguments, **(keywords or {}))


class MatrixProduct(torch.nn.Module):
    """A matrix product of two input-dependent tensors, neither of them attention weights: ``q @ k.transpose(-2, -1)``
    (attention logits), or ``torch.einsum(equation, a, b)``.

    Parameters
    ----------
    equation : str, optional
        The einsum equation; None for ``a @ b``.
    """

    def __init__(self, equation: str | None = None) -> None:
        super().__init__()
        self.equation = equation

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return first @ second if self.equation is None else torch.einsum(self.equation, first, second)

    def extra_repr(self) -> str:
        return "" if self.equation is None else repr(self.equation)


class AttentionProduct(MatrixProduct):
    """Attention weights (a softmax's output, possibly reshaped) applied to values: ``weights @ values`` (or an einsum),
    the weights given first. Its rule can hold the weights constant, so that relevance flows through the values."""

    def forward(self, weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return super().forward(weights, values)


class Attention(torch.nn.Module):
    """Scaled dot-product attention decomposed into modules the rules see: ``scale`` (the query times the scale),
    ``logits`` (``q @ k^T``, masked), ``softmax`` and ``values`` (the weights applied to ``v``). Canonizers route
    ``F.scaled_dot_product_attention`` (and ``nn.MultiheadAttention``) through it; it computes what the fused call
    computes, up to float rounding. Called as ``F.scaled_dot_product_attention`` is (dropout is not applied:
    attribution runs in eval mode).

    Between these modules only operations whose gradient hands each entry's relevance on unchanged run: the keys'
    transpose, the heads' repetition (grouped-query attention: the copies' relevance is summed back), a boolean mask
    (masked logits get nothing) and a float mask added as a constant (the logits keep all relevance). The scale is a
    module of its own so that its rule, not the gradient (which would multiply the query's relevance by it), says
    what crosses it."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = Scale()
        self.logits, self.softmax, self.values = MatrixProduct(), torch.nn.Softmax(-1), AttentionProduct()

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask=None,
                dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                enable_gqa: bool = False) -> torch.Tensor:
        if enable_gqa and key.shape[-3] != query.shape[-3]:  # grouped-query attention: heads share keys and values
            repeat = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        logits = self.logits(self.scale(query, scale), key.transpose(-2, -1))
        if is_causal:
            length, source = query.shape[-2], key.shape[-2]
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
        if attn_mask is not None:
            logits = logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else logits + attn_mask
        return self.values(self.softmax(logits), value)


class TokenConcat(torch.nn.Module):
    """A concatenation of input-dependent tensors with tensors that do not depend on the input (a class token,
    distillation or register tokens: ``torch.cat([cls_token.expand(n, -1, -1), x], dim=1)``). The relevance its
    constant operands receive ends on the model's own parameters: ``attribute`` reports it as absorbed.

    Parameters
    ----------
    dim : int
    constant : tuple of bool
        Which operands do not depend on the input.
    """

    def __init__(self, dim: int = 0, constant: tuple = ()) -> None:
        super().__init__()
        self.dim, self.constant = dim, tuple(constant)

    def forward(self, *operands: torch.Tensor) -> torch.Tensor:
        return torch.cat(operands, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, constant={self.constant}"


class Pad(torch.nn.Module):
    """Zero padding whose widths come with each call, ``pad(input, widths)`` as ``F.pad`` takes them (a window
    partition pads to whole windows, by as much as each input needs), so that composites give it the padding rule."""

    def forward(self, input: torch.Tensor, widths: tuple) -> torch.Tensor:  # noqa: A002 - the module's input
        return F.pad(input, widths)


def padding_layout(input: torch.Tensor, widths: Sequence[int]) -> tuple[torch.Tensor, tuple]:
    """``F.pad(input, widths)``'s operands in the layout a :py:class:`Pad`'s rule reads, on any layout (timm's windows
    pad channels-last maps, ``(0, 0, 0, right, 0, bottom)``): the padded dimensions behind a batch and a channel axis,
    the outer dimensions padded by nothing left out of the widths (so at most three are padded, the rule's limit).
    :py:func:`from_padding_layout` brings the padded result back."""
    widths = tuple(widths)
    while len(widths) > 2 and tuple(widths[-2:]) == (0, 0):
        widths = widths[:-2]
    return input.reshape(-1, 1, *input.shape[input.ndim - len(widths) // 2:]), widths


def from_padding_layout(padded: torch.Tensor, input: torch.Tensor, widths: Sequence[int]) -> torch.Tensor:  # noqa: A002
    """A :py:class:`Pad`'s output on :py:func:`padding_layout`'s operands in the layout of ``input``."""
    kept = input.ndim - (padded.ndim - 2)  # the dimensions in front of the padded ones
    return padded.reshape(*input.shape[:kept], *padded.shape[2:])


PADDING_LAYOUT = (padding_layout, from_padding_layout)


class Token(torch.nn.Module):
    """A tensor of the model's own (a class token, expanded to the batch) handed to a child module as an argument
    (CaiT's class-attention blocks take the class token so). The identity; the relevance it receives ends on the
    model's parameters: ``attribute`` reports it as absorbed."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the module's input
        return input


class InputSize:
    """An argument of a functional operation read off its input at call time: ``input.shape[dim]`` (as in
    ``F.avg_pool2d(x, x.size(3))``)."""

    __slots__ = ("dim",)

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def __repr__(self) -> str:
        return f"InputSize({self.dim})"


class FunctionalPool(torch.nn.Module):
    """An average pool written as a function call in a model's forward (``x.mean((2, 3))``,
    ``F.adaptive_avg_pool2d``, ``F.avg_pool2d``), made a module so that composites give it the pooling rule.

    Parameters
    ----------
    function : callable
        Called as ``function(input, *args, **kwargs)``; a positive linear map of ``input``.
    args, kwargs
        Its further arguments; an :py:class:`InputSize` stands for a size of the input.
    """

    def __init__(self, function, args: tuple = (), kwargs: dict | None = None) -> None:
        super().__init__()
        self.function, self.args, self.kwargs = function, tuple(args), dict(kwargs or {})

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the module's input
        args = [input.shape[arg.dim] if isinstance(arg, InputSize) else arg for arg in self.args]
        return self.function(input, *args, **self.kwargs)

    def extra_repr(self) -> str:
        name = getattr(self.function, "__name__", repr(self.function))
        return ", ".join([name, *map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])


class Fold(torch.nn.Module):
    """``F.fold`` written in a forward, made a module so that a composite gives it the sums' rule. The window's
    geometry is fixed; the output size comes with each call (it is often read off another tensor's size).

    Parameters
    ----------
    kernel_size, dilation, padding, stride
        As ``F.fold`` takes them.
    """

    def __init__(self, kernel_size, dilation=1, padding=0, stride=1) -> None:
        super().__init__()
        self.kernel_size, self.dilation, self.padding, self.stride = kernel_size, dilation, padding, stride

    def forward(self, input: torch.Tensor, output_size) -> torch.Tensor:  # noqa: A002 - the module's input
        return F.fold(input, output_size, self.kernel_size, self.dilation, self.padding, self.stride)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, dilation={self.dilation}, padding={self.padding}, "
                f"stride={self.stride}")


def linear_child(weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.nn.Linear:
    """A linear layer that computes with tensors that exist already, nothing copied or allocated: the one way every
    rewrite makes a linear child over a model's own tensors (a fused module's projections, an LSTM's or GRU's
    weights, a matrix used functionally). Parameters are shared as the objects they are; other tensors (views,
    buffers, transposes) are wrapped without a gradient."""
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = _shared(weight)
    if bias is not None:
        layer.bias = _shared(bias)
    return layer


def _shared(tensor: torch.Tensor) -> torch.nn.Parameter:
    if isinstance(tensor, torch.nn.Parameter):
        return tensor
    return torch.nn.Parameter(tensor.detach(), requires_grad=False)
