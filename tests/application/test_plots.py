"""The figures: titled with what they show, every series visible, curve points where they were measured, written
whole into folders made when missing, the file name checked before any work."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from zennit_resnet_lrp.application.files import OutputError  # noqa: E402
from zennit_resnet_lrp.application.plots import (check_plot_file, conservation_figure, conservation_plot,  # noqa: E402
                                                 curves_figure, curves_plot)


def conservation_report(samples=6):
    """A report whose three sums agree exactly: the case where one series can hide the others."""
    start = torch.linspace(0.5, 1.0, samples)
    block = lambda name: SimpleNamespace(name=name, input=start.clone())  # noqa: E731
    return SimpleNamespace(attribution=SimpleNamespace(start=start, total=start.clone(),
                                                       blocks=[block("layer1.0"), block("layer4.0")]))


def series_of(figure):
    axis = figure.axes[0]
    return {collection.get_label().split(" (")[0]: collection for collection in axis.collections}


def test_conservation_figure_names_model_method_and_what_is_plotted():
    figure = conservation_figure(conservation_report(), "demo-mnist, flows_skip")
    title = figure.axes[0].get_title()
    assert title.startswith("demo-mnist, flows_skip: ")
    assert "relevance sum at the input, first and last block" in title and "start relevance, 6 sample(s)" in title


def test_conservation_figure_draws_the_last_block_under_the_first_block_and_the_input():
    """Where the sums agree the points coincide: the input is drawn on top, smallest, and the larger markers below
    are hollow, so each series still shows; the markers differ in shape."""
    series = series_of(conservation_figure(conservation_report(), "m"))
    order = ["last block", "first block", "input"]
    assert set(series) == set(order)
    assert [series[key].get_zorder() for key in order] == sorted(series[key].get_zorder() for key in order)
    sizes = [float(series[key].get_sizes()[0]) for key in order]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 3
    for key in ("last block", "first block"):  # hollow: nothing of what lies below is covered
        assert all(face[3] == 0 for face in series[key].get_facecolors())
    shapes = {tuple(map(tuple, series[key].get_paths()[0].vertices.round(3))) for key in order}
    assert len(shapes) == 3


def test_curves_are_drawn_at_the_fractions_where_they_were_taken():
    fractions = [0.25, 0.5, 0.75, 1.0]  # point i after i + 1 steps: none at 0
    rows = [{"method": "a", "image": f"{i}.png", "insertion_curve": [0.1, 0.5, 0.8, 0.9],
             "deletion_curve": [0.6, 0.3, 0.2, 0.1]} for i in range(2)]
    rows.append({"method": "a", "image": "other.png", "insertion_curve": [0.0] * 7, "deletion_curve": [0.0] * 7})
    figure = curves_figure(rows, fractions, "demo-mnist on digits")
    for axis, key in zip(figure.axes[:2], ("insertion_curve", "deletion_curve")):
        (line,) = axis.get_lines()
        np.testing.assert_allclose(line.get_xdata(), fractions)
        np.testing.assert_allclose(line.get_ydata(), rows[0][key])  # the row of another length is left out
    assert "demo-mnist on digits: mean perturbation curves over 2 image(s)" in figure._suptitle.get_text()


def test_figures_are_written_into_missing_folders_in_the_format_their_name_gives(tmp_path):
    conservation_plot(conservation_report(), tmp_path / "new" / "dir" / "fig5.png", "m")
    assert (tmp_path / "new" / "dir" / "fig5.png").read_bytes()[:4] == b"\x89PNG"
    rows = [{"method": "a", "image": "0.png", "insertion_curve": [0.1, 0.9], "deletion_curve": [0.9, 0.1]}]
    curves_plot(rows, tmp_path / "other" / "curves.pdf", [0.5, 1.0])
    assert (tmp_path / "other" / "curves.pdf").read_bytes()[:4] == b"%PDF"


def test_a_figure_name_matplotlib_cannot_write_is_refused(tmp_path):
    for name in ("figure.xyz", "figure"):
        with pytest.raises(OutputError, match="not an image format matplotlib writes; end the name in one of .png"):
            check_plot_file(tmp_path / name)
    assert check_plot_file(tmp_path / "missing" / "figure.svg") == tmp_path / "missing" / "figure.svg"
    assert not (tmp_path / "missing").exists()
