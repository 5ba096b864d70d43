"""The linear maps the rules redistribute relevance through, and their transposes: convolutions and linear layers with
the weights their forward uses (weight-standardised convolutions: the standardised weights) and the padding it
applies (timm's "same" padding, computed from the input's size), in closed form where there is one."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

Transpose = Callable[[torch.Tensor], torch.Tensor]

# timm's weight-standardised convolutions (by class name): their forward standardises each output channel's weights
_STANDARDISED = {"StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"}
# timm's modules that pad their input at run time as TensorFlow's "same" padding does (by class name)
_SAME = {"Conv2dSame", "StdConv2dSame", "ScaledStdConv2dSame", "MaxPool2dSame", "AvgPool2dSame"}


def layout(tensor: torch.Tensor | None) -> torch.memory_format:
    """``torch.channels_last`` for a 4-D tensor laid out channels-last (and not also plainly contiguous), else
    ``torch.contiguous_format``: the layout to give weights that meet ``tensor`` in a convolution (the convolution
    would otherwise convert them on every call)."""
    if (tensor is not None and tensor.ndim == 4 and not tensor.is_contiguous()
            and tensor.is_contiguous(memory_format=torch.channels_last)):
        return torch.channels_last
    return torch.contiguous_format


def convolution_transpose(input, weight, stride, padding, dilation, groups) -> Transpose:
    """The transpose of the convolution of ``input`` with ``weight``: its input gradient alone (no weight gradient,
    no autograd graph)."""

    def transpose(vector):
        return torch.ops.aten.convolution_backward(
            vector, input, weight, None, stride, padding, dilation, False, [0] * len(stride), groups,
            [True, False, False],
        )[0]

    return transpose


def linearised(function: Callable[[torch.Tensor], torch.Tensor], input: torch.Tensor) -> tuple:
    """Return ``function(input)`` and a function that applies its transpose (vector-Jacobian product), by autograd:
    for maps whose transpose has no closed form here."""
    with torch.enable_grad():
        point = input.detach().requires_grad_()
        output = function(point)

    def transpose(vector):
        (result,) = torch.autograd.grad(output, point, vector, retain_graph=True)
        return result

    return output.detach(), transpose


def effective_weight(module: torch.nn.Module) -> torch.Tensor:
    """The weights ``module``'s forward computes with: its own, or for a weight-standardised convolution each output
    channel's weights less their mean over their standard deviation (``eps`` added to the variance), times
    ``gain * scale`` for the scaled kind."""
    weight = module.weight.detach()
    if type(module).__name__ not in _STANDARDISED:
        return weight
    flat = weight.reshape(weight.shape[0], -1)
    variance, mean = torch.var_mean(flat, dim=1, unbiased=False, keepdim=True)
    standard = (flat - mean) * (variance + module.eps).rsqrt()
    if hasattr(module, "gain"):
        standard = standard * (module.gain.detach() * module.scale).reshape(-1, 1)
    return standard.reshape_as(weight)


def same_padding(module: torch.nn.Module, input: torch.Tensor) -> tuple[int, int, int, int] | None:
    """``(left, right, top, bottom)`` that ``module`` pads ``input`` with at run time ("same" padding: the output
    ``ceil(size / stride)`` pixels a side), or None for a module that pads statically."""
    if type(module).__name__ not in _SAME or not getattr(module, "same_pad", True):
        return None
    pads = []
    for axis in (-1, -2):
        size = input.shape[axis]
        kernel, stride, dilation = (_pair(getattr(module, key, 1))[axis] for key in ("kernel_size", "stride",
                                                                                      "dilation"))
        total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def padded(input: torch.Tensor, padding: tuple[int, int, int, int] | None) -> tuple[torch.Tensor, Transpose]:
    """``input`` padded with zeros (as much as ``padding`` says, none for None) and the map back from a tensor of the
    padded size to the input's: its border cut off."""
    if padding is None or not any(padding):
        return input, lambda vector: vector
    left, right, top, bottom = padding
    height, width = input.shape[-2:]
    return F.pad(input, padding), lambda vector: vector[..., top:top + height, left:left + width]


def closed_form(module: torch.nn.Module) -> bool:
    """Whether the map of ``module`` (a linear layer or a convolution) has its transpose in closed form here."""
    if isinstance(module, torch.nn.Linear):
        return True
    return (isinstance(module, torch.nn.modules.conv._ConvNd)
            and not isinstance(module, torch.nn.modules.conv._ConvTransposeNd)
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def weighted_transpose(module: torch.nn.Module, input: torch.Tensor, weight: torch.Tensor) -> Transpose:
    """The transpose of ``module``'s map of ``input`` with ``weight``, for a module with a :py:func:`closed_form`:
    the transpose alone, for a map whose image is known without computing it."""
    if isinstance(module, torch.nn.Linear):
        return lambda vector: vector @ weight
    source, crop = padded(input, same_padding(module, input))
    transpose = convolution_transpose(source, weight, module.stride, module.padding, module.dilation, module.groups)
    return lambda vector: crop(transpose(vector))


def weighted_map(module: torch.nn.Module, input: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None = None) -> tuple:
    """``(f(input), transpose of f)`` for the convolution (also transposed) or linear layer ``module`` with ``weight`` in place of its
    own and no bias, padded as its forward pads; the transpose in closed form where there is one. ``bias``: added to
    ``f(input)`` by the product itself (free), for a module with a :py:func:`closed_form` only."""
    with torch.no_grad():
        if isinstance(module, torch.nn.Linear):
            return F.linear(input, weight, bias), weighted_transpose(module, input, weight)
        if isinstance(module, torch.nn.modules.conv._ConvTransposeNd):  # upsampling: its forward's output padding
            transposed = getattr(F, f"conv_transpose{input.ndim - 2}d")
            return linearised(lambda x: transposed(x, weight, None, module.stride, module.padding,
                                                   module.output_padding, module.groups, module.dilation), input)
        if closed_form(module):
            source, crop = padded(input, same_padding(module, input))
            transpose = convolution_transpose(source, weight, module.stride, module.padding, module.dilation,
                                              module.groups)
            return module._conv_forward(source, weight, bias), lambda vector: crop(transpose(vector))
    return linearised(lambda x: module._conv_forward(x, weight, None), input)
