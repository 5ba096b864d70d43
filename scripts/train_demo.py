"""Train the shipped demo models on the MNIST subset in zennit_resnet_lrp/application/data/mnist_5k.csv.gz (seeded, CPU, about a
minute each).

    python scripts/train_demo.py            # all models; writes zennit_resnet_lrp/application/data/*.pt and the digits
    python scripts/train_demo.py --models demo-mnist-convnext

Split: a seeded permutation, 4,000 digits to train and 1,000 held out; 20 held-out digits (2 per class) are
written as PNG files for the demo. Accuracy on the held-out digits is printed and written to data/demo-metrics.json.
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
    DATA, DIGITS, demo_basic, demo_bottleneck, demo_convnext, demo_vit, mnist_split,
)

SEED = 0
MEAN, STD = 0.1307, 0.3081


def to_input(pixels: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(pixels).float() / 255.0 - MEAN) / STD


def shift(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to 2 pixels (pad with the background value, crop back)."""
    padded = torch.nn.functional.pad(batch, (2, 2, 2, 2), value=-MEAN / STD)
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()
    return padded[:, :, dy:dy + 28, dx:dx + 28]


def train(build, name: str, train_set, held_out, epochs: int = 20) -> float:
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    model = build()
    x, y = to_input(train_set[0]), torch.from_numpy(train_set[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(y) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    begin = time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=generator)
        for index in range(0, len(y), 64):
            batch = order[index:index + 64]
            loss = torch.nn.functional.cross_entropy(model(shift(x[batch], generator)), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        accuracy = evaluate(model, held_out)
        print(f"{name} epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, held-out accuracy {accuracy:.4f}, "
              f"{time.time() - begin:.0f} s", flush=True)
    torch.save(model.eval().state_dict(), DATA / f"{name}.pt")
    return accuracy


@torch.no_grad()
def evaluate(model, held_out) -> float:
    model.eval()
    predictions = model(to_input(held_out[0])).argmax(1)
    return float((predictions == torch.from_numpy(held_out[1])).float().mean())


def write_digits(held_out) -> None:
    DIGITS.mkdir(parents=True, exist_ok=True)
    for old in DIGITS.glob("*.png"):
        old.unlink()
    pixels, labels = held_out
    for digit in range(10):
        for index in np.flatnonzero(labels == digit)[:2]:
            Image.fromarray(pixels[index, 0]).save(DIGITS / f"{index:04d}_label{digit}.png")


MODELS = {"demo-mnist": demo_basic, "demo-mnist-bottleneck": demo_bottleneck, "demo-mnist-convnext": demo_convnext,
          "demo-mnist-vit": demo_vit}
EPOCHS = {"demo-mnist-vit": 60}  # a transformer learns slowly from 4,000 digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of " + ", ".join(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    train_set, held_out = mnist_split()
    write_digits(held_out)
    path = DATA / "demo-metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    for name in args.models.split(","):
        metrics[name] = {"held_out_accuracy": train(MODELS[name], name, train_set, held_out, EPOCHS.get(name, 20))}
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
