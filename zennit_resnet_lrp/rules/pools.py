"""Pooling and resampling rules: proportional through average pools and upsampling, and the max-pool rules (the
reference's average stand-in, and the two conserving ones). Built on :py:class:`~.rules.PositiveProportional`; the
formulas are in ``docs/method.md``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from .core import RelevanceRule
from .maps import convolution_transpose, layout, linearised, padded, same_padding
from .zplus import PositiveProportional


class PoolProportional(PositiveProportional):
    """Proportional rule for average pooling and upsampling (the module itself is the linear map):
    ``R_i = a_i (1/n) R / (avgpool(a) + epsilon)``; for ``nn.Upsample``, ``R_i = a_i sum_k U_ki R_k / (U a)_k``."""

    def maps(self, module, input):
        # the class forward: the instance one is the fast path's override
        return [(input, *linearised(lambda x: type(module).forward(module, x), input))]


class MaxPoolAverageStandIn(PositiveProportional):
    """The reference implementation's max-pool rule: a 2x2, stride-2 average pool over the max-pool's input stands
    in for the max-pool in the relevance pass. Its windows differ from the max-pool's, so relevance is lost
    wherever a 2x2 window is all zero: use it only to reproduce the reference. Deviation: the stand-in rounds its
    output size up (``ceil_mode``), the reference's down; the same on even sizes (112 at 224x224 inputs), and odd
    sizes, where the reference's stand-in would not fit the max-pool's output, work."""

    def maps(self, module, input):
        return [(input, *linearised(lambda x: F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True), input))]


class MaxPoolProportional(PositiveProportional):
    """Conservative max-pool rule: each output's relevance is split over its real window in proportion to the
    input values (the sum pool over the max-pool's own windows)."""

    def maps(self, module, input):
        if any(step != 1 for step in (module.dilation if isinstance(module.dilation, tuple) else (module.dilation,))):
            raise ValueError("MaxPoolProportional supports max-pools without dilation only")
        dynamic = same_padding(module, input)  # timm's "same" max-pools pad at run time (with -inf: never the max)
        # the pool's own number of spatial dimensions (its input may come without a batch dimension)
        spatial = 1 if isinstance(module, torch.nn.MaxPool1d) else 3 if isinstance(module, torch.nn.MaxPool3d) else 2
        if module.ceil_mode or spatial != 2 or input.ndim != 4:  # and 1-D and 3-D pools (signals, clips), unbatched
            average = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial - 1]
            padding, widths = module.padding, (0, 0)
            if not module.ceil_mode:  # zeros padded first: avg_pool3d refuses inputs smaller than the kernel unpadded
                sides = tuple(padding) if isinstance(padding, (tuple, list)) else (padding,) * spatial
                padding, widths = 0, tuple(width for width in reversed(sides) for _ in range(2))
            return [(input, *linearised(lambda x: average(
                F.pad(padded(x, dynamic)[0], widths), module.kernel_size, module.stride, padding, module.ceil_mode,
                count_include_pad=True), input))]
        # the same average pool as a depthwise convolution with weights 1/k^2 (zero padding counted): several times
        # faster than avg_pool2d and its autograd backward on contiguous (NCHW) tensors
        kernel, stride, padding = (_pair(getattr(module, key)) for key in ("kernel_size", "stride", "padding"))
        channels = input.shape[1]
        weight = torch.full((channels, 1, *kernel), 1 / (kernel[0] * kernel[1]), dtype=input.dtype,
                            device=input.device).contiguous(memory_format=layout(input))
        source, crop = padded(input, dynamic)
        output = F.conv2d(source, weight, None, stride, padding, 1, channels)
        transpose = convolution_transpose(source, weight, stride, padding, (1, 1), channels)
        return [(input, output, lambda vector: crop(transpose(vector)))]


class MaxPoolWinnerTakesAll(RelevanceRule):
    """Conservative max-pool rule: each output's relevance goes to the input that won the max (its gradient)."""

    keeps = (0,)

    def relevance(self, module, inputs, relevance):
        _, transpose = linearised(lambda x: type(module).forward(module, x), inputs[0])
        return transpose(relevance)


class PaddingToEdge(RelevanceRule):
    """For zero (or constant) padding: the relevance that reaches the padding goes to the input element at the edge
    it extends, the adjoint of replicate padding: ``R_in = P_edge^T R``. Zero padding's own adjoint (cropping) would
    lose it, and the padding gets relevance whenever a rule spreads relevance flat (a unit no input supports).
    Negative widths crop: what they cut off gets nothing. A :py:class:`~.layer.Pad` gives its widths with the call."""

    keeps = (1,)  # a Pad's widths; the padding layers have theirs as an attribute

    def relevance(self, module, inputs, relevance):
        pad = tuple(inputs[1] if len(inputs) > 1 else module.padding)
        if relevance.ndim != len(pad) // 2 + 2:  # no batch dimension: zero padding's own adjoint
            return F.pad(relevance, tuple(-p for p in pad))
        # negative widths crop (NASNet shifts by one: (-1, 1, -1, 1)): the cropped-off input gets nothing
        grown = tuple(max(p, 0) for p in pad)
        return F.pad(to_edge(relevance, grown), tuple(-min(p, 0) for p in pad))


def to_edge(relevance: torch.Tensor, pad: tuple[int, ...]) -> torch.Tensor:
    """Relevance of a tensor padded by ``pad`` (``F.pad``'s order, widths >= 0, batch and channel dimensions
    first) moved off the padding onto the edge elements it extends: the adjoint of replicate padding."""
    shape = [*relevance.shape[:2]] + [size - pad[-2 * i - 2] - pad[-2 * i - 1]
                                      for i, size in enumerate(relevance.shape[2:])]
    with torch.enable_grad():
        source = relevance.new_zeros(shape, requires_grad=True)
        (result,) = torch.autograd.grad(F.pad(source, pad, mode="replicate"), source, relevance)
    return result
