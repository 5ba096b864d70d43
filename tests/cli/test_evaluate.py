"""resnet-lrp evaluate end to end: ImageFolder and CUB trees, every method, resume, torchrun sharding."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from zennit_resnet_lrp.cli.main import cli
from zennit_resnet_lrp.evaluation.datasets import cub_test, image_folder, imagenet_val, subsample
from zennit_resnet_lrp.application.demo import demo_images
from zennit_resnet_lrp.evaluation.store import read_rows
from zennit_resnet_lrp.application.methods import METHODS

ROOT = Path(__file__).resolve().parents[2]


def digits_by_label():
    return [(path, int(path.stem.rsplit("label", 1)[1])) for path in demo_images()]


@pytest.fixture(scope="module")
def folder_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    for path, label in digits_by_label():
        (root / f"class{label}").mkdir(exist_ok=True)
        shutil.copy(path, root / f"class{label}" / path.name)
    return root


@pytest.fixture(scope="module")
def cub_tree(tmp_path_factory):
    """CUB_200_2011's own files, made from the digits: every other image in the test split, labels 1-based."""
    root = tmp_path_factory.mktemp("cub")
    images, labels, split = [], [], []
    for index, (path, label) in enumerate(digits_by_label(), start=1):
        relative = f"{label + 1:03d}.digit_{label}/{path.name}"
        (root / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "images" / relative)
        images.append(f"{index} {relative}")
        labels.append(f"{index} {label + 1}")
        split.append(f"{index} {index % 2}")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels), ("train_test_split.txt", split)):
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def evaluate(*args):
    return CliRunner().invoke(cli, ["evaluate", *[str(a) for a in args]], catch_exceptions=False)


def test_datasets_read_their_layouts(folder_tree, cub_tree):
    samples, classes = image_folder(folder_tree)
    assert len(samples) == 20 and classes == [f"class{d}" for d in range(10)]
    assert all(s.path.parent.name == f"class{s.label}" for s in samples)
    assert len(imagenet_val(folder_tree)[0]) == 20
    test, _ = cub_test(cub_tree)
    assert len(test) == 10  # is_training_image == 0
    assert all(f"{s.label + 1:03d}." in str(s.path) for s in test)
    picked = subsample(samples, per_class=1, seed=3)
    assert sorted(s.label for s in picked) == list(range(10))
    assert subsample(samples, per_class=1, seed=3) == picked and len(subsample(samples, limit=7)) == 7


def test_every_method_on_an_image_folder(folder_tree, tmp_path):
    result = evaluate("--dataset", "folder", "--dataset-root", folder_tree, "--methods", "all", "--limit", 3,
                      "--points", 7, "-o", tmp_path, "--plot")
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "results.json").read_text())
    applicable = [name for name in METHODS if name != "attention_rollout"]  # a ResNet has no attention
    assert [row["method"] for row in table] == applicable
    assert "note: attention_rollout on demo-mnist: attention_rollout needs attention" in result.output
    for row in table:
        assert row["images"] == 3 and 0 <= row["insertion"] <= 1 and 0 <= row["deletion"] <= 1
        assert row["id"] == pytest.approx(row["insertion"] - row["deletion"])
    rows = read_rows(tmp_path)
    assert len(rows) == 3 * len(applicable) and all(len(r["insertion_curve"]) == 7 for r in rows)
    assert "| flows_skip |" in result.output
    assert (tmp_path / "results.csv").exists() and (tmp_path / "curves.png").exists()


def test_cub_tree_resume_and_several_models(cub_tree, tmp_path):
    weights = ROOT / "zennit_resnet_lrp" / "application" / "data" / "demo-mnist.pt"
    args = ["--dataset", "cub", "--dataset-root", cub_tree, "--points", 5, "-o", tmp_path,
            "--weights", weights, "--weights", weights, "--heat-quantization"]
    first = evaluate(*args, "--methods", "flows_skip")
    assert first.exit_code == 0, first.output
    assert len(read_rows(tmp_path)) == 2 * 10
    # an interrupted write leaves a cut line: it is ignored and that row is computed again
    path = tmp_path / "scores.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    second = evaluate(*args, "--methods", "flows_skip,random")
    assert second.exit_code == 0, second.output
    rows = read_rows(tmp_path)
    assert len(rows) == 2 * 10 * 2
    assert len({(r["model"], r["image"], r["method"]) for r in rows}) == len(rows)
    table = json.loads((tmp_path / "results.json").read_text())
    assert all(row["models"] == 2 for row in table)
    assert "mean +- std over models" in second.output


def test_bad_dataset_root(tmp_path):
    result = evaluate("--dataset", "cub", "--dataset-root", tmp_path)
    assert result.exit_code == 2 and "images.txt: missing" in result.output
    result = evaluate("--methods", "flows_skip,magic")
    assert result.exit_code == 2 and "unknown method 'magic'" in result.output


@pytest.mark.slow
def test_torchrun_two_processes_match_one(folder_tree, tmp_path):
    args = ["evaluate", "--dataset", "folder", "--dataset-root", str(folder_tree), "--methods",
            "flows_skip,gradient", "--points", 7, "--device", "cpu"]
    args = [str(a) for a in args]
    command = ["-m", "zennit_resnet_lrp.cli.main", *args]
    single = subprocess.run([sys.executable, *command, "-o", str(tmp_path / "one")],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29517", *command, "-o", str(tmp_path / "two")],
                            capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert double.returncode == 0, double.stderr[-2000:]
    assert sorted((tmp_path / "two").glob("scores*.jsonl")) == [tmp_path / "two" / f"scores.rank{r}.jsonl"
                                                                 for r in (0, 1)]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert [r["method"] for r in one] == [r["method"] for r in two]
    for a, b in zip(one, two):
        for key in ("images", "insertion", "deletion", "id", "insertion_std", "deletion_std", "id_std"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key


def test_config_with_one_checkpoint_and_shipped_configs(tmp_path):
    weights = ROOT / "zennit_resnet_lrp" / "application" / "data" / "demo-mnist.pt"
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model": "demo-mnist", "weights": str(weights), "limit": 2, "batch_size": 32}))
    result = evaluate("-c", config, "--methods", "random", "--points", 4, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "results.json").read_text())[0]["images"] == 2
    for name in ("ImageNet_resnet50.json", "CUB_resnet50.json", "ImageNet_resnet50_reference.json",
                 "CUB_resnet50_reference.json"):
        missing = evaluate("-c", ROOT / "configs" / name, "-o", tmp_path / name)
        assert missing.exit_code == 2, missing.output
        assert "no such dataset folder" in missing.output or "images.txt: missing" in missing.output


def test_every_image_failing_writes_nothing(tmp_path):
    (tmp_path / "data" / "class0").mkdir(parents=True)
    (tmp_path / "data" / "class0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = evaluate("--dataset", "folder", "--dataset-root", tmp_path / "data", "--methods", "random",
                      "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert "broken.png: not a readable image" in result.output and "| method |" not in result.output
    assert not (tmp_path / "out").exists()


def _table(folder):
    return json.loads((folder / "results.json").read_text())


def test_a_folder_belongs_to_one_configuration(tmp_path):
    """A rerun into the same folder with other options is refused, naming what differs, and the old table is not
    returned; with the same options it resumes and gives the same table."""
    args = ["--methods", "random,gradient", "--limit", 3, "--points", 5, "-o", tmp_path]
    first = evaluate(*args)
    assert first.exit_code == 0, first.output
    table = _table(tmp_path)
    for changed, fragment in ((["--baseline", "blur"], 'metric.baseline "black" -> "blur"'),
                              (["--heat-quantization"], "metric.heat_quantization null -> 8"),
                              (["--explain", "label"], 'metric.explain "predicted" -> "label"'),
                              (["--seed", 5], "seed 0 -> 5"),
                              (["--weights", "random"], 'models'),
                              (["--limit", 4], "dataset.limit 3 -> 4")):
        refused = evaluate(*args, *changed)
        assert refused.exit_code == 2, refused.output
        assert "holds results of another configuration" in refused.output and fragment in refused.output
        assert "| random |" not in refused.output  # the old table is not returned
    again = evaluate(*args, "--methods", "random,gradient,flows_skip")  # more methods: the same configuration
    assert again.exit_code == 0, again.output
    assert _table(tmp_path)[:2] == table
    assert json.loads((tmp_path / "run.json").read_text())["configuration"]["seed"] == 0


def test_method_lists_are_checked(tmp_path):
    for methods, fragment in (("", "give at least one method"), ("random,,gradient", "give at least one method"),
                              ("random,random", "method(s) random given more than once")):
        result = evaluate("--methods", methods, "-o", tmp_path / "out")
        assert result.exit_code == 2 and fragment in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_one_run_at_a_time_per_folder(tmp_path):
    """A second run into a folder another run is writing to is refused at once; two runs started together leave
    every (model, image, method) row once in the files."""
    from zennit_resnet_lrp.evaluation.store import locked

    with locked(tmp_path / "busy"):
        refused = evaluate("--methods", "random", "--limit", 2, "-o", tmp_path / "busy")
    assert refused.exit_code == 2 and "another evaluation is writing to" in refused.output
    command = [sys.executable, "-m", "zennit_resnet_lrp.cli.main", "evaluate", "--methods", "random,gradient",
               "--limit", "12", "--points", "5", "-o", str(tmp_path / "shared")]
    runs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outcomes = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in outcomes) in ([0, 0], [0, 2]), outcomes
    assert all(code == 0 or "another evaluation is writing" in err for code, err in outcomes)
    lines = [json.loads(line) for path in (tmp_path / "shared").glob("scores*.jsonl")
             for line in path.read_text().splitlines()]
    keys = [(row["model"], row["image"], row["method"]) for row in lines]
    assert len(keys) == len(set(keys)) == 12 * 2


def test_resumed_equals_uninterrupted_for_every_method(tmp_path):
    """Every method's random choices come from the run's seed and the image alone: a run interrupted after some rows
    and resumed scores exactly as one run straight through (smoothgrad and random included)."""
    args = ["--methods", "all", "--limit", 3, "--points", 5, "--images-per-step", 2]
    whole = evaluate(*args, "-o", tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    cut = evaluate(*args, "-o", tmp_path / "cut")
    assert cut.exit_code == 0, cut.output
    path = tmp_path / "cut" / "scores.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[::3]) + "\n")  # as if interrupted: two thirds of the rows are missing
    resumed = evaluate(*args, "-o", tmp_path / "cut")
    assert resumed.exit_code == 0, resumed.output
    scores = {folder: {(r["image"], r["method"]): (r["insertion"], r["deletion"]) for r in read_rows(tmp_path / folder)}
              for folder in ("whole", "cut")}
    assert scores["whole"].keys() == scores["cut"].keys() and len(scores["whole"]) == 3 * (len(METHODS) - 1)
    different = [key for key in scores["whole"] if scores["whole"][key] != scores["cut"][key]]
    assert not different
    seeded = evaluate("--methods", "smoothgrad,random", "--limit", 3, "--points", 5, "--seed", 1, "-o", tmp_path / "s1")
    assert seeded.exit_code == 0, seeded.output
    other = {(r["image"], r["method"]): r["insertion"] for r in read_rows(tmp_path / "s1")}
    assert any(other[key] != scores["whole"][key][0] for key in other if key[1] == "random")


def _refuse_work(monkeypatch):
    """Reading the dataset or loading a model fails the run: what a test asserts happens before any work."""
    from zennit_resnet_lrp.application.models import ModelSpec
    from zennit_resnet_lrp.evaluation.datasets import DATASETS

    def work(*args, **kwargs):
        raise AssertionError("worked before refusing")

    monkeypatch.setattr(ModelSpec, "load", work)
    monkeypatch.setitem(DATASETS, "digits", work)


def test_the_table_keeps_the_methods_an_earlier_run_scored_in_the_folder(tmp_path):
    """A rerun with fewer methods (the same configuration) shows every method the folder holds, its own first, and
    names the ones it did not score; results.json and results.csv hold them all."""
    args = ["--limit", 2, "--points", 4, "-o", tmp_path]
    assert evaluate(*args, "--methods", "random,gradient").exit_code == 0
    again = evaluate(*args, "--methods", "gradient")
    assert again.exit_code == 0, again.output
    assert [row["method"] for row in _table(tmp_path)] == ["gradient", "random"]
    assert [line.split(",")[0] for line in (tmp_path / "results.csv").read_text().splitlines()[1:]] == \
        ["gradient", "random"]
    assert "| gradient |" in again.output and "| random |" in again.output
    assert f"note: the table also holds random: scored into {tmp_path} by an earlier run" in again.output


def test_a_second_run_into_a_locked_folder_is_refused_before_reading_data_or_loading_a_model(tmp_path, monkeypatch):
    """The folder's lock is taken first: a run into a folder another run holds is refused at once (exit 2), without
    reading the dataset or loading a model, and leaves the holder's files as they are."""
    from zennit_resnet_lrp.evaluation.store import locked

    _refuse_work(monkeypatch)
    with locked(tmp_path / "busy"):
        (tmp_path / "busy" / "run.json").write_text("{}")  # the holder's record
        refused = evaluate("--methods", "random", "-o", tmp_path / "busy")
        assert refused.exit_code == 2, refused.output
        assert "another evaluation is writing to" in refused.output
        assert sorted(path.name for path in (tmp_path / "busy").iterdir()) == [".lock", "run.json"]


@pytest.mark.parametrize("blocked", ["results.json", "results.csv", "curves.png"])
def test_every_file_evaluate_writes_is_checked_before_any_work(tmp_path, monkeypatch, blocked):
    _refuse_work(monkeypatch)
    (tmp_path / "out" / blocked).mkdir(parents=True)
    result = evaluate("--methods", "random", "--plot", "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert f"cannot write to {tmp_path / 'out' / blocked}: it is a folder" in result.output


def test_evaluate_plot_without_matplotlib_is_refused_before_any_work(tmp_path, monkeypatch):
    from zennit_resnet_lrp.application import plots

    def missing():
        raise plots.PlotError("--plot needs matplotlib: pip install 'zennit-resnet-lrp[plot]'")

    _refuse_work(monkeypatch)
    monkeypatch.setattr(plots, "_pyplot", missing)
    result = evaluate("--methods", "random", "--plot", "-o", tmp_path / "out")
    assert result.exit_code == 1 and "error: --plot needs matplotlib" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_evaluate_plot_draws_each_point_at_the_fraction_it_was_taken(tmp_path, monkeypatch):
    """28x28 digits, 5 points: a step of ceil(784 / 5) = 157 pixels, and point i keeps the 157 (i + 1) + 1 most
    relevant pixels (the paper's threshold at sorted position 157 (i + 1)): the first point lies at 158 / 784, not 0."""
    from zennit_resnet_lrp.application import plots

    drawn = {}
    monkeypatch.setattr(plots, "curves_plot", lambda rows, path, fractions, subject: drawn.update(
        fractions=fractions, subject=subject, methods={row["method"] for row in rows}))
    result = evaluate("--methods", "random,gradient", "--limit", 2, "--points", 5, "--plot", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert drawn["fractions"] == pytest.approx([158 / 784, 315 / 784, 472 / 784, 629 / 784, 1.0])
    assert drawn["methods"] == {"random", "gradient"} and drawn["subject"] == "demo-mnist on digits"
