"""What an attribution returns (:py:class:`Attribution`) and how far its relevance is from the start relevance
(:py:func:`relative_error`): the types that the attribution and the conservation report both read."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .recording import ModuleRelevance
from .targets import Region


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``|value - reference| / |reference|`` (absolute error where the reference is 0)."""
    scale = reference.abs()
    return (value - reference).abs() / scale.where(scale > 0, torch.ones_like(scale))


@dataclass
class Attribution:
    """The result of :py:func:`~zennit_resnet_lrp.attribute`.

    Attributes
    ----------
    relevance : torch.Tensor
        Input relevance, shape (N, C, H, W).
    target : torch.Tensor
        The explained class of each sample, shape (N,).
    start : torch.Tensor
        The relevance put in at the output for each sample, shape (N,) (chosen by ``start_with``).
    output : torch.Tensor
        The model's output (logits), shape (N, K), or (N, K, H, W) for a dense output.
    blocks : list of ModuleRelevance or None
        Relevance entering and leaving each residual block, when ``record_blocks`` was asked for.
    untraced : list of (str, str, str)
        ``(name, class name, reason)`` of modules the residual canonizer could not trace (their additions and gates
        were not routed).
    absorbed : torch.Tensor or None
        Relevance that ended on the model's own tokens (class, distillation, register tokens) per sample, shape (N,):
        ``total + absorbed`` is what a conserving method keeps of ``start``. None where the model has no such tokens.
    uncovered : list of (str, str)
        ``(name, class name)`` of the modules with weights of their own that no rule covered: relevance crossed them
        as a plain gradient (an ``nn.LSTM`` that projects its state), which does not conserve it.
    functions : list of str
        Custom ``torch.autograd.Function`` classes in the forward: their own backward carried relevance there.
    region : Region or None
        The region of a dense output that was explained (``target``), None where classes were.
    """

    relevance: torch.Tensor
    target: torch.Tensor
    start: torch.Tensor
    output: torch.Tensor
    blocks: list[ModuleRelevance] | None = field(default=None)
    untraced: list[tuple[str, str, str]] = field(default_factory=list)
    absorbed: torch.Tensor | None = field(default=None)
    uncovered: list[tuple[str, str]] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    region: Region | None = field(default=None)

    @property
    def heatmap(self) -> torch.Tensor:
        """The relevance summed over channels, shape (N, H, W)."""
        return self.relevance.sum(1)

    @property
    def total(self) -> torch.Tensor:
        """The input relevance summed per sample, shape (N,)."""
        return self.relevance.flatten(1).sum(1)

    @property
    def conservation_error(self) -> torch.Tensor:
        """``|total + absorbed - start| / |start|`` per sample."""
        kept = self.total if self.absorbed is None else self.total + self.absorbed
        return relative_error(kept, self.start)

    @property
    def probabilities(self) -> torch.Tensor:
        """Softmax of the output over its classes, shape (N, K) (or (N, K, H, W) for a dense output)."""
        return self.output.softmax(1)
