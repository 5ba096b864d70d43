"""The conservation check: relevance sums at every block boundary and at the input, as a report."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from zennit.core import Composite

from .attribution import Attribution, attribute, relative_error
from .composites import DEFAULT_METHOD


@dataclass
class ConservationReport:
    """Where relevance goes, per sample, for one attribution.

    Attributes
    ----------
    attribution : Attribution
        The attribution, with ``blocks`` recorded.
    tolerance : float
        The largest acceptable ``|input total - start| / |start|``.
    """

    attribution: Attribution
    tolerance: float

    @property
    def error(self) -> torch.Tensor:
        """``|input relevance - start| / |start|`` per sample."""
        return self.attribution.conservation_error

    @property
    def passed(self) -> bool:
        return bool((self.error <= self.tolerance).all())

    def rows(self) -> list[dict]:
        """One row per block, in forward order, with per-sample values and their mean."""
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
            "error": self.error.tolist(),
            "target": result.target.tolist(),
            "blocks": self.rows(),
        }

    def format_table(self) -> str:
        """A text table of the means over samples: relevance entering and leaving each block (as a fraction of the
        start), the share that went through the skip, and the leak."""
        start = self.attribution.start
        lines = [f"{'block':<16} {'entering':>10} {'leaving':>10} {'skip share':>10} {'leak':>11}"]
        for block in self.attribution.blocks or []:
            share = block.skip_share
            lines.append(
                f"{block.name:<16} {float((block.output / start).mean()):>10.6f} "
                f"{float((block.input / start).mean()):>10.6f} "
                f"{'-' if share is None else format(float(share.mean()), '.4f'):>10} "
                f"{float((block.leak / start).mean()):>11.3e}"
            )
        worst = float(self.error.max())
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"input: sum / start = {float((self.attribution.total / start).mean()):.6f} (mean over "
            f"{start.numel()}); |sum - start| / start = {worst:.3e} (max) <= {self.tolerance:.1e}: {verdict}"
        )
        return "\n".join(lines)


def check_conservation(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    method: str | Composite = DEFAULT_METHOD,
    target: int | Sequence[int] | torch.Tensor | None = None,
    start: str = "softmax",
    tolerance: float = 1e-5,
    batch_size: int | None = None,
) -> ConservationReport:
    """Attribute ``inputs`` and report the relevance at every residual block and at the input.

    Parameters
    ----------
    model, inputs, method, target, start, batch_size
        As for :py:func:`zennit_resnet_lrp.attribute`.
    tolerance : float
        The largest acceptable ``|input relevance - start| / |start|`` per sample.

    Returns
    -------
    ConservationReport
    """
    result = attribute(model, inputs, method, target, start, batch_size=batch_size, record_blocks=True,
                       tolerance=None)
    return ConservationReport(result, tolerance)


def figure5(report: ConservationReport, path: str) -> None:
    """Plot the paper's Fig. 5: the relevance sum at the input, the first and the last block against the start
    relevance, one point per sample (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = report.attribution
    start = result.start.cpu().numpy()
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    series = [("input", result.total)]
    if result.blocks:
        series += [(f"first block ({result.blocks[0].name})", result.blocks[0].input),
                   (f"last block ({result.blocks[-1].name})", result.blocks[-1].input)]
    for label, values in series:
        axis.scatter(start, values.cpu().numpy(), s=12, label=label)
    low, high = float(min(start.min(), 0)), float(start.max()) * 1.05 or 1.0
    axis.plot([low, high], [low, high], "k--", linewidth=0.8, label="sum = start")
    axis.set_xlabel("start relevance (target probability)")
    axis.set_ylabel("sum of relevance")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


__all__ = ["ConservationReport", "check_conservation", "figure5", "relative_error"]
