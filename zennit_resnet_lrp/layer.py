"""The explicit residual sum that canonizers route a block's addition through."""
from __future__ import annotations

import torch
from zennit.layer import Sum


class ResidualSum(Sum):
    """Sum of a residual block's two branches, ``h_out = h_m + h_s``.

    The input is the two branches stacked on the last dimension: index ``RESIDUAL`` (0) holds the residual
    branch ``h_m``, index ``SKIP`` (1) the skip branch ``h_s``. Being a :py:class:`zennit.layer.Sum`, zennit's own
    composites (which map ``Sum`` to ``Norm``) apply to it unchanged.

    Parameters
    ----------
    identity_skip : bool
        True when the skip is the identity (an "S-block"), False when it is a projection (``downsample``,
        a "D-block"). Splitting rules read this to treat the two kinds differently.

    Attributes
    ----------
    separate_branches : bool
        How :py:meth:`add` hands the branches to ``forward``: stacked (False, the default: zennit's ``Sum`` rules and
        every hook read one input) or as two tensors (True: set while a rule that takes them separately, the fast
        :py:class:`~zennit_resnet_lrp.rules.RelevanceSplit`, is registered; no stacking, no copy).
    """

    RESIDUAL = 0
    SKIP = 1
    separate_branches = False

    def __init__(self, identity_skip: bool = True) -> None:
        super().__init__(dim=-1)
        self.identity_skip = identity_skip

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The stacked branches summed over the last dimension; or, given two tensors, their sum."""
        if len(inputs) == 2:
            return inputs[0] + inputs[1]
        return super().forward(*inputs)

    def add(self, residual: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Return ``residual + skip`` through this module, so that rules and hooks on it see both branches
        (stacked, as zennit's ``Sum`` rules expect, unless :py:attr:`separate_branches`)."""
        if self.separate_branches:
            return self(residual, skip)
        return self(torch.stack([residual, skip], dim=-1))

    def extra_repr(self) -> str:
        return f"identity_skip={self.identity_skip}"


class GatedProduct(torch.nn.Module):
    """A multiplicative gate, ``features * gate``: squeeze-excitation, ECA and other ``x * sigmoid(...)`` attention.

    Canonizers route such products through this module so that a rule can treat the gate as a weight
    (:py:class:`~zennit_resnet_lrp.rules.GateAsWeight`: all relevance to the gated features, none to the gate),
    which conserves relevance where the product's gradient would hand it to both factors.
    """

    def forward(self, features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return features * gate


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
