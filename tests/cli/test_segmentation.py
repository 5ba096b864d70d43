"""``resnet-lrp explain/check --task segmentation``: why the pixels a model assigns to --label are that class; files
written, the region outlined, summary fields, and the one-line errors. The segmentation demo's architecture with
seeded random weights (what ``--weights random`` loads: the same with and without its shipped checkpoint) on the
shipped canvases keeps them fast."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from zennit_resnet_lrp.application.demo import demo_canvases
from zennit_resnet_lrp.application.heatmap import OUTLINE_COLOUR, region_border
from zennit_resnet_lrp.application.images import open_image
from zennit_resnet_lrp.application.models import load_model
from zennit_resnet_lrp.cli.main import cli
from helpers import assert_one_line_error

MODEL = "demo-digits-segmentation"
CANVASES = demo_canvases()


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def blank(tmp_path_factory) -> Path:
    """A grey canvas without digits."""
    path = tmp_path_factory.mktemp("blank") / "blank.png"
    Image.fromarray(np.full((56, 56), 128, np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def regions(blank):
    """Per image (two canvases and the blank), the pixels the randomly weighted model assigns to each class
    (K, H, W) at the canvases' size."""
    loaded = load_model(MODEL, "random")
    inputs = torch.stack([loaded.preprocessing(open_image(path)) for path in [*CANVASES[:2], blank]])
    with torch.no_grad():
        classes = loaded.model(inputs).argmax(1)
    return torch.stack([classes == label for label in range(11)], 1)


@pytest.fixture(scope="module")
def label(regions) -> int:
    """A class the model assigns pixels to on both canvases and none on the blank."""
    sizes = regions.flatten(2).sum(2)
    found = [k for k in range(11) if sizes[0, k] and sizes[1, k] and not sizes[2, k]]
    assert found, sizes
    return found[0]


def test_explain_segmentation_outlines_the_region_in_each_heatmap(tmp_path, regions, label):
    result = run("explain", "--task", "segmentation", "--model", MODEL, "--weights", "random", "--label", label,
                 "--overlay", *CANVASES[:2], "-o", tmp_path)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(row["image"], row["task"], row["target"], row["region_pixels"]) for row in summary] == [
        (str(path), "segmentation", label, int(regions[index, label].sum())) for index, path in enumerate(CANVASES[:2])]
    assert all(row["conservation_error"] < 1e-5 for row in summary)
    for index, row in enumerate(summary):
        heatmap = np.asarray(Image.open(row["heatmap"]).convert("RGB"))
        green = (heatmap == OUTLINE_COLOUR).all(-1)
        assert np.array_equal(green, region_border(regions[index, label]).numpy())
        size = row["region_pixels"]
        assert f"{row['image']}: why these {size} pixel(s) are {label} (mean p=" in result.output
    assert result.output.count("conservation error") == 2
    assert (tmp_path / "overview.png").exists() and len(list(tmp_path.glob("*_overlay.png"))) == 2


def test_explain_segmentation_defaults_to_the_demo_model_and_its_canvases(tmp_path, label):
    result = run("explain", "--task", "segmentation", "--weights", "random", "--label", label, "-o", tmp_path)
    assert MODEL in result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    named = {row["image"] for row in summary} | {line.split(" in ")[-1] for line in result.output.splitlines()
                                                  if line.startswith("note: the model assigns no pixel")}
    assert named == {str(path) for path in CANVASES}


def test_explain_takes_the_task_from_the_model(tmp_path, label):
    result = run("explain", "--model", MODEL, "--weights", "random", "--label", label, CANVASES[0], "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "summary.json").read_text())[0]["task"] == "segmentation"


def test_explain_names_an_image_without_the_label_and_explains_the_others(tmp_path, blank, label):
    result = run("explain", "--model", MODEL, "--weights", "random", "--label", label, CANVASES[0], blank,
                 "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert f"note: the model assigns no pixel to class {label} in {blank}: nothing to explain there" in result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [row["image"] for row in summary] == [str(CANVASES[0])]
    assert (tmp_path / f"{CANVASES[0].stem}_{label}_heatmap.png").exists()


@pytest.mark.parametrize("args, code, message", [
    (["--task", "segmentation", "--model", MODEL, "--weights", "random"], 2, "give --label N"),
    (["--model", MODEL, "--weights", "random"], 2, "give --label N"),
    (["--task", "classification", "--model", MODEL, "--weights", "random"], 2,
     f"{MODEL} is a segmentation model"),
    (["--task", "segmentation", "--model", "demo-mnist", "--label", "3"], 2, "output has shape (1, 10)"),
    (["--task", "segmentation", "--model", MODEL, "--weights", "random", "--label", "11"], 2,
     "label 11 is out of range for the model's 11 classes (0..10)"),
    (["--task", "segmentation", "--model", MODEL, "--weights", "random", "--label", "1", "--top-k", "2"], 2,
     "--top-k is for classification"),
])
def test_explain_segmentation_errors_are_one_line(tmp_path, args, code, message):
    result = run("explain", *args, CANVASES[0], "-o", tmp_path / "out")
    assert_one_line_error(result, code, message)
    assert not (tmp_path / "out").exists()


def test_check_segmentation_reports_the_regions(label, regions):
    result = run("check", "--task", "segmentation", "--model", MODEL, "--weights", "random", "--label", label,
                 *CANVASES[:2], "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["task"], report["label"], report["passed"]) == ("segmentation", label, True)
    assert report["region_pixels"] == [int(regions[index, label].sum()) for index in range(2)]
    assert report["inputs"] == [str(path) for path in CANVASES[:2]]


def test_check_segmentation_names_an_input_without_the_label(label, blank):
    result = run("check", "--model", MODEL, "--weights", "random", "--label", label, CANVASES[0], blank)
    assert result.exit_code == 0, result.output
    assert f"note: the model assigns no pixel to class {label} in {blank}: nothing to check there" in result.output
    assert "PASS" in result.output  # the other input checked


def test_a_label_in_no_image_is_an_error(tmp_path, blank, label):
    result = run("explain", "--model", MODEL, "--weights", "random", "--label", label, blank, "-o", tmp_path)
    assert_one_line_error(result, 1, f"the model assigns no pixel to class {label} in any of the 1 image(s)")
    result = run("check", "--model", MODEL, "--weights", "random", "--label", label, blank)
    assert_one_line_error(result, 1, f"the model assigns no pixel to class {label} in any of the 1 input(s)")


@pytest.mark.parametrize("args, message", [
    (["--label", "3"], "--label is for --task segmentation"),
    (["--task", "segmentation", "--model", MODEL, "--weights", "random"], "give --label N"),
])
def test_check_segmentation_usage_errors_are_one_line(args, message):
    assert_one_line_error(run("check", *args, "--random", "1"), 2, message)


def test_explain_segmentation_default_is_the_shipped_demo_on_its_canvases(tmp_path):
    result = run("explain", "--task", "segmentation", "--label", "10", "-o", tmp_path)  # 10: the background
    assert result.exit_code == 0, result.output
    assert "demo-digits-segmentation.pt" in result.output  # its shipped weights
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [row["image"] for row in summary] == [str(path) for path in CANVASES]
    assert all(row["target_name"] == "background" and row["region_pixels"] > 0 for row in summary)
