"""evaluate()'s Insertion and Deletion against an independent implementation of the paper's protocol (docs/method.md,
metrics), fed inputs preprocessed by torchvision's own transforms."""
import math

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms

import zennit_resnet_lrp as lrp
from helpers import randomize_batchnorm
from zennit_resnet_lrp.application.images import Preprocessing
from zennit_resnet_lrp.application.models import LoadedModel
from zennit_resnet_lrp.evaluation.datasets import image_folder
from zennit_resnet_lrp.evaluation.metrics import CurveSpec
from zennit_resnet_lrp.evaluation.run import EvaluationSettings, evaluate
from zennit_resnet_lrp.evaluation.store import read_rows

RESIZE, CROP, STEP = 72, 64, 256


def paper_scores(model, pixels, heatmap, label, normalize):
    """One image, written out step by step: sort the map, threshold at positions min(step (i + 1), n - 1), keep the
    pixels >= t (insertion) or black them out (deletion), the label's softmax probability, trapezoid areas."""
    values = heatmap.flatten()
    ordered = values.sort(descending=True).values
    count = values.numel()
    curves = {"insertion": [], "deletion": []}
    for index in range(math.ceil(count / STEP)):
        threshold = ordered[min(STEP * (index + 1), count - 1)]
        keep = (heatmap >= threshold).to(pixels.dtype)
        for name, mask in (("insertion", keep), ("deletion", 1 - keep)):
            with torch.no_grad():
                probabilities = model(normalize(pixels * mask)[None]).softmax(1)
            curves[name].append(float(probabilities[0, label]))
    areas = {}
    for name, scores in curves.items():
        areas[name] = (sum(scores) - scores[0] / 2 - scores[-1] / 2) / (len(scores) - 1)
    return areas


def test_evaluate_equals_the_papers_protocol(tmp_path):
    rng = np.random.default_rng(0)
    for label, size in enumerate([(97, 80), (80, 120), (150, 90)]):
        folder = tmp_path / "data" / f"class{label}"
        folder.mkdir(parents=True)
        ramp = np.linspace(0, 255, size[0])[None, :, None] * np.linspace(0.3, 1, size[1])[:, None, None]
        noisy = np.clip(ramp + rng.normal(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / "photo.png")
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=3)).double().eval()
    loaded = LoadedModel(model, "resnet18", Preprocessing(resize=RESIZE, crop=CROP))
    samples, _ = image_folder(tmp_path / "data")
    settings = EvaluationSettings(["flows_skip"], CurveSpec(step=STEP), batch_size=7, images_per_step=2)
    evaluate([("resnet18", loaded)], samples, settings, tmp_path / "out")
    rows = {row["image"]: row for row in read_rows(tmp_path / "out")}

    to_pixels = transforms.Compose([transforms.Resize(RESIZE), transforms.CenterCrop(CROP), transforms.ToTensor()])
    normalize = transforms.Normalize(lrp.IMAGENET_MEAN, lrp.IMAGENET_STD)
    for sample in samples:
        with Image.open(sample.path) as image:
            pixels = to_pixels(image.convert("RGB")).double()
        inputs = normalize(pixels)[None]
        with torch.no_grad():
            predicted = int(model(inputs).argmax(1))
        heatmap = lrp.attribute(model, inputs, "flows_skip", target=predicted, tolerance=None).heatmap[0]
        expected = paper_scores(model, pixels, heatmap, sample.label, normalize)
        row = rows[str(sample.path)]
        assert row["target"] == predicted
        for metric in ("insertion", "deletion"):
            assert abs(row[metric] - expected[metric]) <= 1e-5 * abs(expected[metric]), (metric, row, expected)
