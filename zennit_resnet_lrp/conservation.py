"""Conservation: the relative error, the report of relevance at every block boundary, the warning, and locating the
modules where relevance appears or vanishes.

:py:func:`zennit_resnet_lrp.attribute` uses this to warn, and :py:func:`zennit_resnet_lrp.check_conservation`
returns a :py:class:`ConservationReport`.
"""
from __future__ import annotations

from dataclasses import dataclass
import torch

from .recording import ModuleRelevance
from .results import Attribution

# the largest acceptable |input relevance - start| / |start| of the default (conservative) method, everywhere:
# check_conservation(), `resnet-lrp check`; float32 rounding stays below it on ResNet-50-sized models
DEFAULT_TOLERANCE = 1e-5
# the error above which attribute() warns: the paper's variants lose a few percent by design
WARNING_TOLERANCE = 0.05


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


def violations(result: Attribution, conservative: bool, tolerance: float) -> torch.Tensor:
    """Per sample, whether its error exceeds ``tolerance``. For methods that do not promise conservation only
    growth counts (a residual addition nobody split): the paper's variants lose relevance by design."""
    error = result.conservation_error
    if not conservative:
        kept = result.total if result.absorbed is None else result.total + result.absorbed
        grew = (kept - result.start) * result.start.sign() > 0
        error = torch.where(grew, error, torch.zeros_like(error))
    return error > tolerance


def worst_violation(result: Attribution, conservative: bool, tolerance: float) -> int | None:
    """The sample whose error exceeds ``tolerance`` the most (see :py:func:`violations`), or None."""
    bad = violations(result, conservative, tolerance)
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
    """Relevance not conserved: how far off the worst sample is, and where it changes.

    Attributes
    ----------
    sample : int
        Index of the worst sample.
    ratio, error : float
        Its input relevance (with what the model's tokens absorbed) over the start relevance, and
        ``|total + absorbed - start| / |start|``.
    tolerance : float
    places : list of Place
        The innermost modules whose relevance in and out differ by more than ``tolerance`` of the start.
    """

    sample: int
    ratio: float
    error: float
    tolerance: float
    places: list[Place]

    @property
    def kinds(self) -> list[str]:
        """The class names of :py:attr:`places`, each once."""
        return list(dict.fromkeys(place.kind for place in self.places))

    def message(self) -> str:
        """How far off the sample is and, if known, where relevance grows or is lost."""
        where = ", ".join(str(place) for place in self.places[:3])
        if where and self.ratio > 1:
            hint = (f"; it grows in {where}: an addition the canonizer could not route (see ResidualTracingWarning) "
                    "doubles relevance; route it through zennit_resnet_lrp.ResidualSum().add(residual, skip)")
        elif where:
            hint = f"; it is lost in {where}"
        else:
            hint = ""
        return (f"input relevance is {self.ratio:.4g} x the start relevance for sample {self.sample} "
                f"(error {self.error:.2%} > tolerance {self.tolerance:.2%}){hint}")


def locate(records: list[ModuleRelevance], start: float, tolerance: float, modules: dict) -> list[Place]:
    """The innermost modules whose input and output relevance differ by more than ``tolerance * |start|``, from the
    records of one sample, in model order."""
    records = [r for r in records if r.output.numel() == 1 and r.input.numel() == 1]
    bad = [r for r in records if abs(float(r.input - r.output)) > tolerance * abs(start)]
    innermost = [r for r in bad if not any(o.name.startswith(r.name + ".") for o in bad)]
    return [Place(r.name, type(modules[r.name]).__name__, float(r.output), float(r.input)) for r in innermost]
