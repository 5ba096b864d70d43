"""The shipped demo networks: trained, conservative with their real BatchNorm biases, and faithful."""
import numpy as np
import pytest
import torch

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.application.images import open_image
from zennit_resnet_lrp.evaluation.datasets import image_folder
from zennit_resnet_lrp.application.demo import DEMO_MODELS, demo_images, export_held_out, mnist_split
from zennit_resnet_lrp.evaluation.run import EvaluationSettings, evaluate
from zennit_resnet_lrp.evaluation.store import read_rows
from zennit_resnet_lrp.evaluation.summary import summarize
from zennit_resnet_lrp.evaluation.metrics import CurveSpec
from zennit_resnet_lrp.application.models import load_model

NAMES = [name for name, demo in DEMO_MODELS.items() if demo.task == "classification"]  # the classifiers


@pytest.fixture(scope="module")
def held_out():
    _, (pixels, labels) = mnist_split()
    return pixels, labels


@pytest.mark.parametrize("name", NAMES)
def test_accuracy_and_size(name, held_out):
    loaded = load_model(name)
    pixels, labels = held_out
    inputs = loaded.preprocessing.normalize(torch.from_numpy(pixels).float() / 255)
    with torch.no_grad():
        accuracy = float((loaded.model(inputs).argmax(1) == torch.from_numpy(labels)).float().mean())
    # measured: 0.987 (BasicBlock), 0.977 (Bottleneck), 0.977 (ConvNeXt), 0.972 (ViT)
    assert accuracy >= (0.95 if name == "demo-mnist-vit" else 0.97)
    assert len(lrp.attribute(loaded.model, inputs[:1], record_blocks=True).blocks) == 4
    assert sum(p.numel() for p in loaded.model.parameters()) * 4 < 2 * 2 ** 20


@pytest.mark.parametrize("name", NAMES)
def test_default_conserves_on_trained_network(name, held_out):
    loaded = load_model(name)
    biases = [m.bias.detach() for m in loaded.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(float(b.abs().max()) > 0.01 for b in biases)  # real, non-zero BatchNorm biases
    pixels, _ = held_out
    inputs = loaded.preprocessing.normalize(torch.from_numpy(pixels[:200]).float() / 255)
    result = lrp.attribute(loaded.model, inputs, record_blocks=True)
    assert float(result.conservation_error.max()) <= 1e-5  # measured: 4.2e-07 over all 1,000 digits
    for block in result.blocks:
        assert float(((block.input - block.output).abs() / result.start).max()) <= 1e-5, block.name
    double = lrp.attribute(loaded.model.double(), inputs.double(), record_blocks=True)
    assert float(double.conservation_error.max()) <= 1e-12  # measured: 8.9e-16


def test_shipped_digits_are_held_out_and_labelled(held_out):
    pixels, labels = held_out
    for path in demo_images():
        index, label = int(path.stem.split("_")[0]), int(path.stem.rsplit("label", 1)[1])
        assert labels[index] == label
        image = open_image(path)
        assert torch.equal(torch.from_numpy(pixels[index, 0]), torch.from_numpy(np.array(image)))


@pytest.mark.slow
def test_faithfulness_ranking_on_held_out_digits(tmp_path):
    """On 100 held-out digits, our methods' ID score clears the baselines by wide margins (README table: 1,000)."""
    root = export_held_out(tmp_path / "digits", limit=100)
    samples, _ = image_folder(root)
    methods = ["flows_skip_conservative", "flows_skip", "zennit_epsilon_plus_flat", "lrp_epsilon_plain", "gradient",
               "integrated_gradients", "gradcam", "random"]
    settings = EvaluationSettings(methods, CurveSpec(points=28), batch_size=256, images_per_step=50)
    evaluate([("demo-mnist", load_model("demo-mnist"))], samples, settings, tmp_path / "out")
    scores = {row["method"]: row["id"] for row in summarize(read_rows(tmp_path / "out"), methods)}
    ours = min(scores["flows_skip_conservative"], scores["flows_skip"])
    assert ours >= scores["random"] + 0.5
    assert ours >= scores["lrp_epsilon_plain"] + 0.5
    assert ours >= scores["gradient"] + 0.3
    assert ours >= scores["integrated_gradients"]
    assert ours >= scores["gradcam"] + 0.05
    assert ours >= scores["zennit_epsilon_plus_flat"] - 0.02


def _id_scores(tmp_path, name: str, methods: list[str]) -> dict[str, float]:
    root = export_held_out(tmp_path / "digits", limit=100)
    samples, _ = image_folder(root)
    settings = EvaluationSettings(methods, CurveSpec(points=28), batch_size=256, images_per_step=50)
    evaluate([(name, load_model(name))], samples, settings, tmp_path / "out")
    return {row["method"]: row["id"] for row in summarize(read_rows(tmp_path / "out"), methods)}


@pytest.mark.slow
def test_faithfulness_ranking_on_convnext(tmp_path):
    """ConvNeXt (layer norms, layer scale, GELU): the default clears every baseline on 100 held-out digits."""
    methods = ["flows_skip_conservative", "gradient", "integrated_gradients", "captum_guided_backprop",
               "captum_gradient_x_input", "gradcam", "random"]
    scores = _id_scores(tmp_path, "demo-mnist-convnext", methods)
    ours = scores.pop("flows_skip_conservative")
    # measured on these 100 digits: ours 0.751, integrated gradients 0.706, gradient x input 0.489, guided backprop
    # 0.279, Grad-CAM 0.114, random 0.025, gradient -0.260
    margins = {"integrated_gradients": 0.02, "captum_gradient_x_input": 0.15, "captum_guided_backprop": 0.3,
               "gradcam": 0.4, "random": 0.5, "gradient": 0.5}
    for method, margin in margins.items():
        assert ours >= scores[method] + margin, (method, ours, scores[method])


@pytest.mark.slow
def test_faithfulness_ranking_on_vit(tmp_path):
    """ViT (attention, class token): the default clears attention rollout, the gradient and random. Integrated
    gradients, and AttnLRP and CP-LRP as LXT computes them, are not among them: they score higher on this model
    (docs/evaluation.md)."""
    methods = ["flows_skip_conservative", "gradient", "attention_rollout", "random"]
    scores = _id_scores(tmp_path, "demo-mnist-vit", methods)
    ours = scores.pop("flows_skip_conservative")
    # measured on these 100 digits: ours 0.774, rollout 0.712, gradient 0.246, random 0.013 (AttnLRP 0.944, CP-LRP
    # 0.873)
    margins = {"attention_rollout": 0.03, "gradient": 0.3, "random": 0.5}
    for method, margin in margins.items():
        assert ours >= scores[method] + margin, (method, ours, scores[method])
