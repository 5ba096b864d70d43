"""The benchmark scripts run and report what they claim (tiny configurations; the timings themselves are not
asserted)."""
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


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
    ratios = {row[2].strip(): (float(row[4]), float(row[6])) for row in rows}
    assert ratios["gradient"] == (1.0, 1.0)
    assert all(time > 0 and memory > 0 for time, memory in ratios.values())


def test_attribution_benchmark_needs_the_gradient_baseline():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "attribution.py"), "--methods", "flows_skip"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "must include gradient" in done.stderr
