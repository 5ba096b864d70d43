"""Region deletion on the shipped demo segmenter ("demo-digits-segmentation"): for held-out canvases, one digit's
pixels (its label map's) are the region; each method's map orders the pixels, the most relevant are deleted first
(set to the background value) and the region's mean logit of the digit is followed (docs/evaluation.md).

    python scripts/measure_segmentation.py                 # 100 held-out canvases; prints a markdown table
    python scripts/measure_segmentation.py --canvases 500

The canvases are the training script's held-out ones (the same seed: the first 6 are the shipped ones), drawn from
the 1,000 held-out digits; the digit explained per canvas is a seeded choice among those on it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import zennit_resnet_lrp as lrp  # noqa: E402
from zennit_resnet_lrp.application.demo import BACKGROUND, digit_canvases, mnist_split  # noqa: E402
from zennit_resnet_lrp.application.models import load_model  # noqa: E402
from zennit_resnet_lrp.evaluation.regions import region_deletion  # noqa: E402

NAME = "demo-digits-segmentation"
HELD_OUT_SEED = 1  # scripts/train_segmentation_demo.py's
MEAN, STD = 0.1307, 0.3081
BACKGROUND_VALUE = -MEAN / STD  # a black pixel, normalised


def region_score(model, region_mask: torch.Tensor, label: int):
    """The region's summed logit of ``label`` per sample, as a function of the inputs (for gradients and captum)."""
    return lambda x: (model(x)[:, label] * region_mask).flatten(1).sum(1)


def gradient(model, x, mask, label) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    score = region_score(model, mask, label)(x).sum()
    return torch.autograd.grad(score, x)[0]


def integrated_gradients(model, x, mask, label) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    method = IntegratedGradients(region_score(model, mask, label))
    return method.attribute(x, baselines=BACKGROUND_VALUE, n_steps=32, internal_batch_size=64)


def method_maps(model, x, mask, label, seed) -> dict:
    """Every method's map (1, 1, H, W) for one canvas and its region."""
    explained = lrp.attribute(model, x, target=lrp.Region(label, mask), start_with="logit")
    grad = gradient(model, x, mask, label)
    return {
        "flows_skip_conservative (default LRP)": explained.relevance,
        "integrated_gradients": integrated_gradients(model, x, mask, label),
        "gradient_x_input": grad * x,
        "gradient (absolute)": grad.abs(),
        "random": torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)),
    }


def conservation_errors(model, inputs, masks, labels) -> tuple[float, float]:
    """The largest conservation error of the default LRP over the canvases, in float32 and in float64."""
    worst = []
    for dtype in (torch.float32, torch.float64):
        model = model.to(dtype)
        errors = [float(lrp.attribute(model, inputs[i:i + 1].to(dtype), target=lrp.Region(labels[i], masks[i]),
                                      start_with="logit").conservation_error.max()) for i in range(len(labels))]
        worst.append(max(errors))
    model.float()
    return worst[0], worst[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--canvases", type=int, default=100)
    parser.add_argument("--steps", type=int, default=98, help="deletion steps (56x56 pixels: 32, 1%%, a step)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(NAME).model
    _, held_out = mnist_split()
    canvases, maps = digit_canvases(*held_out, args.canvases, seed=HELD_OUT_SEED)
    inputs = (torch.from_numpy(canvases).float() / 255 - MEAN) / STD
    rng = np.random.default_rng(0)
    labels = [int(rng.choice(sorted(set(label_map.ravel().tolist()) - {BACKGROUND}))) for label_map in maps]
    masks = [torch.from_numpy(label_map == label) for label_map, label in zip(maps, labels)]
    areas: dict[str, list[float]] = {}
    for index, (label, mask) in enumerate(zip(labels, masks)):
        x = inputs[index:index + 1]
        for method, relevance in method_maps(model, x, mask, label, index).items():
            curve = region_deletion(model, x, lrp.Region(label, mask), relevance.detach(),
                                    baseline=BACKGROUND_VALUE, steps=args.steps)
            areas.setdefault(method, []).append(float(curve.auc[0]))
    print("| method | canvases | region deletion AUC (mean) | std | median |\n| --- | --- | --- | --- | --- |")
    for method, values in sorted(areas.items(), key=lambda item: np.nanmean(item[1])):
        print(f"| {method} | {np.isfinite(values).sum()} | {np.nanmean(values):.4f} | {np.nanstd(values):.4f} | "
              f"{np.nanmedian(values):.4f} |")
    single, double = conservation_errors(model, inputs, masks, labels)
    print(f"\nLRP conservation error (largest over {len(labels)} canvases): {single:.2e} (float32), "
          f"{double:.2e} (float64)")


if __name__ == "__main__":
    main()
