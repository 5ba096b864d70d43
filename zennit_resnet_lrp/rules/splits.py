"""Rules of the operations a model's branches meet at: sums (Relevance Splitting, the paper's method, for residual
additions and sums over a dimension), products (gates as weights, a uniform split of two input-dependent factors), and
the layers that pass relevance as it is (batch norms, activations, scales).

Each rule says how relevance maps from a module's output to its inputs with plain tensor operations: no parameter is
ever modified. How and when a rule runs is :py:mod:`.core`'s business; the formulas are in ``docs/method.md``.
"""
from __future__ import annotations

from typing import Callable

import torch

from .core import RelevanceRule


class PassThrough(RelevanceRule):
    """Relevance passes unchanged (batch norm and activations in the paper's rules).

    The same as zennit's ``Pass``, run on this package's fast path
    (see :py:class:`~zennit_resnet_lrp.rules.core.RelevanceRule`).
    """

    keeps = ()

    def relevance(self, module, inputs, relevance):
        return relevance


class GateAsWeight(RelevanceRule):
    """For a :py:class:`~zennit_resnet_lrp.rewriting.modules.GatedProduct` ``features * gate``: the gate acts as a weight, so all
    relevance goes to the gated features and none to the gate (squeeze-excitation, ECA, ...)."""

    keeps = ()
    silent = (1,)  # the gate

    def relevance(self, module, inputs, relevance):
        return relevance, None


class UniformSplit(RelevanceRule):
    """For a :py:class:`~zennit_resnet_lrp.rewriting.modules.Product` of input-dependent factors: each of the ``n`` factors gets
    ``R / n`` (the last what the others leave, so the parts add up to ``R`` exactly). For ``a * b`` this is the
    Shapley value of the product with respect to the zero baseline (each factor is worth ``ab / 2``), the uniform rule
    of AttnLRP (Achtibat et al. 2024); the gradient would hand the full relevance to both."""

    keeps = ()

    def relevance(self, module, inputs, relevance):
        part = relevance / len(inputs)
        return (*(part,) * (len(inputs) - 1), relevance - part * (len(inputs) - 1))


class RelevanceSplit(RelevanceRule):
    """Relevance Splitting at a :py:class:`ResidualSum` of operands ``h_i``: operand ``i`` gets ``rho_i R`` with
    ``sum_i rho_i = 1``, so the operands' relevance adds up to ``R`` element-wise. For a residual block's two
    operands, ``R_m = rho R`` to the residual branch and ``R_s = (1 - rho) R`` to the skip.

    Parameters
    ----------
    mode : {"ratio", "symmetric", "signed"}
        ``ratio``: ``rho_i = |h_i| / sum_j |h_j|``, an even split where all are 0. ``symmetric``: ``rho_i = 1/n``.
        ``signed``: ``rho_i = s_i h_i / (sum_j s_j h_j + epsilon)`` (``s_i`` the operand's sign), zennit's ``Norm``
        for sums, which conserves only up to the stabiliser and may hand out negative shares.
    split_identity : bool
        Split at identity skips too. If False, an identity skip gets nothing and the other operands share all, as
        in the reference's ``latest`` and ``simple`` variants.
    epsilon : float
        The stabiliser of the ``signed`` mode (zennit's default, 1e-6).
    fast : bool
        See :py:class:`~zennit_resnet_lrp.rules.core.RelevanceRule`.
    """

    MODES = ("ratio", "symmetric", "signed")
    constants_as_zero = True  # an operand computed from sizes alone (a position encoding) is a bias: it gets nothing

    def __init__(self, mode: str = "ratio", split_identity: bool = True, epsilon: float = 1e-6,
                 fast: bool = True) -> None:
        super().__init__(fast)
        if mode not in self.MODES:
            raise ValueError(f"unknown split mode {mode!r}; choose one of {', '.join(self.MODES)}")
        self.mode, self.split_identity, self.epsilon = mode, split_identity, float(epsilon)

    @property
    def keeps(self) -> tuple[int, ...] | None:
        return () if self.mode == "symmetric" else None

    def relevance(self, module, inputs, relevance):
        count = len(inputs)
        shares = list(range(count))
        if getattr(module, "identity_skip", False) and not self.split_identity:
            shares.remove(getattr(module, "skip", -1) % count)  # the identity skip gets nothing
        result = [None] * count
        if len(shares) == 1:
            result[shares[0]] = relevance
        elif self.mode == "symmetric":
            part = relevance / len(shares)
            for index in shares[:-1]:
                result[index] = part
            result[shares[-1]] = relevance - part * (len(shares) - 1)
        elif self.mode == "ratio":
            self._ratio([inputs[index] for index in shares], relevance, shares, result)
        else:
            self._signed(module, inputs, relevance, result)
        return tuple(result)

    @staticmethod
    def _ratio(operands: list, relevance: torch.Tensor, shares: list, result: list) -> None:
        """``rho_i = |h_i| / sum_j |h_j|``, an even split where all are 0; the last operand gets what the others
        leave, so the shares add up to ``R`` exactly."""
        magnitudes = [operand.abs() for operand in operands]
        total = magnitudes[0] + magnitudes[1]  # a new tensor of the broadcast shape
        for magnitude in magnitudes[2:]:
            total = total + magnitude
        even = 1 / len(operands)
        same = total.shape == relevance.shape
        parts = []
        for magnitude in magnitudes[:-1]:
            if same and magnitude.shape == total.shape:  # in place: these tensors are ours; the split is memory-bound
                parts.append(magnitude.div_(total).nan_to_num_(nan=even).mul_(relevance))
            else:
                parts.append((magnitude / total).nan_to_num_(nan=even) * relevance)
        rest = torch.sub(relevance, parts[0], out=total) if same else relevance - parts[0]  # total is spent
        for part in parts[1:]:
            rest.sub_(part)
        for index, part in zip(shares, [*parts, rest]):
            result[index] = part

    def _signed(self, module, inputs, relevance, result) -> None:
        signs = getattr(module, "signs", None) or (1,) * len(inputs)
        output = sum(sign * operand for sign, operand in zip(signs, inputs))
        scaled = relevance / (output + ((output == 0).to(output) + output.sign()) * self.epsilon)  # zennit's
        for index, (sign, operand) in enumerate(zip(signs, inputs)):
            result[index] = sign * operand * scaled


class ReductionSplit(RelevanceSplit):
    """Relevance Splitting at a :py:class:`~zennit_resnet_lrp.rewriting.modules.SumOver`, the sum of the slices of one tensor along
    a dimension: slice ``i`` gets ``|x_i| / sum_j |x_j|`` of ``R`` (ratio; an even split where all are 0) or ``1/n``
    (symmetric). See :py:class:`RelevanceSplit` for the parameters (an identity skip does not arise)."""

    keeps = (0,)

    def relevance(self, module, inputs, relevance):
        values = inputs[0]
        dims = module.dim if isinstance(module.dim, (tuple, list)) else (module.dim,)
        dims = tuple(sorted(dim % values.ndim for dim in dims))
        if not module.keepdim:
            for dim in dims:
                relevance = relevance.unsqueeze(dim)
        count = 1
        for dim in dims:
            count *= values.shape[dim]
        if self.mode == "symmetric":
            return relevance.expand_as(values) / count
        return split_by_magnitude(values, lambda x: x.sum(dims, keepdim=True), lambda r: r, relevance, count)


def split_by_magnitude(values: torch.Tensor, total: Callable, spread: Callable, relevance: torch.Tensor,
                       count) -> torch.Tensor:
    """The ratio split of a sum of entries of ``values`` (``total``: the summing map, ``spread``: its transpose, each
    output's value back to the entries that add up to it): entry ``i`` gets ``|x_i| / sum_j |x_j|`` of its sum's
    relevance, an even share (``1 / count``: how many entries each sum has) where they are all 0."""
    magnitude = values.abs()
    sums = total(magnitude)
    supported = sums > 0
    scaled = torch.where(supported, relevance / sums.where(supported, torch.ones_like(sums)), 0)
    even = torch.where(supported, 0, relevance / count)
    return magnitude * spread(scaled) + spread(even)
