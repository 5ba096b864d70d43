"""The shipped demo segmenter: loads by name, segments the shipped held-out canvases, and its regions conserve."""
import numpy as np
import pytest
import torch
from PIL import Image

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.application.demo import (
    BACKGROUND, DEMO_MODELS, DIGIT_THRESHOLD, canvas_labels, demo_canvases, digit_canvases, mnist_split,
)
from zennit_resnet_lrp.application.images import open_image
from zennit_resnet_lrp.application.models import load_model

NAME = "demo-digits-segmentation"


@pytest.fixture(scope="module")
def loaded():
    return load_model(NAME)


@pytest.fixture(scope="module")
def shipped(loaded):
    """The shipped canvases as the model takes them (N, 1, 56, 56) and their label maps (N, 56, 56)."""
    paths = demo_canvases()
    inputs = torch.stack([loaded.preprocessing(open_image(path)) for path in paths])
    labels = torch.stack([torch.from_numpy(np.array(Image.open(canvas_labels(path)))).long() for path in paths])
    return inputs, labels


def test_loads_by_name_as_a_small_segmenter(loaded, shipped):
    assert DEMO_MODELS[NAME].task == "segmentation" and DEMO_MODELS["demo-mnist"].task == "classification"
    assert loaded.categories == [str(digit) for digit in range(10)] + ["background"]
    assert sum(parameter.numel() for parameter in loaded.model.parameters()) < 150_000
    with torch.no_grad():
        logits = loaded.model(shipped[0])
    assert logits.shape == (len(shipped[0]), 11, 56, 56)


def test_shipped_canvases_are_segmented(loaded, shipped):
    inputs, labels = shipped
    assert len(inputs) == 6
    with torch.no_grad():
        predicted = loaded.model(inputs).argmax(1)
    digits = labels != BACKGROUND
    # measured: 0.998 of all pixels, 0.978 of the digit pixels (held-out mIoU 0.93 over 500 canvases: demo-metrics.json)
    assert float((predicted == labels).float().mean()) >= 0.97
    assert float((predicted[digits] == labels[digits]).float().mean()) >= 0.9


def test_shipped_label_maps_mark_the_bright_pixels_with_held_out_digits(shipped):
    paths = demo_canvases()
    _, (_, held_out_labels) = mnist_split()
    for path, labels in zip(paths, shipped[1]):
        pixels = torch.from_numpy(np.array(Image.open(path)))
        assert torch.equal(labels != BACKGROUND, pixels > DIGIT_THRESHOLD), path.name
        present = set(labels.unique().tolist()) - {BACKGROUND}
        assert present and present <= set(held_out_labels.tolist())
        assert path.stem.endswith("digits" + "".join(map(str, sorted(present))))


def test_canvases_are_seeded():
    (pixels, labels), _ = mnist_split()
    first, second = digit_canvases(pixels, labels, 4, seed=3), digit_canvases(pixels, labels, 4, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(first[0], digit_canvases(pixels, labels, 4, seed=4)[0])


def test_region_relevance_conserves_and_leaves_the_model_as_it_was(loaded, shipped):
    model = load_model(NAME).model.double()
    inputs, labels = shipped[0][:3].double(), shipped[1][:3]
    state = {key: value.clone() for key, value in model.state_dict().items()}
    for index in range(len(inputs)):
        label = int(labels[index][labels[index] != BACKGROUND][0])
        region = lrp.Region(label, labels[index] == label)
        for start_with in ("softmax", "logit"):
            result = lrp.attribute(model, inputs[index:index + 1], target=region, start_with=start_with)
            assert float(result.start[0]) != 0.0
            assert float(result.conservation_error.max()) <= 1e-5  # measured: 2.3e-16
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
