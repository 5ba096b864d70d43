"""Figures drawn with matplotlib (the ``[plot]`` extra): the paper's Fig. 5 from a conservation report, and the mean
insertion and deletion curves of an evaluation."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..conservation import ConservationReport


class PlotError(RuntimeError):
    """A figure that cannot be drawn: matplotlib is missing."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install 'zennit-resnet-lrp[plot]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def conservation_plot(report: ConservationReport, path: str | Path) -> None:
    """The paper's Fig. 5: the relevance sum at the input, the first and the last block against the start
    relevance, one point per sample."""
    plt = _pyplot()
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


def curves_plot(rows: Sequence[dict], path: str | Path) -> None:
    """Mean insertion and deletion curves per method, from evaluation score rows (``insertion_curve``,
    ``deletion_curve``, ``method``)."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method]
        for axis, key in zip(axes, ("insertion_curve", "deletion_curve")):
            curves = torch.tensor([row[key] for row in mine if len(row[key]) == len(mine[0][key])])
            mean = curves.mean(0)
            axis.plot(torch.linspace(0, 1, len(mean)), mean, label=method)
    for axis, title in zip(axes, ("Insertion", "Deletion")):
        axis.set_title(title)
        axis.set_xlabel("fraction of pixels")
        axis.set_ylabel("probability of the label")
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
