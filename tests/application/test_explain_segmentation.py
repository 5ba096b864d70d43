"""Explaining segmentations from the library: the pixels a model assigns to a label, outlines, explain_images and
check_regions with ``task="segmentation"``, and torchvision's segmentation models by name."""
import numpy as np
import pytest
import torch
from PIL import Image

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.application.check import check_regions
from zennit_resnet_lrp.application.explain import ExplainOptions, explain_images, label_regions
from zennit_resnet_lrp.application.heatmap import OUTLINE_COLOUR, outline, region_border
from zennit_resnet_lrp.application.images import Preprocessing
from zennit_resnet_lrp.application.models import LoadedModel, UnknownNameError, load_model, model_task

SIDE = 12


class Bright(torch.nn.Module):
    """A two-class segmenter with fixed weights, returning torchvision's dict: class 1 where a pixel is brighter than
    the normalisation's mean, class 0 where it is darker."""

    def __init__(self):
        super().__init__()
        self.split = torch.nn.Conv2d(1, 2, 1, bias=False)
        self.relu = torch.nn.ReLU()
        self.head = torch.nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.split.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.head.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(2, 2, 1, 1))

    def forward(self, x):
        return {"out": self.head(self.relu(self.split(x))), "aux": x}


def _square(top: int, left: int, side: int = 4) -> np.ndarray:
    pixels = np.zeros((SIDE, SIDE), dtype=np.uint8)
    pixels[top:top + side, left:left + side] = 255
    return pixels


@pytest.fixture
def loaded():
    preprocessing = Preprocessing(resize=SIDE, crop=SIDE, mean=(0.5,), std=(0.5,), channels=1)
    return LoadedModel(Bright().eval(), "bright", preprocessing, ["dark", "bright"], None, "segmentation")


@pytest.fixture
def paths(tmp_path):
    """Two images with a white square each, and a black one (no bright pixel)."""
    files = []
    for name, pixels in (("a", _square(2, 3)), ("b", _square(6, 5, 3)), ("black", np.zeros((SIDE, SIDE), np.uint8))):
        files.append(tmp_path / f"{name}.png")
        Image.fromarray(pixels).save(files[-1])
    return files


def _inputs(loaded, paths):
    return torch.stack([loaded.preprocessing(Image.open(path)) for path in paths])


def test_label_regions_are_the_pixels_of_the_label(loaded, paths):
    inputs = _inputs(loaded, paths)
    masks = label_regions(loaded.model, inputs, 1, batch_size=2)
    assert masks.shape == (3, SIDE, SIDE) and masks.dtype == torch.bool
    assert torch.equal(masks[0], torch.from_numpy(_square(2, 3) > 0))
    assert [int(mask.sum()) for mask in masks] == [16, 9, 0]


def test_label_regions_leaves_a_training_model_training(loaded, paths):
    loaded.model.train()
    label_regions(loaded.model, _inputs(loaded, paths), 1)
    assert loaded.model.training


def test_label_regions_refuses_a_classifier_naming_its_output_shape():
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIDE * SIDE, 5))
    with pytest.raises(lrp.AttributionError, match=r"\(N, K, H, W\).*shape \(2, 5\)"):
        label_regions(classifier, torch.zeros(2, 1, SIDE, SIDE), 1)


def test_label_regions_refuses_a_label_out_of_range(loaded, paths):
    with pytest.raises(lrp.AttributionError, match=r"label 2 is out of range for the model's 2 classes \(0..1\)"):
        label_regions(loaded.model, _inputs(loaded, paths), 2)


def test_region_border_surrounds_the_region_and_closes_at_the_edge():
    mask = torch.zeros(6, 7, dtype=torch.bool)
    mask[2:4, 3:5] = True  # inside: the border lies around it
    mask[0:2, 0] = True  # on the image's edge: its own pixels there close the border
    expected = torch.tensor([[1, 1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 1, 1, 0, 0],
                             [1, 0, 1, 0, 0, 1, 0],
                             [0, 0, 1, 0, 0, 1, 0],
                             [0, 0, 0, 1, 1, 0, 0],
                             [0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(region_border(mask), expected)


def test_outline_paints_exactly_the_border():
    image = Image.new("RGB", (7, 6), (255, 255, 255))
    mask = torch.zeros(6, 7, dtype=torch.bool)
    mask[2:4, 3:5] = True
    painted = np.asarray(outline(image, mask))
    green = (painted == OUTLINE_COLOUR).all(-1)
    assert np.array_equal(green, region_border(mask).numpy())
    assert (painted[~green] == 255).all()


def test_outline_refuses_a_mask_of_another_size():
    with pytest.raises(ValueError, match=r"the mask is \(5, 5\) but the image is \(6, 7\)"):
        outline(Image.new("RGB", (7, 6)), torch.zeros(5, 5, dtype=torch.bool))


@pytest.mark.filterwarnings("ignore:found no residual addition")
def test_explain_images_explains_regions_and_names_an_image_without_one(loaded, paths, tmp_path):
    output = tmp_path / "out"
    options = ExplainOptions(target=1, task="segmentation", batch_size=2, overlay=True)
    outcome = explain_images(loaded, paths, output, options)
    assert [(row.image, row.task, row.target, row.region_pixels) for row in outcome.results] == [
        (str(paths[0]), "segmentation", 1, 16), (str(paths[1]), "segmentation", 1, 9)]
    assert all(row.conservation_error < 1e-5 and row.start > 0 for row in outcome.results)
    assert outcome.without_region == [(paths[2], f"the model assigns no pixel to class 1 (bright) in {paths[2]}")]
    assert not outcome.failures
    heatmap = np.asarray(Image.open(outcome.results[0].heatmap))
    assert np.array_equal((heatmap == OUTLINE_COLOUR).all(-1), region_border(torch.from_numpy(_square(2, 3) > 0)))
    overlaid = np.asarray(Image.open(outcome.results[0].overlay))
    assert (overlaid == OUTLINE_COLOUR).all(-1).sum() == region_border(torch.from_numpy(_square(2, 3) > 0)).sum()


def test_explain_images_segmentation_needs_a_label_and_composites(loaded, paths, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(lrp.AttributionError, match="give it"):
        explain_images(loaded, paths, output, ExplainOptions(task="segmentation"))
    with pytest.raises(lrp.AttributionError, match="composites only, not the baseline.*gradient"):
        explain_images(loaded, paths, output, ExplainOptions(target=1, task="segmentation",
                                                             methods=["flows_skip", "gradient"]))
    assert not output.exists()


def test_check_regions_reports_the_inputs_with_pixels(loaded, paths):
    checked = check_regions(loaded.model, _inputs(loaded, paths), 1)
    assert checked.sizes == [16, 9, 0]
    assert checked.checked == [0, 1] and checked.empty == [2]
    assert checked.report.passed and checked.report.attribution.start.shape == (2,)


def test_check_regions_with_no_pixel_anywhere_has_no_report(loaded, paths):
    checked = check_regions(loaded.model, _inputs(loaded, paths[2:]), 1)
    assert checked.report is None and checked.empty == [0]


def test_torchvision_segmentation_models_load_by_name_without_downloads():
    assert model_task("fcn_resnet50") == "segmentation"
    assert model_task("resnet50") == "classification"
    loaded = load_model("lraspp_mobilenet_v3_large", "random", num_classes=3)
    assert loaded.task == "segmentation" and loaded.weights is None
    prep = loaded.preprocessing
    assert prep.resize == prep.crop == 520 and prep.channels == 3
    output = loaded.model(torch.zeros(1, 3, 32, 32))
    assert output["out"].shape == (1, 3, 32, 32)


def test_segmentation_weights_names_are_checked():
    with pytest.raises(UnknownNameError, match="COCO_WITH_VOC_LABELS_V1"):
        load_model("fcn_resnet50", "IMAGENET1K_V1")
