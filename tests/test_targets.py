"""Regions of a dense output: "why are these pixels class k" for a segmentation model (its dict output included),
with the start relevance the region's scores summed, conserved, and the model as it was."""
import pytest
import torch
import torchvision

import zennit_resnet_lrp as lrp
from helpers import make_inputs, randomize_batchnorm


class TinySegmenter(torch.nn.Module):
    """An encoder with a residual block, a 1x1 classifier and bilinear upsampling; a dict output as torchvision's."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.body = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, 1, 1), torch.nn.ReLU())
        self.classifier = torch.nn.Conv2d(8, classes, 1)

    def forward(self, x):
        features = self.stem(x)
        features = features + self.body(features)
        logits = self.classifier(features)
        return {"out": torch.nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear",
                                                       align_corners=False)}


def _segmenter():
    torch.manual_seed(0)
    return randomize_batchnorm(TinySegmenter()).double().eval()


@pytest.mark.parametrize("start_with", ["softmax", "logit", "one"])
@pytest.mark.parametrize("where", ["predicted", "mask", "box"])
def test_region_start_is_its_scores_summed_and_conserved(start_with, where):
    model, x = _segmenter(), make_inputs(2, 16)
    with torch.no_grad():
        logits = model(x)["out"]
    box = torch.zeros(2, 16, 16, dtype=torch.bool)
    box[:, 4:12, 2:9] = True
    drawn = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.5
    mask = {"predicted": logits.argmax(1) == 2, "mask": drawn, "box": box}[where]
    region = {"predicted": lrp.Region(2), "mask": lrp.Region(2, drawn), "box": lrp.Region(2, box=(4, 2, 12, 9))}[where]
    scores = {"softmax": logits.softmax(1)[:, 2], "logit": logits[:, 2], "one": torch.ones_like(logits[:, 2])}
    expected = (scores[start_with] * mask).flatten(1).sum(1)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    result = lrp.attribute(model, x, target=region, start_with=start_with, record_blocks=True)
    torch.testing.assert_close(result.start, expected, rtol=1e-12, atol=0)
    assert float(result.conservation_error.max()) <= 1e-12
    assert result.target.tolist() == [2, 2] and result.region is region
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
    assert lrp.check_conservation(model, x, target=region).passed


def test_a_region_needs_a_dense_output_and_a_class_it_has(resnet18, inputs):
    with pytest.raises(lrp.AttributionError, match=r"a Region needs a dense output \(N, K, H, W\)"):
        lrp.attribute(resnet18, inputs, target=lrp.Region(1))
    with pytest.raises(lrp.AttributionError, match="region label 7 is out of range for 4 classes"):
        lrp.attribute(_segmenter(), make_inputs(1, 16), target=lrp.Region(7))
    with pytest.raises(lrp.AttributionError, match=r"for a dense output \(N, K, H, W\) explain a .*Region"):
        lrp.attribute(_segmenter(), make_inputs(1, 16))


@pytest.mark.parametrize("name", [pytest.param("fcn_resnet50", marks=pytest.mark.slow),
                                  pytest.param("deeplabv3_resnet50", marks=pytest.mark.slow), "lraspp_mobilenet_v3_large"])
def test_torchvision_segmentation_regions_conserve(name):
    torch.manual_seed(0)
    builder = getattr(torchvision.models.segmentation, name)
    model = randomize_batchnorm(builder(weights=None, weights_backbone=None, num_classes=5, aux_loss=False))
    model = model.double().eval()
    result = lrp.attribute(model, make_inputs(1, 64), target=lrp.Region(3), start_with="logit")
    assert float(result.conservation_error.max()) <= lrp.DEFAULT_TOLERANCE
