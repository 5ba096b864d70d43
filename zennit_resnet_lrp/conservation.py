"""Conservation: the relative error, the report of relevance at every block boundary, the warning, and locating the
modules where relevance appears or vanishes.

:py:func:`zennit_resnet_lrp.attribute` uses this to warn, and :py:func:`zennit_resnet_lrp.check_conservation`
returns a :py:class:`ConservationReport`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .recording import ModuleRelevance
from .results import Attribution

# the one tolerance: the largest acceptable |input relevance (+ absorbed) - start| / |start|, used by attribute()'s
# warning, check_conservation(), `resnet-lrp check`, `explain --strict` and `evaluate`; float32 rounding stays below it
# on ResNet-50-sized models. Methods that lose relevance by design (the paper's variants) exceed it and say why
DEFAULT_TOLERANCE = 1e-5


def design_losses(composite) -> list[str]:
    """Why ``composite``'s rules lose relevance by design (empty where it promises conservation): its own
    ``loss_reasons`` where it names them."""
    if getattr(composite, "conservative", False):
        return []
    return list(getattr(composite, "loss_reasons", None) or ["its rules do not promise conservation"])


class ConservationWarning(UserWarning):
    """The input relevance misses the relevance put in at the output by more than the tolerance; ``violation`` (a
    :py:class:`Violation`) says by how much and where."""

    def __init__(self, violation: "Violation") -> None:
        super().__init__(violation.message())
        self.violation = violation


@dataclass
class ConservationReport:
    """Where relevance goes, per sample, for one attribution.

    Attributes
    ----------
    attribution : Attribution
        The attribution, with ``blocks`` recorded.
    tolerance : float
        The largest acceptable ``|input total - start| / |start|``.
    violation : Violation, optional
        Where relevance changes in the worst sample, when it fails.
    """

    attribution: Attribution
    tolerance: float = DEFAULT_TOLERANCE
    violation: "Violation | None" = None

    @property
    def error(self) -> torch.Tensor:
        """``|input relevance - start| / |start|`` per sample."""
        return self.attribution.conservation_error

    @property
    def passed(self) -> bool:
        return bool((self.error <= self.tolerance).all())

    def rows(self) -> list[dict]:
        """One row per block, in forward order, with per-sample values."""
        start = self.attribution.start
        rows = []
        for block in self.attribution.blocks or []:
            share = block.skip_share
            rows.append({
                "block": block.name,
                "entering": block.output.tolist(),
                "leaving": block.input.tolist(),
                "skip_share": None if share is None else share.tolist(),
                "leak": (block.leak / start).tolist(),
            })
        return rows

    def to_dict(self) -> dict:
        result = self.attribution
        return {
            "tolerance": self.tolerance,
            "passed": self.passed,
            "start": result.start.tolist(),
            "input_total": result.total.tolist(),
            "absorbed": None if result.absorbed is None else result.absorbed.tolist(),
            "error": self.error.tolist(),
            "target": result.target.tolist(),
            "blocks": self.rows(),
            "untraced": [{"module": name, "class": kind, "reason": reason}
                         for name, kind, reason in self.attribution.untraced],
            "changes": [] if self.violation is None else [
                {"module": place.name, "class": place.kind, "entering": place.entering, "leaving": place.leaving,
                 "sample": self.violation.sample} for place in self.violation.places],
            "uncovered": [{"module": name, "class": kind} for name, kind in result.uncovered],
            "custom_functions": list(result.functions),
            "losses_by_design": [] if self.violation is None else self.violation.reasons,
        }

    def format_table(self) -> str:
        """A text table of the means over samples: relevance entering and leaving each block (as a fraction of the
        start), the share that went through the skip, and the leak."""
        start = self.attribution.start
        width = max([16, *(len(block.name) for block in self.attribution.blocks or [])])
        lines = [f"{'block':<{width}} {'entering':>10} {'leaving':>10} {'skip share':>10} {'leak':>11}"]
        for block in self.attribution.blocks or []:
            share = block.skip_share
            lines.append(
                f"{block.name:<{width}} {float((block.output / start).mean()):>10.6f} "
                f"{float((block.input / start).mean()):>10.6f} "
                f"{'-' if share is None else format(float(share.mean()), '.4f'):>10} "
                f"{float((block.leak / start).mean()):>11.3e}"
            )
        for name, kind, reason in self.attribution.untraced:
            lines.append(f"{name:<{width}} not traced ({kind}: {reason})")
        if self.violation is not None and self.violation.causes():
            lines.append(f"not conserved: {self.violation.causes()}")
        if self.violation is not None and self.violation.places:
            lines.append(f"relevance changes in {', '.join(map(str, self.violation.places[:3]))} (sample "
                         f"{self.violation.sample}; modules of type {', '.join(self.violation.kinds)})")
        if self.attribution.absorbed is not None:
            absorbed = self.attribution.absorbed / start
            lines.append(f"absorbed by the model's own tokens: {float(absorbed.mean()):.6f} of the start (mean), "
                         f"{float(absorbed.max()):.6f} (max)")
        worst = float(self.error.max())
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"input: sum / start = {float((self.attribution.total / start).mean()):.6f} (mean over "
            f"{start.numel()}); |sum - start| / start = {worst:.3e} (max) <= {self.tolerance:.1e}: {verdict}"
        )
        return "\n".join(lines)


def violations(result: Attribution, tolerance: float = DEFAULT_TOLERANCE) -> torch.Tensor:
    """Per sample, whether its error exceeds ``tolerance``."""
    return result.conservation_error > tolerance


def worst_violation(result: Attribution, tolerance: float = DEFAULT_TOLERANCE) -> int | None:
    """The sample whose error exceeds ``tolerance`` the most, or None."""
    bad = violations(result, tolerance)
    if not bool(bad.any()):
        return None
    return int(torch.where(bad, result.conservation_error, torch.full_like(result.conservation_error, -1)).argmax())


@dataclass
class Place:
    """A module where relevance appears or vanishes, for one sample.

    Attributes
    ----------
    name : str
        The module's name in the model.
    kind : str
        Its class name.
    entering, leaving : float
        Relevance arriving at its output and leaving through its input.
    """

    name: str
    kind: str
    entering: float
    leaving: float

    def __str__(self) -> str:
        return f"'{self.name}' ({self.kind}: {self.entering:.4g} in, {self.leaving:.4g} out)"


@dataclass
class Violation:
    """Relevance not conserved: how far off the worst sample is, why, and where it changes.

    Attributes
    ----------
    sample : int
        Index of the worst sample.
    ratio, error : float
        Its input relevance (with what the model's tokens absorbed) over the start relevance, and
        ``|total + absorbed - start| / |start|``.
    tolerance : float
    places : list of Place
        The innermost modules whose relevance in and out differ by more than ``tolerance`` of the start (not looked
        for where the method loses relevance by design).
    reasons : list of str
        Why the method loses relevance by design (:py:func:`design_losses`); empty for a conserving method.
    uncovered : list of (str, str)
        ``(name, class name)`` of modules with weights that no rule covers (relevance crosses them as a gradient).
    functions : list of str
        Custom autograd functions in the forward, whose own backward carried relevance.
    """

    sample: int
    ratio: float
    error: float
    tolerance: float
    places: list[Place]
    reasons: list[str] = field(default_factory=list)
    uncovered: list[tuple[str, str]] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        """The class names of the uncovered modules and of :py:attr:`places`, each once."""
        return list(dict.fromkeys([kind for _, kind in self.uncovered] + [place.kind for place in self.places]))

    def causes(self) -> str:
        """What the rules leave to a gradient, or why the method loses relevance: one clause, or ""."""
        parts = [f"{kind} at '{name}' has no rule" for name, kind in self.uncovered[:3]]
        parts += [f"custom autograd function {name} passes relevance by its own backward"
                  for name in self.functions[:3]]
        if self.reasons and self.ratio <= 1:
            parts.append(f"by design: {'; '.join(self.reasons)}")
        return "; ".join(parts)

    @property
    def by_design(self) -> bool:
        """Whether the loss is the method's own (its stated reasons) and nothing else was found."""
        return bool(self.reasons) and self.ratio <= 1 and not self.uncovered and not self.functions

    def explanation(self) -> str:
        """Why and where, as ``;``-separated clauses ("" where nothing is known): what the rules leave to a
        gradient, the method's own reasons, and where relevance grows or is lost."""
        where = ", ".join(str(place) for place in self.places[:3])
        clauses = [self.causes()] if self.causes() else []
        if where and self.ratio > 1 and not self.uncovered and not self.functions:
            clauses.append(f"it grows in {where}: an addition the canonizer could not route (see "
                           "ResidualTracingWarning) doubles relevance; route it through "
                           "zennit_resnet_lrp.ResidualSum().add(residual, skip)")
        elif where:
            clauses.append(f"it {'grows' if self.ratio > 1 else 'is lost'} in {where}")
        return "; ".join(clauses)

    def message(self) -> str:
        """How far off the sample is, why, and where relevance grows or is lost."""
        explanation = self.explanation()
        return (f"input relevance is {self.ratio:.4g} x the start relevance for sample {self.sample} "
                f"(error {self.error:.2e} > tolerance {self.tolerance:.0e})"
                + (f"; {explanation}" if explanation else ""))


def locate(records: list[ModuleRelevance], start: float, tolerance: float, modules: dict) -> list[Place]:
    """The innermost modules whose input and output relevance differ by more than ``tolerance * |start|``, from the
    records of one sample, in model order."""
    records = [r for r in records if r.output.numel() == 1 and r.input.numel() == 1]
    bad = [r for r in records if abs(float(r.input - r.output)) > tolerance * abs(start)]
    innermost = [r for r in bad if not any(o.name.startswith(r.name + ".") for o in bad)]
    return [Place(r.name, type(modules[r.name]).__name__, float(r.output), float(r.input)) for r in innermost]
