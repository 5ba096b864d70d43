"""Train the shipped demo segmenter ("demo-digits-segmentation") on seeded 56x56 canvases of the MNIST subset's
training digits (seeded, CPU, one thread, a few minutes).

    python scripts/train_segmentation_demo.py

Canvases: two or three digits each, at random places that do not overlap (``digit_canvases`` in
zennit_resnet_lrp/application/demo.py); a pixel's class is its digit where the digit is brighter than 127, else
background (class 10). Training canvases are drawn from the 4,000 training digits, fresh ones every epoch; 500
held-out canvases from the 1,000 held-out digits measure the mean IoU over the 11 classes and pixel accuracy
(printed, and written to data/demo-metrics.json); the first 6 of them are written as PNG files with their label maps
(``<name>_labels.png``, one class index per pixel) to data/canvases/.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zennit_resnet_lrp.application.demo import (  # noqa: E402
    CANVASES, DATA, DEMO_MODELS, canvas_labels, digit_canvases, mnist_split,
)

NAME = "demo-digits-segmentation"
SEED = 0
HELD_OUT_SEED = 1  # the held-out canvases' own seed: none of the training draws
HELD_OUT_CANVASES = 500
SHIPPED_CANVASES = 6
MEAN, STD = 0.1307, 0.3081


def to_input(canvases: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(canvases).float() / 255.0 - MEAN) / STD


def train(train_set, held_out, epochs: int, per_epoch: int, batch: int = 32):
    """The trained model (eval mode) and its held-out metrics after each epoch."""
    torch.manual_seed(SEED)
    model = DEMO_MODELS[NAME].build(DEMO_MODELS[NAME].num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((per_epoch + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    begin = time.time()
    for epoch in range(epochs):
        canvases, maps = digit_canvases(*train_set, per_epoch, seed=100 + epoch)  # fresh canvases each epoch
        x, y = to_input(canvases), torch.from_numpy(maps)
        model.train()
        for index in range(0, per_epoch, batch):
            loss = torch.nn.functional.cross_entropy(model(x[index:index + batch]), y[index:index + batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        metrics = evaluate(model, held_out)
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, held-out mIoU {metrics['held_out_mean_iou']:.4f}, "
              f"pixel accuracy {metrics['held_out_pixel_accuracy']:.4f}, {time.time() - begin:.0f} s", flush=True)
    return model.eval(), metrics


@torch.no_grad()
def evaluate(model, held_out) -> dict:
    """Mean IoU over the 11 classes (from one confusion matrix over all held-out pixels) and pixel accuracy."""
    model.eval()
    canvases, maps = held_out
    predictions = torch.cat([model(to_input(canvases[begin:begin + 100])).argmax(1)
                             for begin in range(0, len(canvases), 100)])
    classes = DEMO_MODELS[NAME].num_classes
    truth = torch.from_numpy(maps).flatten()
    confusion = torch.bincount(truth * classes + predictions.flatten(), minlength=classes ** 2).view(classes, classes)
    hits = confusion.diag().double()
    iou = hits / (confusion.sum(0) + confusion.sum(1) - confusion.diag()).double()
    return {"held_out_mean_iou": float(iou.mean()), "held_out_pixel_accuracy": float(hits.sum() / confusion.sum()),
            "held_out_canvases": len(canvases), "per_class_iou": [round(float(value), 4) for value in iou]}


def write_canvases(canvases: np.ndarray, maps: np.ndarray) -> None:
    CANVASES.mkdir(parents=True, exist_ok=True)
    for old in CANVASES.glob("*.png"):
        old.unlink()
    for index in range(SHIPPED_CANVASES):
        digits = "".join(str(digit) for digit in sorted(set(maps[index].ravel().tolist()) - {10}))
        path = CANVASES / f"{index:02d}_digits{digits}.png"
        Image.fromarray(canvases[index, 0]).save(path)
        Image.fromarray(maps[index].astype(np.uint8)).save(canvas_labels(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--per-epoch", type=int, default=3000, help="training canvases drawn per epoch")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_digits, held_out_digits = mnist_split()
    held_out = digit_canvases(*held_out_digits, HELD_OUT_CANVASES, seed=HELD_OUT_SEED)
    write_canvases(*held_out)
    model, metrics = train(train_digits, held_out, args.epochs, args.per_epoch)
    torch.save(model.state_dict(), DATA / f"{NAME}.pt")
    path = DATA / "demo-metrics.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored[NAME] = metrics
    path.write_text(json.dumps(stored, indent=2) + "\n")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
