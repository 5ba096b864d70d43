"""Figures drawn with matplotlib (the ``[plot]`` extra): the paper's Fig. 5 from a conservation report, and the mean
insertion and deletion curves of an evaluation. Each figure is titled with what it shows, and written whole or not
at all (through :py:func:`~zennit_resnet_lrp.application.files.write_atomic`, which makes a missing folder)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..conservation import ConservationReport
from .files import OutputError, check_output_file, write_atomic

# what a figure may be written as: matplotlib's formats that need nothing more (pgf needs LaTeX, avif and gif a
# Pillow built with them)
FIGURE_FORMATS = ("png", "pdf", "svg", "svgz", "jpg", "jpeg", "tif", "tiff", "eps", "ps")
# (label, marker, size, filled) of the conservation figure's series, drawn in this order: the large hollow markers
# first, the small filled ones on top, so where the three sums agree every series still shows
_CONSERVATION_STYLE = (("last block", "o", 64, False), ("first block", "s", 30, False), ("input", "^", 14, True))


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


def plot_formats() -> list[str]:
    """The file suffixes (without the dot) figures can be written as: those of :py:data:`FIGURE_FORMATS` this
    matplotlib writes; raises :py:class:`PlotError` without matplotlib."""
    _pyplot()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return [name for name in FIGURE_FORMATS if name in FigureCanvasAgg.get_supported_filetypes()]


def check_plot_file(path: str | Path) -> Path:
    """Check, before any work, that a figure can be written to ``path``: matplotlib is there (else
    :py:class:`PlotError`), the suffix names a format it writes and the file can be written, its folder made if
    missing (else :py:class:`~zennit_resnet_lrp.application.files.OutputError`)."""
    path = check_output_file(path)
    formats = plot_formats()
    if path.suffix[1:].lower() not in formats:
        given = f"'{path.suffix}' is not" if path.suffix else "a name without a suffix is not"
        raise OutputError(f"cannot draw a figure to {path}: {given} an image format matplotlib writes; end the name "
                          f"in one of .{', .'.join(formats)}")
    return path


def _save(figure, path: str | Path, dpi: int) -> None:
    """Write ``figure`` in the format its suffix names, whole or not at all, and free it."""
    plt = _pyplot()
    path = Path(path)
    try:
        write_atomic(path, lambda handle: figure.savefig(handle, format=path.suffix[1:].lower() or "png", dpi=dpi,
                                                         bbox_inches="tight"))
    finally:
        plt.close(figure)


def conservation_figure(report: ConservationReport, subject: str = ""):
    """The paper's Fig. 5 as a matplotlib figure: the relevance sum at the input, the first and the last block
    against the start relevance, one point per sample, each series with its own marker, size and colour.

    Parameters
    ----------
    report : ConservationReport
    subject : str
        What was checked (model, method), the first line of the title.
    """
    plt = _pyplot()
    result = report.attribution
    start = result.start.detach().cpu().double().numpy()
    sums = {"input": result.total}
    if result.blocks:
        sums["first block"], sums["last block"] = result.blocks[0].input, result.blocks[-1].input
    names = {"first block": f"first block ({result.blocks[0].name})" if result.blocks else "",
             "last block": f"last block ({result.blocks[-1].name})" if result.blocks else "", "input": "input"}
    figure, axis = plt.subplots(figsize=(5, 5))
    for order, (key, marker, size, filled) in enumerate(_CONSERVATION_STYLE):
        if key not in sums:
            continue
        values = sums[key].detach().cpu().double().numpy()
        color = f"C{order}"
        axis.scatter(start, values, s=size, marker=marker, label=names[key], zorder=2 + order, alpha=0.8,
                     facecolors=color if filled else "none", edgecolors=color, linewidths=1.0)
    low, high = float(min(start.min(), 0)), float(start.max()) * 1.05 or 1.0
    axis.plot([low, high], [low, high], "k--", linewidth=0.8, label="sum = start", zorder=1)
    what = "at the input, first and last block" if result.blocks else "at the input"
    title = f"relevance sum {what}\nagainst the start relevance, {len(start)} sample(s)"
    axis.set_title(f"{subject}: {title}" if subject else title, fontsize=9)
    axis.set_xlabel("start relevance (target probability)")
    axis.set_ylabel("sum of relevance")
    handles, labels = axis.get_legend_handles_labels()
    order = [*range(len(handles) - 2, -1, -1), len(handles) - 1]  # input, first block, last block, then the line
    axis.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7)
    figure.tight_layout()
    return figure


def conservation_plot(report: ConservationReport, path: str | Path, subject: str = "") -> None:
    """Write :py:func:`conservation_figure` to ``path`` (its suffix names the format; see
    :py:func:`check_plot_file`)."""
    _save(conservation_figure(report, subject), path, dpi=120)


def curves_figure(rows: Sequence[dict], fractions: Sequence[float], subject: str = ""):
    """Mean insertion and deletion curves per method, from evaluation score rows (``insertion_curve``,
    ``deletion_curve``, ``method``), each point drawn at the fraction of the image perturbed when it was taken.

    Parameters
    ----------
    rows : sequence of dict
        Score rows; rows whose curves do not have ``len(fractions)`` points are left out.
    fractions : sequence of float
        Where each curve point was taken
        (:py:func:`~zennit_resnet_lrp.evaluation.metrics.curve_fractions`): point ``i`` after ``i + 1`` steps.
    subject : str
        What was evaluated (model, dataset), the first line of the title.
    """
    plt = _pyplot()
    fractions = np.asarray(fractions, dtype=float)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    images = set()
    marker = "." if len(fractions) <= 60 else None
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method and len(row["insertion_curve"]) == len(fractions)]
        if not mine:
            continue
        images.update(row["image"] for row in mine)
        for axis, key in zip(axes, ("insertion_curve", "deletion_curve")):
            mean = np.mean([row[key] for row in mine], axis=0)
            axis.plot(fractions, mean, marker=marker, markersize=3, linewidth=1.2, label=method)
    for axis, mode in zip(axes, ("Insertion", "Deletion")):
        axis.set_title(f"{mode} (most relevant first)", fontsize=10)
        axis.set_xlabel(f"fraction of the image {'inserted' if mode == 'Insertion' else 'deleted'}")
        axis.set_xlim(0, 1)
    axes[0].set_ylabel("probability of the label (mean)")
    title = f"mean perturbation curves over {len(images)} image(s)"
    figure.suptitle(f"{subject}: {title}" if subject else title, fontsize=11)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    figure.tight_layout()
    return figure


def curves_plot(rows: Sequence[dict], path: str | Path, fractions: Sequence[float], subject: str = "") -> None:
    """Write :py:func:`curves_figure` to ``path``."""
    _save(curves_figure(rows, fractions, subject), path, dpi=110)
