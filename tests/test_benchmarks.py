"""The benchmark scripts run and report what they claim (tiny configurations; the timings themselves are not
asserted)."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow  # 18 s: a model per method run twice, each in its own process
def test_attribution_benchmark_prints_a_row_per_method_with_ratios_to_the_gradient():
    methods = ["gradient", "flows_skip", "flows_skip_conservative@channels_last"]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "attribution.py"), "--models", "resnet18", "--batches", "1", "--size", "64",
         "--repeats", "1", "--threads", "1", "--methods", ",".join(methods)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "threads; torch" in lines[0]  # the machine line
    rows = [line.strip("|").split("|") for line in lines if line.startswith("| resnet18")]
    assert [row[2].strip() for row in rows] == methods
    ratios = {row[2].strip(): (float(row[4]), float(row[7])) for row in rows}
    assert ratios["gradient"] == (1.0, 1.0)
    assert all(time > 0 and memory > 0 for time, memory in ratios.values())
    for row in rows:  # one round: its range is that round's ratio
        lowest, highest = map(float, row[5].split("-"))
        assert lowest == highest == float(row[4])


def test_attribution_benchmark_needs_the_gradient_baseline():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "attribution.py"), "--methods", "flows_skip"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "must include gradient" in done.stderr


@pytest.mark.slow
def test_a_peer_that_does_not_support_a_model_is_a_row_saying_why():
    """captum's LRP has no rule for layer norms: ConvNeXt's row says so, and the run goes on."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "attribution.py"), "--models", "convnext_tiny", "--batches", "1", "--size",
         "32", "--repeats", "1", "--threads", "1", "--methods", "gradient,captum_lrp"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "| captum_lrp |" in line)
    assert "raises: TypeError" in row and "LayerNorm2d" in row


@pytest.mark.slow
def test_rule_profile_counts_every_convolution_of_a_resnet18():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "profile_rules.py"), "--model", "resnet18", "--size", "32", "--repeats", "1",
         "--threads", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): line.strip("|").split("|")
            for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| rule")
            and not line.startswith("| ---")}
    assert int(rows[("ZPlus", "Conv2d")][2]) == 20  # 17 in the blocks and the stem, 3 projections
    assert int(rows[("ZPlus", "Linear")][2]) == 1
    assert sum(float(row[4].strip().rstrip("%")) for row in rows.values()) > 95  # shares rounded to whole percents


@pytest.mark.slow
def test_segmentation_and_video_models_get_rows_with_ratios_to_their_gradient():
    """fcn_resnet50 explains a region (its peers that explain classes only are skipped, saying why); r3d_18 a class
    of a (batch, 3, 4, 32, 32) clip."""
    methods = ["gradient", "captum_lrp", "flows_skip_conservative"]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "attribution.py"), "--models", "fcn_resnet50,r3d_18", "--batches", "1",
         "--size", "32", "--frames", "4", "--repeats", "1", "--threads", "1", "--methods", ",".join(methods)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "32x32, video 4x32x32" in done.stdout.splitlines()[0]
    rows = {(cells[0].strip(), cells[2].strip()): cells for line in done.stdout.splitlines()
            if line.startswith(("| fcn_resnet50", "| r3d_18")) for cells in [line.strip("|").split("|")]}
    for model in ("fcn_resnet50", "r3d_18"):
        assert float(rows[model, "gradient"][4]) == 1.0
        ours = rows[model, "flows_skip_conservative"]
        assert float(ours[4]) > 0 and float(ours[7]) > 0
    assert "skipped: captum_lrp explains classes" in rows["fcn_resnet50", "captum_lrp"][3]
    assert "raises: TypeError" in rows["r3d_18", "captum_lrp"][3]  # captum has no rule for Conv3d
