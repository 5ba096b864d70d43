"""The resnet-lrp command line: files written, tables, exit statuses, and every bad-input case."""
import inspect
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.cli.main import cli
from zennit_resnet_lrp.application.images import open_image
from zennit_resnet_lrp.application.demo import demo_images
from zennit_resnet_lrp.application.models import load_model
from helpers import assert_one_line_error

DIGITS = demo_images()
ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture
def checkpoint(tmp_path):
    """A resnet18 state_dict with 5 classes, saved as the paper's CUB checkpoints are (a plain state_dict)."""
    torch.manual_seed(0)
    path = tmp_path / "resnet18_5.pt"
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), path)
    return path


def test_explain_default_writes_demo_heatmaps(tmp_path):
    result = run("explain", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    heatmaps = sorted(tmp_path.glob("*_heatmap.png"))
    assert len(heatmaps) == len(DIGITS) == 20
    for path in heatmaps:
        with Image.open(path) as image:
            assert (image.size, image.mode) == ((28, 28), "RGB")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary) == 20
    assert (tmp_path / "summary.csv").read_text().count("\n") == 21
    assert all(row["conservation_error"] < 1e-5 for row in summary)
    correct = sum(row["predicted_name"] == row["image"].split("label")[1][0] for row in summary)
    assert correct >= 18  # a trained network on held-out digits
    assert "predicted" in result.output and "conservation error" in result.output
    assert (tmp_path / "overview.png").exists()


def test_explain_npy_equals_library(tmp_path):
    images = DIGITS[:3]
    result = run("explain", *images, "--save-relevance", "--overlay", "--top-k", "2", "-o", tmp_path,
                 "--method", "flows_skip")
    assert result.exit_code == 0, result.output
    loaded = load_model("demo-mnist")
    inputs = torch.stack([loaded.preprocessing(open_image(path)) for path in images])
    ranked = loaded.model(inputs).argsort(1, descending=True)
    for k in range(2):
        expected = lrp.attribute(loaded.model, inputs, "flows_skip", target=ranked[:, k], tolerance=None)
        for index, path in enumerate(images):
            stem = f"{path.stem}_{int(ranked[index, k])}"
            saved = np.load(tmp_path / f"{stem}_relevance.npy")
            assert saved.shape == (1, 28, 28)
            np.testing.assert_array_equal(saved, expected.relevance[index].numpy())
            assert (tmp_path / f"{stem}_overlay.png").exists()


def test_explain_label_quantization_normalize(tmp_path):
    result = run("explain", DIGITS[0], "--label", 3, "--heat-quantization", "--hq-level", 4, "--normalize",
                 "--sign", "absolute_value", "--cmap", "hot", "-o", tmp_path, "--start-with", "one")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / f"{DIGITS[0].stem}_3_heatmap.png") as image:
        colours = image.getcolors()
    assert len(colours) <= 4  # four quantization levels
    row = json.loads((tmp_path / "summary.json").read_text())[0]
    assert row["target"] == 3 and row["start"] == 1.0


def test_explain_torchvision_checkpoint_and_config(tmp_path, checkpoint):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model": "resnet18", "weights": str(checkpoint), "num_classes": 5,
                                  "image_size": 64, "resize": 72, "batch_size": 2}))
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, mode in (("grey.png", "L"), ("rgba.png", "RGBA"), ("palette.png", "P"), ("cmyk.jpg", "CMYK")):
        Image.new(mode, (90, 80), 100).save(photos / name)
    result = run("explain", photos, "-c", config, "--crop", 48, "-o", tmp_path / "out", "--device", "cpu", "--size",
                 "input")
    assert result.exit_code == 0, result.output
    for path in (tmp_path / "out").glob("*_heatmap.png"):
        with Image.open(path) as image:
            assert image.size == (48, 48)  # --crop overrides the config's image_size
    assert len(list((tmp_path / "out").glob("*_heatmap.png"))) == 4
    assert "cmyk.jpg: converted from CMYK to RGB" in result.output
    assert "rgba.png: its alpha channel dropped" in result.output
    photo_size = run("explain", photos / "grey.png", "-c", config, "-o", tmp_path / "photo", "--overlay")
    assert photo_size.exit_code == 0, photo_size.output
    for kind in ("heatmap", "overlay"):
        with Image.open(next((tmp_path / "photo").glob(f"grey_*_{kind}.png"))) as image:
            assert image.size == (90, 80)  # the photo's own size


def test_check_table_and_exit_status(tmp_path):
    good = run("check", "--json", tmp_path / "report.json", "--plot", tmp_path / "fig5.png")
    assert good.exit_code == 0, good.output
    lines = good.output.splitlines()
    assert lines[1].split() == ["block", "entering", "leaving", "skip", "share", "leak"]
    assert [line.split()[0] for line in lines[2:6]] == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert lines[-1].endswith("PASS")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and len(report["blocks"]) == 4 and max(report["error"]) <= 1e-5
    with Image.open(tmp_path / "fig5.png") as image:
        assert image.size[0] > 100
    leaky = run("check", "--method", "flows_skip", "--json", "-")
    assert leaky.exit_code == 1
    assert json.loads(leaky.output)["passed"] is False
    variant = run("check", "--skip-connection-prop-type", "latest", "--tolerance", "0.5", *DIGITS[:2])
    assert variant.exit_code == 0 and "latest, 2 image(s)" in variant.output


def test_methods_lists_ours_and_zennits():
    result = run("methods")
    names = [line.split()[0] for line in result.output.splitlines()[2:] if not line.startswith(" ")]
    assert names[0] == "flows_skip_conservative"
    assert {"flows_skip", "flows_skip_simple", "latest", "simple", "epsilon_plus_flat"} <= set(names)


def test_version_and_help():
    assert run("--version").output.strip() == f"resnet-lrp, version {lrp.__version__}"
    for command in ("explain", "check", "methods"):
        assert run(command, "--help").exit_code == 0


@pytest.mark.parametrize("args, code, fragment", [
    (["explain", "/no/such.png"], 2, "/no/such.png: no such file"),
    (["explain", "--model", "resnet9000"], 2, "unknown model 'resnet9000'"),
    (["explain", "--method", "nope"], 2, "unknown method 'nope'"),
    (["explain", "--model", "resnet18", "--weights", "IMAGENET9K"], 2, "unknown weights 'IMAGENET9K'"),
    (["explain", "--label", "10"], 2, "target 10 is out of range for a model with 10 classes (0..9)"),
    (["explain", "--cmap", "rainbow"], 2, "unknown colour map"),
    (["explain", "--method", "latest", "--skip-connection-prop-type", "simple"], 2, "disagree"),
    (["check", "--mean", "0.1,0.2"], 2, "takes 1 channel(s), got 2 values"),
    (["explain", "-c", "/no/config.json"], 2, "cannot read /no/config.json"),
])
def test_usage_errors(args, code, fragment):
    assert_one_line_error(run(*args), code, fragment)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_a_usage_error():
    assert_one_line_error(run("explain", "--device", "cuda"), 2, "no CUDA GPU is available here")


def test_empty_folder_and_bad_config(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("explain", tmp_path / "empty"), 2, "folder holds no images")
    config = tmp_path / "bad.json"
    config.write_text('{"model": "resnet18", "colour": 1}')
    assert_one_line_error(run("explain", "-c", config), 2, "unknown key(s) colour")


def test_checkpoint_that_does_not_fit(tmp_path, checkpoint):
    image, output = DIGITS[0], tmp_path / "out"
    assert_one_line_error(run("explain", image, "--model", "resnet18", "--weights", checkpoint, "-o", output), 1,
                          "fc.weight is (5, 512) in the checkpoint but (1000, 512)", "--num-classes 5")
    partial = tmp_path / "partial.pt"
    state = torch.load(checkpoint, weights_only=True)
    state.pop("layer4.1.bn2.bias")
    torch.save({"state_dict": state, "epoch": 3}, partial)
    assert_one_line_error(run("explain", image, "--model", "resnet18", "--num-classes", 5, "--weights", partial,
                              "-o", output), 1, "missing keys layer4.1.bn2.bias")
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # not weights-only loadable: never unpickled
    assert_one_line_error(run("explain", image, "--model", "resnet18", "--weights", pickled, "-o", output), 1,
                          "not a readable weights-only checkpoint", "save model.state_dict() instead")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    assert_one_line_error(run("explain", image, "--model", "resnet18", "--weights", truncated, "-o", output), 1,
                          "not a complete torch.save file (cut short?)")
    assert not output.exists()  # nothing was explained: no output folder left behind


def test_bad_image_among_good_ones(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in DIGITS[:2]:
        shutil.copy(path, folder / path.name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = run("explain", folder, "-o", tmp_path / "out")
    assert_one_line_error(result, 1, "broken.png: not a readable image", "1 of 3 image(s) failed")
    assert len(list((tmp_path / "out").glob("*_heatmap.png"))) == 2
    assert len(json.loads((tmp_path / "out" / "summary.json").read_text())) == 2
    assert not list((tmp_path / "out").glob(".*partial"))


def test_installed_command_runs(tmp_path):
    executable = shutil.which("resnet-lrp") or pytest.skip("resnet-lrp is not installed on PATH")
    done = subprocess.run([executable, "explain", str(DIGITS[0]), str(DIGITS[1]), "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(list(tmp_path.glob("*_heatmap.png"))) == 2
    failed = subprocess.run([executable, "explain", "--model", "nope"], capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2
    assert failed.stderr.strip().count("\n") == 0 and failed.stderr.startswith("error:")


def test_timm_models_by_name_with_random_weights_or_a_checkpoint(tmp_path):
    pytest.importorskip("timm")
    args = ["check", "--model", "timm/resnet18", "--crop", 64, "--resize", 64, "--dtype", "float64", "--random", 2]
    result = run(*args, "--weights", "random", "--num-classes", 5)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].endswith("PASS") and "warning" not in result.output
    torch.save(load_model("timm/resnet18", "random", num_classes=5).model.state_dict(), tmp_path / "timm18.pt")
    from_file = run(*args, "--weights", tmp_path / "timm18.pt", "--num-classes", 5)
    assert from_file.exit_code == 0, from_file.output
    assert_one_line_error(run(*args, "--weights", "IMAGENET1K_V1"), 2, "a checkpoint file or 'random'")
    assert_one_line_error(run("check", "--model", "timm/resnet9000"), 2, "unknown timm model 'resnet9000'")


def test_missing_weights_say_the_weights_are_random(tmp_path):
    image = DIGITS[0]
    args = ["explain", image, "--model", "resnet18", "--crop", 32, "--resize", 32, "-o", tmp_path]
    implicit = run(*args)
    assert implicit.exit_code == 0, implicit.output
    assert "warning: no --weights: resnet18 has random weights" in implicit.output
    explicit = run(*args, "--weights", "random")
    assert explicit.exit_code == 0 and "warning" not in explicit.output


def test_head_size_hint_only_when_only_the_head_differs(tmp_path, checkpoint):
    other_body = run("explain", DIGITS[0], "--model", "resnet50", "--num-classes", 10, "--weights", checkpoint,
                     "-o", tmp_path / "out")
    assert_one_line_error(other_body, 1, "does not fit resnet50")
    assert "--num-classes" not in other_body.output


def test_every_image_failing_claims_nothing_and_leaves_no_folder(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = run("explain", broken, "-o", tmp_path / "out")
    assert_one_line_error(result, 1, "broken.png: not a readable image", "1 of 1 image(s) failed")
    assert "wrote" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [
    ["check", "--json", "{blocker}/report.json"],
    ["check", "--plot", "{blocker}/figure.png"],
    ["explain", "-o", "{blocker}/out"],
    ["evaluate", "-o", "{blocker}/out"],
])
def test_output_paths_checked_before_any_work(tmp_path, args):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    result = run(*[arg.format(blocker=blocker) for arg in args])
    assert_one_line_error(result, 2, f"cannot write to {blocker}/", f"{blocker} is a file, not a folder")
    assert "PASS" not in result.output and "evaluating" not in result.output  # nothing ran
    assert blocker.read_text() == ""


@pytest.mark.parametrize("args", [["explain", "-o", "/proc/x"], ["check", "--plot", "/proc/x/fig.png"],
                                  ["evaluate", "-o", "/proc/x"]])
def test_output_folders_that_take_no_files_are_refused_before_any_work(args):
    """/proc allows root by its permissions and takes nothing: refused up front, not after the work."""
    if not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    result = run(*args)
    assert_one_line_error(result, 2, "cannot write to /proc/x", "/proc takes no new files")
    assert "relevance sum" not in result.output and "PASS" not in result.output


def test_non_finite_image_refused_and_the_others_explained(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(DIGITS[0], folder / DIGITS[0].name)
    array = np.full((28, 28), 0.5, np.float32)
    array[3, 4] = np.inf
    Image.fromarray(array, mode="F").save(folder / "infinite.tif")
    result = run("explain", folder, "-o", tmp_path / "out")
    assert_one_line_error(result, 1, "infinite.tif: holds NaN or infinite pixel values", "1 of 2 image(s) failed")
    assert len(list((tmp_path / "out").glob("*_heatmap.png"))) == 1


def test_top_k_beyond_the_classes_is_a_usage_error(tmp_path):
    assert_one_line_error(run("explain", DIGITS[0], "--top-k", 11, "-o", tmp_path / "out"), 2,
                          "top-k 11 is more than the model's 10 classes")
    assert not (tmp_path / "out").exists()
    assert run("explain", DIGITS[0], "--top-k", 10, "-o", tmp_path / "out").exit_code == 0


def test_one_default_tolerance():
    """check, check_conservation, attribute's warning, locate_violation and explain (--strict) share one tolerance."""
    from zennit_resnet_lrp.application.explain import ExplainOptions

    check_option = next(p for p in cli.commands["check"].params if p.name == "tolerance")
    library = [inspect.signature(function).parameters["tolerance"].default
               for function in (lrp.check_conservation, lrp.attribute, lrp.locate_violation)]
    assert check_option.default == ExplainOptions().tolerance == lrp.DEFAULT_TOLERANCE == 1e-5
    assert library == [lrp.DEFAULT_TOLERANCE] * 3


def test_strict_fails_on_a_paper_variant_and_says_it_loses_relevance_by_design(tmp_path):
    """flows_skip loses a few percent by design: explain --strict exits 1 as check does, and the warning says why in
    the same line; the per-image lines mark the error as above the tolerance."""
    result = run("explain", *DIGITS[:2], "--method", "flows_skip", "--strict", "-o", tmp_path / "out")
    assert_one_line_error(result, 1, "relevance was not conserved (--strict: tolerance 1e-05)")
    warning = [line for line in result.output.splitlines() if line.startswith("warning: flows_skip did not conserve")]
    assert len(warning) == 1 and "on 2 of 2 image(s)" in warning[0] and "by design: " in warning[0], result.output
    assert "flows_skip_conservative conserves" in warning[0]
    assert sum("> tolerance 1e-05: not conserved" in line for line in result.output.splitlines()) == 2
    assert run("check", *DIGITS[:2], "--method", "flows_skip").exit_code == 1
    assert run("explain", *DIGITS[:2], "--strict", "-o", tmp_path / "default").exit_code == 0


def test_methods_grid_shows_the_sign_a_single_method_shows(tmp_path):
    """The default --sign positive holds for every method of --methods: no heatmap has blue (negative) pixels, and
    each method's heatmap in the comparison run is the one its single-method run writes."""
    from zennit.image import palette

    blue = {tuple(colour) for colour in palette("bwr")[:127]}
    several = run("explain", DIGITS[0], "--methods", "flows_skip_conservative,gradient", "-o", tmp_path / "grid")
    single = run("explain", DIGITS[0], "--method", "gradient", "-o", tmp_path / "single")
    assert several.exit_code == 0 and single.exit_code == 0, several.output + single.output
    for path in (tmp_path / "grid").glob("*_heatmap.png"):
        with Image.open(path) as image:
            assert not blue & {tuple(pixel) for pixel in np.asarray(image).reshape(-1, 3).tolist()}, path.name
    grid, = (tmp_path / "grid").glob("*_gradient_heatmap.png")
    alone, = (tmp_path / "single").glob("*_heatmap.png")
    assert grid.read_bytes() == alone.read_bytes()


def test_reused_output_folder_holds_only_this_runs_files(tmp_path):
    """A second run into a folder removes what the first wrote (and says so); a heatmap of unknown origin is named,
    not touched."""
    out = tmp_path / "out"
    assert run("explain", *DIGITS[:3], "-o", out).exit_code == 0
    (out / "mine_heatmap.png").write_bytes(b"not ours")
    again = run("explain", DIGITS[4], "-o", out)
    assert again.exit_code == 0, again.output
    assert sorted(path.name for path in out.glob("*_heatmap.png")) == sorted(
        [f"{DIGITS[4].stem}_{json.loads((out / 'summary.json').read_text())[0]['target']}_heatmap.png",
         "mine_heatmap.png"])
    assert "note: removed the 6 file(s) an earlier run had written" in again.output
    assert "warning: 1 heatmap file(s) in the output folder are not from this run" in again.output
    assert "mine_heatmap.png" in again.output and (out / "mine_heatmap.png").read_bytes() == b"not ours"


def test_token_models_line_adds_up_with_the_tokens_share(tmp_path):
    result = run("explain", DIGITS[0], "--model", "demo-mnist-vit", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    row, = json.loads((tmp_path / "summary.json").read_text())
    line, = [line for line in result.output.splitlines() if line.startswith(str(DIGITS[0]))]
    total = row["relevance_sum"] + row["absorbed"]
    assert f"relevance sum {row['relevance_sum']:.6g} + tokens {row['absorbed']:.6g} = {total:.6g}; " \
           f"start {row['start']:.6g}" in line
    assert abs(total - row["start"]) <= 1e-5 * row["start"]


def test_class_names_printed_beside_the_index_where_the_weights_carry_them(tmp_path):
    """A checkpoint of a torchvision model with ImageNet's 1000 classes: the published weights' names come with the
    index, on the line and in the summary."""
    torch.manual_seed(0)
    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    result = run("explain", ROOT / "examples" / "chelsea.png", "--model", "resnet18", "--weights", path,
                 "--resize", 64, "--crop", 64, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    row, = json.loads((tmp_path / "out" / "summary.json").read_text())
    names = torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"]
    assert row["predicted_name"] == names[row["predicted"]]
    assert f"predicted {row['predicted']} {names[row['predicted']]} (p=" in result.output


def test_uniform_output_is_warned_about(tmp_path, monkeypatch):
    """A model that gives every class the same probability (a zero-initialised head, as torchvision's and timm's
    vision transformers have before training): its heatmaps come with a warning."""
    from zennit_resnet_lrp.application import models
    from zennit_resnet_lrp.application.explain import near_uniform

    assert near_uniform(torch.full((1000,), 1e-3)) and not near_uniform(torch.tensor([0.9, 0.05, 0.05]))

    def untrained(spec, weights=None):
        model = _leaky_model()
        torch.nn.init.zeros_(model[-1].weight), torch.nn.init.zeros_(model[-1].bias)
        return models.LoadedModel(model, "untrained", models.Preprocessing(28, 28, (0.5,), (0.5,), 1))

    monkeypatch.setattr(models.ModelSpec, "load", untrained)
    result = run("explain", *DIGITS[:2], "-o", tmp_path, "--method", "gradient")
    assert result.exit_code == 0, result.output
    assert "warning: the model's output is (near) uniform on 2 of 2 image(s)" in result.output
    monkeypatch.undo()
    assert "(near) uniform" not in run("explain", *DIGITS[:2], "-o", tmp_path / "digits").output


def test_methods_is_a_table_with_whole_descriptions():
    lines = run("methods").output.splitlines()
    assert lines[0].split() == ["method", "kind", "implementation", "commands", "description"]
    assert set(lines[1]) <= {"-", " "}
    text = " ".join(" ".join(lines).split())
    assert "(Achtibat et al. 2024) exactly as LXT 2.1 computes it" in text and "timm's ViTs: not conserving" in text


def test_no_progress_lines_when_stderr_is_not_a_terminal(tmp_path):
    result = run("explain", *DIGITS[:3], "-o", tmp_path / "out")
    assert result.exit_code == 0 and "\r" not in result.output and "left" not in result.output


class Cumulative(torch.nn.Module):
    """A layer no rule covers: its gradient does not conserve relevance."""

    def forward(self, x):
        return x.cumsum(1)


def _leaky_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), Cumulative(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10)).eval()


def test_relevance_not_conserved_is_said_on_stderr_and_strict_fails(tmp_path, monkeypatch):
    """On a model with a layer the method does not cover, explain says so in one line naming the layer type and how
    many images, pointing to the coverage notes; --strict makes it exit 1; check names the module."""
    from zennit_resnet_lrp.application import models

    def leaky(spec, weights=None):
        return models.LoadedModel(_leaky_model(), "leaky", models.Preprocessing(28, 28, (0.5,), (0.5,), 1))

    monkeypatch.setattr(models.ModelSpec, "load", leaky)
    result = run("explain", *DIGITS[:3], "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning: flows_skip_conservative")]
    assert len(warning) == 1 and "on 3 of 3 image(s)" in warning[0] and "Cumulative" in warning[0], result.output
    assert "docs/coverage.md" in warning[0]
    strict = run("explain", *DIGITS[:3], "-o", tmp_path / "strict", "--strict")
    assert_one_line_error(strict, 1, "relevance was not conserved (--strict")
    assert len(list((tmp_path / "strict").glob("*_heatmap.png"))) == 3  # the files are written all the same
    checked = run("check", "--json", tmp_path / "report.json")
    assert checked.exit_code == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert {change["class"] for change in report["changes"]} == {"Cumulative"}
    assert "relevance changes in '2' (Cumulative" in checked.output


def test_demo_model_warns_on_photos(tmp_path):
    result = run("explain", ROOT / "examples" / "chelsea.png", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert "warning: 1 of 1 image(s) are in colour or larger than 56 pixels: demo-mnist was trained on 28x28 " \
           "digits; pass --model" in result.output
    assert "warning" not in run("explain", *DIGITS[:2], "-o", tmp_path / "digits").output


def test_random_weights_are_seeded(tmp_path):
    """Two runs with --weights random give identical files; another --seed other weights."""
    args = ["explain", ROOT / "examples" / "chelsea.png", "--model", "resnet18", "--weights", "random", "--crop", 32,
            "--resize", 32, "--save-relevance"]
    for folder, seed in (("a", 0), ("b", 0), ("c", 7)):
        assert run(*args, "-o", tmp_path / folder, "--seed", seed).exit_code == 0
    files = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert files == sorted(path.name for path in (tmp_path / "b").iterdir())
    for name in files:
        if not name.startswith("summary"):  # the summaries name their folder
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    rows = [[{key: value for key, value in row.items() if key not in ("heatmap", "relevance")}
             for row in json.loads((tmp_path / folder / "summary.json").read_text())] for folder in ("a", "b")]
    assert rows[0] == rows[1]
    a, c = (np.load(next((tmp_path / folder).glob("*_relevance.npy"))) for folder in ("a", "c"))
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_methods_side_by_side_and_labelled_overview(tmp_path):
    result = run("explain", *DIGITS[:3], "--methods", "flows_skip_conservative,gradient,random", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [row["method"] for row in summary] == [name for name in ("flows_skip_conservative", "gradient", "random")
                                                  for _ in range(3)]  # a batch: each method over its images
    assert all(row["relevance_sum"] is None for row in summary if row["method"] != "flows_skip_conservative")
    for path in DIGITS[:3]:
        assert len(list(tmp_path.glob(f"{path.stem}_*_heatmap.png"))) == 3
    with Image.open(tmp_path / "comparison.png") as grid, Image.open(tmp_path / "overview.png") as sheet:
        assert grid.size[0] == 4 * (128 + 4) and grid.size[1] > 3 * 128  # images by methods, with captions
        assert sheet.size[1] > 112  # pairs with their captions below
    assert_one_line_error(run("explain", "--methods", "random", "--method", "flows_skip"), 2,
                          "give --method or --methods, not both")


def test_transformers_on_the_command_line(tmp_path):
    """The ViT demo and a timm vision transformer with random weights: check shows the transformer's blocks and the
    class token's share, explain reports it, evaluate takes attention rollout."""
    checked = run("check", "--model", "demo-mnist-vit", "--random", 2)
    assert checked.exit_code == 0, checked.output
    assert "encoder.layers.encoder_layer_3" in checked.output and "absorbed by the model's own tokens" in checked.output
    assert checked.output.splitlines()[-1].endswith("PASS")
    explained = run("explain", *DIGITS[:2], "--model", "demo-mnist-vit", "-o", tmp_path / "vit")
    assert explained.exit_code == 0, explained.output
    summary = json.loads((tmp_path / "vit" / "summary.json").read_text())
    assert all(row["absorbed"] is not None and row["conservation_error"] < 1e-5 for row in summary)
    evaluated = run("evaluate", "--model", "demo-mnist-vit", "--methods", "flows_skip_conservative,attention_rollout",
                    "--limit", 2, "--points", 4, "-o", tmp_path / "eval")
    assert evaluated.exit_code == 0, evaluated.output
    assert "| attention_rollout |" in evaluated.output
    pytest.importorskip("timm")
    deit = run("check", "--model", "timm/deit_tiny_patch16_224", "--weights", "random", "--random", 1,
               "--dtype", "float64")
    assert deit.exit_code == 0 and deit.output.splitlines()[-1].endswith("PASS"), deit.output
