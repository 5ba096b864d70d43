"""Rules for attention: the conservative default holds the attention weights constant, so that relevance flows through
the values (Ali et al. 2022, "XAI for Transformers: Better Explanations through Conservative Propagation"); AttnLRP's
rules (Achtibat et al. 2024) for comparison: the softmax rule and the bilinear rule for products of two
input-dependent tensors. The formulas are in ``docs/method.md``."""
from __future__ import annotations

import torch

from .core import RelevanceRule
from .maps import linearised
from .zplus import PositiveProportional


class _Weighted:
    """A linear map of the values with the attention weights held constant: what :py:class:`AttentionValues` hands to
    the proportional machinery in place of a module."""

    __slots__ = ("module", "weights")

    def __init__(self, module: torch.nn.Module, weights: torch.Tensor) -> None:
        self.module, self.weights = module, weights

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        return type(self.module).forward(self.module, self.weights, values)

    def linearised(self, values: torch.Tensor) -> tuple:
        """``(A v, transpose)``; for a plain matrix product the transpose ``s -> A^T s`` in closed form (autograd's
        graph of the product costs as much as the product on small attention windows)."""
        if getattr(self.module, "equation", None) is not None or self.weights.ndim < 2 or values.ndim < 2:
            return linearised(self, values)
        with torch.no_grad():
            transposed = self.weights.transpose(-2, -1)
            return self.weights @ values, lambda vector: transposed @ vector


def without_subnormals(weights: torch.Tensor) -> torch.Tensor:
    """``weights`` with their subnormal entries (below the dtype's smallest normal number in magnitude) set to zero.

    A softmax over masked logits gives such weights: Swin's shifted windows add -100 to the logits of tokens from
    another region, and ``e^-100`` is subnormal in float32. A CPU multiplies subnormals tens of times slower than
    normal numbers (measured: 13 ms instead of 0.8 ms for one window attention's rule), and their share of any sum is
    below its rounding. The rule then redistributes through the map with them at zero, in its denominator and its
    transposes alike: exactly conserving for that map."""
    tiny = torch.finfo(weights.dtype).tiny
    return weights.masked_fill(weights.abs() < tiny, 0)


class AttentionValues(PositiveProportional):
    """For an :py:class:`~zennit_resnet_lrp.rewriting.modules.AttentionProduct` ``A @ v``: the weights ``A`` held constant, the
    values get z+ through the linear map ``v -> A v``: ``R_v = v+ * A+^T (R / z) + v- * A-^T (R / z)`` with
    ``z = A+ v+ + A- v-`` (per head and value channel), spread by ``|A|`` where ``z = 0``; the weights get nothing,
    and weights below the smallest normal number count as zero (:py:func:`without_subnormals`).
    For a softmax's weights (non-negative) this is ``v+ * A^T (R / (A v+))``; signed weights come from mixing the
    probabilities across heads ("talking heads"). See :py:class:`~zennit_resnet_lrp.rules.PositiveProportional` for
    the parameters."""

    keeps = None  # the weights and the values
    silent = (0,)  # the weights: nothing behind them (logits, softmax) is walked
    nonnegative_map = True

    def relevance(self, module, inputs, relevance):
        weights, values = inputs
        return None, self.proportional(_Weighted(module, without_subnormals(weights.detach())), values.detach(),
                                       relevance)

    def maps(self, weighted, values):
        positive = values.clamp(min=0)
        if bool(weighted.weights.amin() >= 0):
            return [(positive, *weighted.linearised(positive))]
        negative = values.clamp(max=0)
        plus = _Weighted(weighted.module, weighted.weights.clamp(min=0))
        minus = _Weighted(weighted.module, weighted.weights.clamp(max=0))
        return [(positive, *plus.linearised(positive)), (negative, *minus.linearised(negative))]

    def flat_maps(self, weighted, values):
        yield _Weighted(weighted.module, weighted.weights.abs()).linearised(torch.ones_like(values))


class BilinearSplit(RelevanceRule):
    """For a product of two input-dependent tensors contracted over an index, ``out_ik = sum_j a_ij b_jk`` (a
    :py:class:`~zennit_resnet_lrp.rewriting.modules.MatrixProduct`, or an attention product under AttnLRP): the relevance of each
    output goes to the terms ``a_ij b_jk`` in proportion to them, then half to each factor (the uniform rule).

    Parameters
    ----------
    mode : {"positive", "signed"}
        ``positive``: the positive terms only (``a+ b+ + a- b-``), a denominator that is zero only where every term is
        (then spread evenly over the index): conserving and finite. ``signed``: every term, the denominator stabilised
        by ``epsilon`` with its sign (AttnLRP's epsilon rule): relevance is lost where terms cancel.
    epsilon : float
    fast : bool
    """

    def __init__(self, mode: str = "positive", epsilon: float = 1e-6, fast: bool = True) -> None:
        super().__init__(fast)
        if mode not in ("positive", "signed"):
            raise ValueError(f"unknown bilinear mode {mode!r}; choose positive or signed")
        self.mode, self.epsilon = mode, float(epsilon)

    def relevance(self, module, inputs, relevance):
        first, second = (tensor.detach() for tensor in inputs)

        def product(a, b):  # the module's own map
            return type(module).forward(module, a, b)
        if self.mode == "signed":
            output = product(first, second)
            scaled = relevance / (output + self.epsilon * (2 * (output >= 0).to(output) - 1))
            to_first, to_second = _vjp(product, first, second, scaled)
            return first * to_first / 2, second * to_second / 2
        pairs = [(first.clamp(min=0), second.clamp(min=0)), (first.clamp(max=0), second.clamp(max=0))]
        output = product(*pairs[0]) + product(*pairs[1])
        tiny = torch.finfo(output.dtype).tiny ** 0.5
        scaled = (relevance / output.clamp(min=tiny)).masked_fill(output <= tiny, 0)
        result_first, result_second = torch.zeros_like(first), torch.zeros_like(second)
        for a, b in pairs:
            to_first, to_second = _vjp(product, a, b, scaled)
            result_first = result_first + a * to_first / 2
            result_second = result_second + b * to_second / 2
        stray = relevance * (output <= tiny)
        if bool(stray.any()):  # no positive term: evenly over the contracted index
            ones_first, ones_second = torch.ones_like(first), torch.ones_like(second)
            count = product(ones_first, ones_second)
            to_first, to_second = _vjp(product, ones_first, ones_second, stray / count)
            result_first, result_second = result_first + to_first / 2, result_second + to_second / 2
        return result_first, result_second


def _vjp(product, first: torch.Tensor, second: torch.Tensor, vector: torch.Tensor) -> tuple:
    """The transposes of a bilinear map in each factor, applied to ``vector``: ``(vector b^T, a^T vector)`` for a
    matrix product."""
    with torch.enable_grad():
        first, second = first.detach().requires_grad_(), second.detach().requires_grad_()
        return torch.autograd.grad(product(first, second), (first, second), vector)


class SoftmaxRule(RelevanceRule):
    """AttnLRP's softmax rule: ``R_x = x * (R - s * sum(R))`` over the softmax's dimension, ``s`` its output (the
    softmax linearised at ``x``, its bias term dropped: relevance is not conserved). Masked logits (``-inf``) get
    nothing."""

    keeps = (0,)

    def relevance(self, module, inputs, relevance):
        logits = inputs[0].detach()
        dim = module.dim if module.dim is not None else -1
        output = logits.softmax(dim)
        result = logits * (relevance - output * relevance.sum(dim, keepdim=True))
        return result.masked_fill(torch.isinf(logits), 0)

