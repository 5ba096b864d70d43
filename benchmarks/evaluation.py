"""Evaluation throughput (images per second) against the bound of its forward passes alone.

    python benchmarks/evaluation.py                          # the demo model on its 1,000 held-out digits
    python benchmarks/evaluation.py --model resnet18 --size 224 --images 16 --step 500

The bound pushes the same number of curve images (curve points x 2 curves x images) through the model in batches of
the same size, with no attribution, masks or bookkeeping; the ratio says how close the evaluation gets to it.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zennit_resnet_lrp.application.images import Preprocessing  # noqa: E402
from zennit_resnet_lrp.evaluation.datasets import Sample, image_folder  # noqa: E402
from zennit_resnet_lrp.application.demo import export_held_out  # noqa: E402
from zennit_resnet_lrp.evaluation.run import EvaluationSettings, evaluate  # noqa: E402
from zennit_resnet_lrp.evaluation.metrics import CurveSpec  # noqa: E402
from zennit_resnet_lrp.application.models import LoadedModel, load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo-mnist")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224, help="input size for torchvision models (random photos)")
    parser.add_argument("--step", type=int, default=None)
    parser.add_argument("--points", type=int, default=28)
    parser.add_argument("--method", default="flows_skip")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        if args.model.startswith("demo"):
            samples, _ = image_folder(export_held_out(Path(folder) / "digits", args.images))
            loaded = load_model(args.model)
        else:
            from PIL import Image
            import numpy as np

            generator = np.random.default_rng(0)
            samples = []
            for index in range(args.images):
                path = Path(folder) / f"{index}.png"
                Image.fromarray(generator.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)).save(path)
                samples.append(Sample(path, index % 10))
            model = load_model(args.model, num_classes=10).model
            loaded = LoadedModel(model, args.model, Preprocessing(resize=args.size, crop=args.size))
        spec = CurveSpec(step=args.step) if args.step else CurveSpec(points=args.points)
        settings = EvaluationSettings([args.method], spec, batch_size=args.batch_size, images_per_step=64)
        began = time.perf_counter()
        evaluate([("bench", loaded)], samples, settings, Path(folder) / "out")
        elapsed = time.perf_counter() - began

    prep = loaded.preprocessing
    side = prep.crop or args.size
    count = side * side
    points = math.ceil(count / spec.step_for(count))
    total = points * 2 * len(samples)
    batch = torch.randn(args.batch_size, prep.channels, side, side)
    began = time.perf_counter()
    with torch.no_grad():
        for begin in range(0, total, args.batch_size):
            loaded.model(batch[: min(args.batch_size, total - begin)])
    bound = time.perf_counter() - began
    print(f"{args.model}, {len(samples)} images, {points} points x 2 curves, method {args.method}, "
          f"batch {args.batch_size}, {args.threads} threads")
    print(f"evaluation: {len(samples) / elapsed:.1f} images/s ({elapsed:.1f} s)")
    print(f"forward passes alone: {len(samples) / bound:.1f} images/s ({bound:.1f} s for {total} curve images)")
    print(f"ratio: {bound / elapsed:.2f} of the bound")


if __name__ == "__main__":
    main()
