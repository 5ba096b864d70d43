"""``attribute()``: the one entry point that puts a composite on a model, computes relevance and takes it off."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch
from zennit.composites import COMPOSITES, EpsilonGammaBox
from zennit.core import Composite

from .canonizers import ResidualCanonizer, residual_blocks
from .composites import DEFAULT_METHOD, ResidualComposite, _imagenet_bounds
from .snapshot import evaluating
from .tracing import ModuleRelevance, RelevanceRecorder

STARTS = ("softmax", "logit", "one")


class AttributionError(ValueError):
    """Bad input to :py:func:`attribute` (wrong shape, unknown method, target out of range, ...)."""


class ConservationWarning(UserWarning):
    """The input relevance misses the relevance put in at the output by more than the tolerance."""


@dataclass
class Attribution:
    """The result of :py:func:`attribute`.

    Attributes
    ----------
    relevance : torch.Tensor
        Input relevance, shape (N, C, H, W).
    target : torch.Tensor
        The explained class of each sample, shape (N,).
    start : torch.Tensor
        The relevance put in at the output for each sample, shape (N,).
    output : torch.Tensor
        The model's output (logits), shape (N, K).
    blocks : list of ModuleRelevance or None
        Relevance entering and leaving each residual block, when ``record_blocks`` was asked for.
    """

    relevance: torch.Tensor
    target: torch.Tensor
    start: torch.Tensor
    output: torch.Tensor
    blocks: list[ModuleRelevance] | None = field(default=None)

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
        """``|total - start| / |start|`` per sample."""
        return relative_error(self.total, self.start)

    @property
    def probabilities(self) -> torch.Tensor:
        """Softmax of the output, shape (N, K)."""
        return self.output.softmax(1)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``|value - reference| / |reference|`` (absolute error where the reference is 0)."""
    scale = reference.abs()
    return (value - reference).abs() / scale.where(scale > 0, torch.ones_like(scale))


def make_composite(method: str | Composite = DEFAULT_METHOD) -> Composite:
    """Return a fresh composite for ``method``: a name in zennit's registry (ours or zennit's) or an instance.

    zennit's own composites get a residual canonizer with batch-norm merging (as zennit's ``ResNetCanonizer``
    would give them), so their ``Norm`` rule applies at the sums instead of relevance doubling at every block.
    """
    if isinstance(method, Composite):
        return method
    if not isinstance(method, str) or method not in COMPOSITES:
        raise AttributionError(
            f"unknown method {method!r}; choose one of: {', '.join(sorted(COMPOSITES))}"
        )
    cls = COMPOSITES[method]
    if issubclass(cls, ResidualComposite):
        return cls()
    kwargs = {"canonizers": [ResidualCanonizer(merge_batchnorm=True)]}
    if issubclass(cls, EpsilonGammaBox):  # its box rule needs bounds: those of ImageNet-normalised images
        kwargs["low"], kwargs["high"] = _imagenet_bounds()
    return cls(**kwargs)


def _target_tensor(target, count: int) -> torch.Tensor:
    try:
        target = torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError) as error:
        raise AttributionError(f"target must be class indices, not {target!r}") from error
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise AttributionError("target must hold integer class indices")
    if target.ndim == 0:
        target = target.expand(count)
    if target.ndim != 1 or target.numel() != count:
        raise AttributionError(f"target has {target.numel()} entries for {count} samples; give one per sample")
    return target.long()


def _targets(target, output: torch.Tensor) -> torch.Tensor:
    classes = output.shape[1]
    if target is None:
        return output.argmax(1)
    target = target.to(output.device)
    bad = (target < 0) | (target >= classes)
    if bool(bad.any()):
        raise AttributionError(
            f"target {int(target[bad][0])} is out of range for a model with {classes} classes (0..{classes - 1})"
        )
    return target.long()


def _start_values(output: torch.Tensor, target: torch.Tensor, start: str) -> torch.Tensor:
    picked = output.gather(1, target[:, None])[:, 0]
    if start == "softmax":
        return output.softmax(1).gather(1, target[:, None])[:, 0]
    if start == "logit":
        return picked
    return torch.ones_like(picked)


def _check_inputs(model: torch.nn.Module, inputs: torch.Tensor, start: str) -> None:
    if not isinstance(inputs, torch.Tensor):
        raise AttributionError(f"inputs must be a torch.Tensor, not {type(inputs).__name__}")
    if inputs.ndim != 4:
        raise AttributionError(
            f"inputs must have shape (N, C, H, W), got {tuple(inputs.shape)}; add a batch dimension with unsqueeze(0)"
        )
    if inputs.shape[0] == 0:
        raise AttributionError("inputs hold no samples (N = 0)")
    if not inputs.is_floating_point():
        raise AttributionError(f"inputs must be floating point, not {inputs.dtype}")
    if start not in STARTS:
        raise AttributionError(f"unknown start {start!r}; choose one of {', '.join(STARTS)}")
    param = next(model.parameters(), None)
    if param is not None and (param.dtype != inputs.dtype or param.device != inputs.device):
        raise AttributionError(
            f"inputs are {inputs.dtype} on {inputs.device} but the model is {param.dtype} on {param.device}; "
            "move one to match the other"
        )


def attribute(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    method: str | Composite = DEFAULT_METHOD,
    target: int | Sequence[int] | torch.Tensor | None = None,
    start: str = "softmax",
    batch_size: int | None = None,
    record_blocks: bool = False,
    tolerance: float | None = 0.05,
) -> Attribution:
    """Explain ``model``'s predictions on ``inputs`` with LRP.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier returning logits (N, K). It is left exactly as it was: same parameter objects, same values,
        same training flags, no hooks, no gradients, also when an exception is raised.
    inputs : torch.Tensor
        Batch (N, C, H, W) on the model's device and with its dtype. Channels-last batches work too (faster on
        the CPU for larger batches; see the README's Performance section); the relevance comes back in their layout.
    method : str or Composite
        A name registered in ``zennit.composites.COMPOSITES`` (ours: ``flows_skip_conservative`` (the default),
        ``flows_skip``, ``flows_skip_simple``, ``latest``, ``simple``, ``*_split``; or zennit's) or an instance.
    target : int, sequence of int, tensor or None
        Class to explain per sample; None explains each sample's top-1 class.
    start : {"softmax", "logit", "one"}
        The relevance put in at the target: its probability (the paper), its logit, or 1.
    batch_size : int, optional
        Process at most this many samples at a time (the result is the same; memory is bounded).
    record_blocks : bool
        Also record the relevance entering and leaving every residual block (``Attribution.blocks``).
    tolerance : float or None
        Warn (:py:class:`ConservationWarning`) when ``|input relevance - start| / |start|`` exceeds this for a sample,
        naming the module where relevance changes; None to skip the check.

    Returns
    -------
    Attribution
    """
    _check_inputs(model, inputs, start)
    if batch_size is not None and batch_size < 1:
        raise AttributionError(f"batch_size must be at least 1, not {batch_size}")
    composite = make_composite(method)
    if isinstance(composite, ResidualComposite) and not residual_blocks(model):
        warnings.warn(
            f"{type(model).__name__} has no torchvision BasicBlock or Bottleneck: no relevance splitting applies",
            stacklevel=2,
        )
    if target is not None:
        target = _target_tensor(target, inputs.shape[0])
    result = _run(model, inputs, composite, target, start, batch_size or inputs.shape[0], record_blocks)
    if tolerance is not None:
        _warn_if_not_conserved(model, inputs, composite, result, start, tolerance)
    return result


def _run(model, inputs, composite, target, start, size, record_blocks, watch=None) -> Attribution:
    """Register ``composite`` (and a recorder of the blocks, or of the modules named in ``watch``) once, attribute
    chunk by chunk, and restore the model."""
    recorder = None
    chunks = []
    with evaluating(model):
        try:
            composite.register(model)
            if record_blocks or watch is not None:
                modules = dict(model.named_modules())
                names = watch if watch is not None else [name for name, _ in residual_blocks(model)]
                recorder = RelevanceRecorder({name: modules[name] for name in names}).register()
            for begin in range(0, inputs.shape[0], size):
                chunk = inputs[begin:begin + size].detach().clone().requires_grad_(True)
                with torch.enable_grad():
                    output = model(chunk)
                    if output.ndim != 2:
                        raise AttributionError(
                            f"the model returned shape {tuple(output.shape)}; expected logits (N, K)"
                        )
                    output_values = output.detach()
                    chosen = _targets(None if target is None else target[begin:begin + size], output_values)
                    values = _start_values(output_values, chosen, start)
                    seed = torch.zeros_like(output).scatter(1, chosen[:, None], values[:, None])
                    (relevance,) = torch.autograd.grad(output, chunk, seed)
                chunks.append((relevance.detach(), chosen, values, output_values))
            blocks = recorder.results() if recorder is not None else None
        finally:
            if recorder is not None:
                recorder.remove()
            composite.remove()
    relevance, chosen, values, outputs = (torch.cat(column) for column in zip(*chunks))
    return Attribution(relevance, chosen, values, outputs, blocks)


def _warn_if_not_conserved(model, inputs, composite, result, start, tolerance) -> None:
    """Warn when relevance grew by more than ``tolerance`` (a residual addition nobody split) or, for a composite
    that promises conservation, was lost. The paper's variants lose relevance by design (the max-pool stand-in)."""
    error = result.conservation_error
    signed = (result.total - result.start) * result.start.sign()
    suspicious = signed > 0 if not getattr(composite, "conservative", False) else torch.ones_like(signed, dtype=bool)
    error = torch.where(suspicious, error, torch.zeros_like(error))
    worst = int(error.argmax())
    if float(error[worst]) <= tolerance:
        return
    ratio = float(result.total[worst] / result.start[worst])
    # run the worst sample again, watching every module, to say where relevance appears or vanishes
    names = [name for name, _ in model.named_modules() if name]
    sample = inputs[worst:worst + 1]
    traced = _run(model, sample, composite, result.target[worst:worst + 1], start, 1, False, watch=names)
    where = _culprits(traced.blocks or [], float(result.start[worst]), tolerance, dict(model.named_modules()))
    if where and ratio > 1:
        hint = (f"; it grows in {where}: a residual addition the canonizer does not know (x + f(x) in a custom "
                "forward) doubles relevance; route it through zennit_resnet_lrp.ResidualSum")
    elif where:
        hint = f"; it is lost in {where}"
    else:
        hint = ""
    warnings.warn(
        f"input relevance is {ratio:.4g} x the start relevance for sample {worst} "
        f"(error {float(error[worst]):.2%} > tolerance {tolerance:.2%}){hint}",
        ConservationWarning,
        stacklevel=3,
    )


def _culprits(records: list[ModuleRelevance], start: float, tolerance: float, modules: dict) -> str:
    """Name the innermost modules whose input and output relevance differ by more than the tolerance."""
    records = [r for r in records if r.output.numel() == 1 and r.input.numel() == 1]
    bad = [r for r in records if abs(float(r.input - r.output)) > tolerance * abs(start)]
    innermost = [r for r in bad if not any(o.name.startswith(r.name + ".") for o in bad)]
    return ", ".join(
        f"'{r.name}' ({type(modules[r.name]).__name__}: {float(r.output):.4g} in, {float(r.input):.4g} out)"
        for r in innermost[:3]
    )
