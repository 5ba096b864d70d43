"""--protocol reference against an independent step-by-step reimplementation of the reference implementation's metric
(metrics/patch_insdel.py of LRP-for-ResNet: the map's first channel, heat quantization of the whole map, skimage's
zero-padded block_reduce, thresholds from the sorted patches, OpenCV's nearest-neighbour mask resize, black in [0, 1]
space, the label's softmax, the trapezoid) and its sampling (a DataLoader shuffled by a seed-42 generator, the first
images of each label), written here with numpy alone."""
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_model
from zennit_resnet_lrp.application.images import Preprocessing
from zennit_resnet_lrp.application.methods import METHODS
from zennit_resnet_lrp.application.models import LoadedModel
from zennit_resnet_lrp.evaluation.datasets import Sample, image_folder, subsample_shuffled
from zennit_resnet_lrp.evaluation.metrics import CurveSpec
from zennit_resnet_lrp.evaluation.protocol import PROTOCOLS, REFERENCE
from zennit_resnet_lrp.evaluation.run import EvaluationSettings, evaluate
from zennit_resnet_lrp.evaluation.store import read_rows

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def reference_quantization(attention, levels=8):
    """visualize.py apply_heat_quantization: numpy's linspace over the whole map, in place."""
    attention = attention.copy()
    bins = np.linspace(attention.min(), attention.max(), levels)
    for i in range(levels - 1):
        attention[(attention >= bins[i]) & (attention < bins[i + 1])] = bins[i]
    return attention


def block_reduce_max(array, size):
    """skimage.measure.block_reduce(array, (size, size), np.max): padded with zeros to whole blocks."""
    height, width = array.shape
    padded = np.pad(array, ((0, -height % size), (0, -width % size)), constant_values=0)
    return padded.reshape(padded.shape[0] // size, size, padded.shape[1] // size, size).max(axis=(1, 3))


def nearest_resize(mask, height, width):
    """cv2.resize(mask, (width, height), interpolation=INTER_NEAREST)."""
    rows = np.minimum((np.arange(height) * (mask.shape[0] / height)).astype(int), mask.shape[0] - 1)
    columns = np.minimum((np.arange(width) * (mask.shape[1] / width)).astype(int), mask.shape[1] - 1)
    return mask[rows][:, columns]


def reference_scores(model, image, attention, label, patch_size, step):
    """PatchInsertionDeletion.evaluate, step by step: (insertion AUC, deletion AUC)."""
    channels, height, width = image.shape  # image: the normalised input, as the reference holds it
    if attention.shape != image.shape[1:]:
        attention = attention[0]  # cv2.resize(attention[0]) to the same size: the first channel, unchanged
    patches = block_reduce_max(attention, patch_size)
    order = np.argsort(-patches.ravel(), kind="stable")
    patch_w, patch_h = width // patch_size, height // patch_size
    points = math.ceil(patch_w * patch_h / step)
    pixels = image * np.array(STD)[:, None, None] + np.array(MEAN)[:, None, None]  # reverse_normalize
    results = {}
    for mode in ("insertion", "deletion"):
        batch = []
        for i in range(points):
            k = min(step * (i + 1), order.shape[0] - 1)
            threshold = patches[order[k] // patch_w, order[k] % patch_w]
            mask = np.where(threshold <= patches, 1, 0) if mode == "insertion" else np.where(threshold <= patches, 0, 1)
            mask = nearest_resize(mask, height, width)
            batch.append((pixels * mask - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None])
        with torch.no_grad():
            scores = model(torch.tensor(np.stack(batch))).softmax(1)[:, label].numpy()
        results[mode] = (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1)
    return results["insertion"], results["deletion"]


@pytest.mark.parametrize("method", ["captum_gradient_x_input", "flows_skip"])
@pytest.mark.parametrize("patch_size", [1, 4])
def test_reference_protocol_equals_the_reference_metric(tmp_path, method, patch_size):
    """Three photos; a captum map (per channel: quantized whole, then its first channel) and a composite's (summed
    over channels); pixel and 4x4 patches."""
    pytest.importorskip("captum")
    folder = tmp_path / "photos" / "class0"
    folder.mkdir(parents=True)
    for name in ("chelsea.png", "coffee.png", "astronaut.png"):
        shutil.copy(EXAMPLES / name, folder / name)
    model = make_model("resnet18")
    prep = Preprocessing(resize=56, crop=48)
    samples, _ = image_folder(tmp_path / "photos")
    step = 100 if patch_size == 1 else 40
    spec = CurveSpec(step=step, patch_size=patch_size, patch_grid="reference")
    settings = EvaluationSettings([method], spec, PROTOCOLS[REFERENCE], heat_quantization=8, images_per_step=2)
    evaluate([("resnet18", LoadedModel(model, "resnet18", prep))], samples, settings, tmp_path / "out")
    rows = {row["image"]: row for row in read_rows(tmp_path / "out")}
    for sample in samples:
        image = prep(Image.open(sample.path).convert("RGB")).double()
        with torch.no_grad():
            target = model(image[None]).argmax(1)
        attention = METHODS[method](model, image[None], target)[0].numpy()
        attention = reference_quantization(attention)
        insertion, deletion = reference_scores(model, image.numpy(), attention, sample.label, patch_size, step)
        row = rows[str(sample.path)]
        # the scores are kept in float32
        assert row["insertion"] == pytest.approx(insertion, rel=1e-6, abs=1e-9)
        assert row["deletion"] == pytest.approx(deletion, rel=1e-6, abs=1e-9)


def test_reference_sampling_is_the_shuffled_loaders_first_per_label():
    """The order of a DataLoader shuffled by torch.Generator().manual_seed(42), then the first images per label."""
    samples = [Sample(Path(f"{index:03d}.png"), index % 7) for index in range(60)]
    loader = torch.utils.data.DataLoader(range(60), batch_size=1, shuffle=True,
                                         generator=torch.Generator().manual_seed(42))
    order = [int(batch[0]) for batch in loader]
    expected, counts = [], {}
    for index in order:
        counts[samples[index].label] = counts.get(samples[index].label, 0) + 1
        if counts[samples[index].label] <= 2:
            expected.append(samples[index])
    assert subsample_shuffled(samples, per_class=2, seed=42) == expected
    assert subsample_shuffled(samples, seed=42) == [samples[index] for index in order]
    assert subsample_shuffled(samples, per_class=2, limit=5, seed=42) == expected[:5]
