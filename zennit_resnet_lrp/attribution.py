"""``attribute()``: the one entry point that puts a composite on a model, computes relevance and takes it off; and
``check_conservation()``, the same with the relevance at every block recorded into a report."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from zennit.core import Composite

from .composites import DEFAULT_METHOD, ResidualComposite
from .registry import UnknownCompositeError, make_composite
from .conservation import (
    DEFAULT_TOLERANCE, ConservationReport, ConservationWarning, Violation, design_losses, locate, worst_violation,
)
from .coverage import custom_functions, uncovered_modules
from .outputs import OutputChoice, OutputError, logits_of
from .targets import START_WITH, Region, TargetError, class_targets, start_relevance
from .rewriting import ResidualCanonizer, ResidualSum, residual_blocks
from .recording import AbsorptionRecorder, RelevanceRecorder
from .results import Attribution
from .snapshot import evaluating, freeze_parameters, thaw_parameters

class AttributionError(ValueError):
    """Bad input to :py:func:`attribute` (wrong shape, unknown method, target out of range, ...)."""


class TrainingModeWarning(UserWarning):
    """The model was handed over in training mode: it is attributed in eval mode and put back in training mode."""


def _check_inputs(model: torch.nn.Module, inputs: torch.Tensor, start_with: str) -> None:
    if not isinstance(inputs, torch.Tensor):
        raise AttributionError(f"inputs must be a torch.Tensor, not {type(inputs).__name__}")
    if inputs.ndim not in (3, 4, 5):
        raise AttributionError(
            f"inputs must be a batch of signals (N, C, L), images (N, C, H, W) or clips (N, C, T, H, W); got shape "
            f"{tuple(inputs.shape)}" + ("; add a batch dimension with unsqueeze(0)" if inputs.ndim == 2 else "")
        )
    if inputs.shape[0] == 0:
        raise AttributionError("inputs hold no samples (N = 0)")
    if not inputs.is_floating_point():
        raise AttributionError(f"inputs must be floating point, not {inputs.dtype}")
    if not bool(torch.isfinite(inputs).all()):
        bad = sorted({int(index) for index in (~torch.isfinite(inputs)).flatten(1).any(1).nonzero()[:, 0]})
        raise AttributionError(f"inputs hold NaN or infinite values (sample(s) {', '.join(map(str, bad[:5]))})")
    if start_with not in START_WITH:
        raise AttributionError(
            f"unknown start relevance {start_with!r}; choose one of {', '.join(START_WITH)}"
        )
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
    target: int | Sequence[int] | torch.Tensor | Region | None = None,
    start_with: str = "softmax",
    *,
    batch_size: int | None = None,
    record_blocks: bool = False,
    tolerance: float | None = DEFAULT_TOLERANCE,
    bounds: tuple | None = None,
    progress: Callable[[int], None] | None = None,
    output: OutputChoice = None,
) -> Attribution:
    """Explain ``model``'s predictions on ``inputs`` with LRP.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier returning logits (N, K), or an output holding them (see ``output``). It is attributed in eval mode (a model in training mode is put in eval
        mode for it, with a warning) and left exactly as it was: same parameter objects, same values, same training
        flags, no hooks, no gradients, also when an exception is raised.
    inputs : torch.Tensor
        Batch (N, C, H, W) on the model's device and with its dtype; also (N, C, T, H, W) clips for video models
        (3-D convolutions, pools and norms) and (N, C, L) signals. Channels-last batches work too (faster on
        the CPU for larger batches; see docs/benchmarks.md); the relevance comes back in their layout.
    method : str or Composite
        A name registered in ``zennit.composites.COMPOSITES`` (ours: ``flows_skip_conservative`` (the default),
        ``flows_skip``, ``flows_skip_simple``, ``latest``, ``simple``, ``*_split``; or zennit's) or an instance.
    target : int, sequence of int, tensor, Region or None
        Class to explain per sample; None explains each sample's top-1 class. For a dense output (N, K, H, W), a
        :py:class:`~zennit_resnet_lrp.targets.Region`: a class at some pixels (a segmentation's "why are these pixels
        class 12").
    start_with : {"softmax", "logit", "one"}
        The relevance put in at the target (``Attribution.start``): its probability (the paper), its logit, or 1
        (for a region: summed over its pixels).
    batch_size : int, optional
        Process at most this many samples at a time (the result is the same; memory is bounded).
    record_blocks : bool
        Also record the relevance entering and leaving every residual block (``Attribution.blocks``).
    tolerance : float or None
        Warn (:py:class:`ConservationWarning`) when ``|input relevance - start| / |start|`` exceeds this for a sample
        (the one tolerance, :py:data:`DEFAULT_TOLERANCE`, by default), naming the modules no rule covers and where
        relevance changes, or why the method loses relevance by design; None to skip the check.
    bounds : (low, high), optional
        Lowest and highest input values, for a ``method`` named by a composite with a box rule; ImageNet's by default.
    progress : callable, optional
        Called with the number of samples just done after each batch (for progress displays).
    output : str, int or callable, optional
        Where the logits are in what the model returns: a key or attribute name, an index, or a function of the
        output. By default a tensor as it is, else the ``logits`` of a Hugging Face ``ModelOutput`` (or any mapping
        or object holding them), a mapping's ``"out"`` (torchvision's segmentation models), the first of a tuple.

    Returns
    -------
    Attribution
    """
    _check_inputs(model, inputs, start_with)
    if model.training:
        warnings.warn(TrainingModeWarning(
            f"{type(model).__name__} is in training mode: attributed in eval mode (dropout off, batch norms with their "
            "running statistics), then put back in training mode"), stacklevel=2)
    if batch_size is not None and batch_size < 1:
        raise AttributionError(f"batch_size must be at least 1, not {batch_size}")
    try:
        composite = make_composite(method, bounds)
    except UnknownCompositeError as error:
        raise AttributionError(str(error)) from None
    if target is not None and not isinstance(target, Region):
        try:
            target = class_targets(target, inputs.shape[0])
        except TargetError as error:
            raise AttributionError(str(error)) from None
    watch = _blocks if record_blocks else None
    request = _Request(target, start_with, batch_size or inputs.shape[0], progress, output)
    result = _run(model, inputs, composite, request, watch)
    if tolerance is not None:
        violation = locate_violation(model, inputs, result, composite, start_with, tolerance=tolerance, output=output)
        if violation is not None:
            warnings.warn(ConservationWarning(violation), stacklevel=2)
    return result


def check_conservation(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    method: str | Composite = DEFAULT_METHOD,
    target: int | Sequence[int] | torch.Tensor | Region | None = None,
    start_with: str = "softmax",
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    output: OutputChoice = None,
) -> ConservationReport:
    """Attribute ``inputs`` and report the relevance at every residual block and at the input.

    Parameters
    ----------
    model, inputs, method, target, start_with, batch_size, progress, output
        As for :py:func:`attribute`.
    tolerance : float
        The largest acceptable ``|input relevance - start| / |start|`` per sample.

    Returns
    -------
    ConservationReport
    """
    try:
        composite = make_composite(method)
    except UnknownCompositeError as error:
        raise AttributionError(str(error)) from None
    result = attribute(model, inputs, composite, target, start_with, batch_size=batch_size, record_blocks=True,
                       tolerance=None, progress=progress, output=output)
    violation = locate_violation(model, inputs, result, composite, start_with, tolerance=tolerance, output=output)
    return ConservationReport(result, tolerance, violation)


@dataclass(frozen=True)
class _Request:
    """What to attribute: the targets (None: top-1), the start relevance, the chunk size, a progress callback and where
    the logits are in the model's output."""

    target: torch.Tensor | Region | None
    start_with: str
    batch_size: int
    progress: Callable[[int], None] | None = None
    output: OutputChoice = None


def _blocks(model: torch.nn.Module) -> list[str]:
    """The residual blocks, as named in the canonized model."""
    return [name for name, _ in residual_blocks(model)]


def _run(model, inputs, composite, request: _Request, watch: Callable[[torch.nn.Module], list[str]] | None = None,
         ) -> Attribution:
    """Attribute ``inputs`` chunk by chunk with ``composite`` registered once, recording the relevance at the
    modules ``watch`` names in the canonized model; the model is restored afterwards."""
    with _registered(model, composite, watch) as (recorder, absorption):
        chunks = [_attribute_chunk(model, inputs[begin:begin + request.batch_size], request, begin, absorption)
                  for begin in range(0, inputs.shape[0], request.batch_size)]
        blocks = recorder.results() if recorder is not None else None
        tokens = bool(absorption.modules)
        uncovered = uncovered_modules(model)
    relevance, chosen, values, outputs, absorbed, functions = zip(*chunks)
    relevance, chosen, values, outputs, absorbed = (torch.cat(column) for column in
                                                    (relevance, chosen, values, outputs, absorbed))
    untraced = [entry for canonizer in getattr(composite, "canonizers", [])
                if isinstance(canonizer, ResidualCanonizer) for entry in canonizer.untraced]
    return Attribution(relevance, chosen, values, outputs, blocks, untraced, absorbed if tokens else None, uncovered,
                       list(dict.fromkeys(name for names in functions for name in names)),
                       request.target if isinstance(request.target, Region) else None)


@contextmanager
def _registered(model, composite, watch) -> Iterator[tuple[RelevanceRecorder | None, AbsorptionRecorder]]:
    """``composite`` registered on ``model`` in eval mode, with a recorder of the watched modules and one of the
    relevance the model's own tokens absorb; taken off and the model restored exactly afterwards, also on errors."""
    recorder = absorption = None
    with evaluating(model), _parameters_constant(model):
        try:
            if isinstance(composite, ResidualComposite):
                composite.register(model, snapshot=False)  # evaluating() restores the model
                if watch is None and not any(isinstance(module, ResidualSum) for module in model.modules()):
                    warnings.warn(f"found no residual addition in {type(model).__name__}: no relevance splitting "
                                  "applies", stacklevel=5)
            else:
                composite.register(model)
            if watch is not None:
                modules = dict(model.named_modules())
                recorder = RelevanceRecorder({name: modules[name] for name in watch(model)},
                                             gradient_form=getattr(composite, "gradient_form", False)).register()
            absorption = AbsorptionRecorder(model).register()
            yield recorder, absorption
        finally:
            for hooks in (recorder, absorption):
                if hooks is not None:
                    hooks.remove()
            composite.remove()


@contextmanager
def _parameters_constant(model: torch.nn.Module) -> Iterator[None]:
    """The model's parameters frozen while it is attributed, for every composite (ours freeze them themselves while
    registered; zennit's do not): what is computed from parameters and sizes alone then does not require a gradient,
    and a split hands it no relevance (``constants_as_zero``); the model's own tokens are made leaves of their own."""
    frozen = freeze_parameters(model)
    try:
        yield
    finally:
        thaw_parameters(frozen)


def _attribute_chunk(model, chunk: torch.Tensor, request: _Request, begin: int,
                     absorption: AbsorptionRecorder) -> tuple:
    """``(relevance, target, start, output, absorbed, custom functions)`` of one chunk of inputs starting at sample
    ``begin``."""
    chunk = chunk.detach().clone().requires_grad_(True)
    absorption.take()  # nothing left from an earlier forward pass
    with torch.enable_grad():
        try:
            output = logits_of(_forward(model, chunk), request.output)
        except OutputError as error:
            raise AttributionError(str(error)) from None
        output_values = output.detach()
        functions = custom_functions(output)
        target = request.target
        if isinstance(target, torch.Tensor):
            target = target[begin:begin + chunk.shape[0]]
        try:
            chosen, values, seed = start_relevance(output_values, target, request.start_with, begin)
        except TargetError as error:
            raise AttributionError(str(error)) from None
        count = chunk.shape[0]
        tokens = absorption.take()
        # a token of the model's own that is not one per sample (TNT's pixel position embedding, broadcast over the
        # pixel tokens of every sample) gathers the relevance of the whole batch: its share per sample is asked for
        # sample by sample (the rules are linear in the relevance)
        shared = [token for token in tokens if count > 1 and (token.ndim == 0 or token.shape[0] != count)]
        own = [token for token in tokens if all(token is not other for other in shared)]
        relevance, *absorbed = torch.autograd.grad(output, [chunk, *own], seed, allow_unused=True,
                                                   retain_graph=bool(shared))
        per_sample = values.new_zeros(count)
        for token in absorbed:
            if token is not None:
                per_sample = per_sample + token.detach().flatten(1).sum(1)
        for sample in range(count if shared else 0):
            one = torch.zeros_like(seed)
            one[sample] = seed[sample]
            parts = torch.autograd.grad(output, shared, one, allow_unused=True, retain_graph=sample < count - 1)
            per_sample[sample] += sum(part.detach().sum() for part in parts if part is not None)
    if request.progress is not None:
        request.progress(count)
    return relevance.detach(), chosen, values, output_values, per_sample, functions


def _forward(model: torch.nn.Module, chunk: torch.Tensor):
    """The model on a chunk; where it fails on three-dimensional inputs, the likely cause said (one image given
    without its batch dimension)."""
    if chunk.ndim != 3:
        return model(chunk)
    try:
        return model(chunk)
    except (RuntimeError, ValueError) as error:
        raise AttributionError(f"the model failed on inputs of shape {tuple(chunk.shape)} ({' '.join(str(error).split())}); "
                               "if they are one image (C, H, W), add a batch dimension with unsqueeze(0)") from error


def locate_violation(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    result: Attribution,
    composite: Composite,
    start_with: str = "softmax",
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    output: OutputChoice = None,
) -> Violation | None:
    """Whether ``result`` (an attribution of ``inputs`` with ``composite``) misses its start relevance by more than
    ``tolerance`` for a sample and, if so, why and where: the modules no rule covers, the custom autograd functions,
    the composite's own reasons where it loses relevance by design, and otherwise the modules where relevance changes
    (the worst sample attributed again, watching every module)."""
    worst = worst_violation(result, tolerance)
    if worst is None:
        return None
    kept = result.total[worst] + (0 if result.absorbed is None else result.absorbed[worst])
    ratio, reasons = float(kept / result.start[worst]), design_losses(composite)
    causes = {"reasons": reasons, "uncovered": result.uncovered, "functions": result.functions}
    if reasons and ratio <= 1:  # lost by design: every layer of the method loses some, nothing to locate
        return Violation(worst, ratio, float(result.conservation_error[worst]), tolerance, [], **causes)
    names = [name for name, _ in model.named_modules() if name]  # the model's own modules
    region = result.region.of_sample(worst) if result.region is not None else None
    one = _Request(region if region is not None else result.target[worst:worst + 1], start_with, 1, output=output)
    traced = _run(model, inputs[worst:worst + 1], composite, one, watch=lambda canonized: names)
    places = locate(traced.blocks or [], float(result.start[worst]), tolerance, dict(model.named_modules()))
    return Violation(worst, ratio, float(result.conservation_error[worst]), tolerance, places, **causes)
