"""Hugging Face image classifiers: each family conserves relevance as the raw model (its ``ModelOutput`` as it is),
and ``--model hf/<folder>`` loads one saved with ``save_pretrained`` (its weights, or random ones from its config)."""
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.application.models import ModelError, UnknownNameError, load_model
from zennit_resnet_lrp.cli.main import cli

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "examples" / "chelsea.png"
SIDE, CLASSES = 32, 5

# one small config of each family: a few channels, one or two blocks, 32-pixel images, 5 classes
FAMILIES = {
    "resnet": lambda: transformers.ResNetForImageClassification(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck", num_labels=CLASSES)),
    "convnext": lambda: transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
        hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=SIDE, num_labels=CLASSES)),
    "vit": lambda: transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=SIDE,
        patch_size=8, num_labels=CLASSES)),
    "swin": lambda: transformers.SwinForImageClassification(transformers.SwinConfig(
        image_size=SIDE, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4,
        num_labels=CLASSES)),
    "dinov2": lambda: transformers.Dinov2ForImageClassification(transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=SIDE, patch_size=8,
        num_labels=CLASSES)),
}


def build(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return FAMILIES[family]().double().eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_raw_hf_model_conserves_and_is_left_unchanged(family):
    model = build(family)
    modules = dict(model.named_modules())
    state = {key: value.clone() for key, value in model.state_dict().items()}
    torch.manual_seed(1)
    inputs = torch.randn(2, 3, SIDE, SIDE, dtype=torch.float64)
    result = lrp.attribute(model, inputs)  # the model as it is: model(x) returns an ImageClassifierOutput
    assert result.relevance.shape == inputs.shape
    assert result.target.tolist() == model(inputs).logits.argmax(1).tolist()
    assert result.conservation_error.max() < 1e-5, result.conservation_error
    assert dict(model.named_modules()) == modules
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert not model.training


@pytest.fixture
def folder(tmp_path):
    """A tiny ResNet saved as the hub holds it: config (with class names), weights and image processor."""
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                                       num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"},
                                       label2id={"cat": 0, "dog": 1, "fox": 2})
    path = tmp_path / "tiny-resnet"
    transformers.ResNetForImageClassification(config).save_pretrained(path)
    transformers.ConvNextImageProcessor(size={"shortest_edge": SIDE}, crop_pct=0.5, image_mean=[0.4, 0.5, 0.6],
                                        image_std=[0.2, 0.25, 0.3]).save_pretrained(path)
    return path


def test_load_hf_folder_takes_its_weights_names_and_preprocessing(folder):
    loaded = load_model(f"hf/{folder}")
    saved = transformers.ResNetForImageClassification.from_pretrained(folder)
    assert all(torch.equal(value, saved.state_dict()[key]) for key, value in loaded.model.state_dict().items())
    assert loaded.categories == ["cat", "dog", "fox"]
    assert (loaded.preprocessing.resize, loaded.preprocessing.crop) == (2 * SIDE, SIDE)  # side / crop_pct, side
    assert tuple(loaded.preprocessing.mean) == (0.4, 0.5, 0.6)
    assert tuple(loaded.preprocessing.std) == (0.2, 0.25, 0.3)
    assert loaded.preprocessing.interpolation == "bicubic"
    assert not loaded.model.training


def test_load_hf_random_is_seeded_and_not_the_saved_weights(folder):
    first, second = (load_model(f"hf/{folder}", "random", seed=3).model.state_dict() for _ in range(2))
    saved = load_model(f"hf/{folder}").model.state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["classifier.1.weight"], saved["classifier.1.weight"])
    assert load_model(f"hf/{folder}", "random", num_classes=7).model.config.num_labels == 7
    checkpoint = folder / "head.pt"
    torch.save(first, checkpoint)
    restored = load_model(f"hf/{folder}", checkpoint).model.state_dict()
    assert all(torch.equal(restored[key], first[key]) for key in first)
    with pytest.raises(UnknownNameError, match="has 3 classes, not 7"):
        load_model(f"hf/{folder}", num_classes=7)


def test_load_hf_without_processor_falls_back_to_config_size_and_imagenet(tmp_path):
    model = build("vit").float()
    model.save_pretrained(tmp_path)
    preprocessing = load_model(f"hf/{tmp_path}").preprocessing
    assert (preprocessing.resize, preprocessing.crop) == (SIDE, SIDE)
    assert tuple(preprocessing.std) == (0.229, 0.224, 0.225)


def test_load_hf_missing_folder_is_one_line_error(tmp_path):
    with pytest.raises(ModelError, match="no such folder.*save_pretrained") as error:
        load_model(f"hf/{tmp_path / 'absent'}")
    assert "\n" not in str(error.value)
    with pytest.raises(UnknownNameError, match="not 'IMAGENET1K_V1'"):
        load_model(f"hf/{tmp_path}", "IMAGENET1K_V1")
    with pytest.raises(ModelError, match="this folder holds no config.json"):
        load_model(f"hf/{tmp_path}")
    transformers.BertConfig(num_hidden_layers=1).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="not a Hugging Face image classifier"):
        load_model(f"hf/{tmp_path}")


def test_load_hf_without_transformers_says_how_to_install(monkeypatch, folder):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    with pytest.raises(ModelError, match=r"needs transformers: pip install 'zennit-resnet-lrp\[hf\]'"):
        load_model(f"hf/{folder}")


@pytest.mark.parametrize("weights", [[], ["--weights", "random"]])
def test_cli_explain_hf_folder_writes_heatmaps(folder, tmp_path, weights):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["explain", str(IMAGE), "--model", f"hf/{folder}", *weights, "--device", "cpu",
                                      "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert len(list(out.glob("*_heatmap.png"))) == 1
    assert "no --weights" not in result.output  # a folder's own weights are not random
