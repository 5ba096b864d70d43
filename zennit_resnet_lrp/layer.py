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
