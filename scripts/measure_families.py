"""Measure conservation of the default method on the ResNet families the tests cover and on ViT, DeiT and Swin (the README's models table).

    python scripts/measure_families.py

Random weights and random batch-norm statistics (the tests' builders), float64, two 64x64 inputs (224x224 for the
transformers). Prints a markdown
table: residual blocks found, gates routed, the largest |input relevance - start| / start, the largest relevance
leak of any block (as a fraction of the start), and the input relevance of the paper's flows_skip (with what a class
token absorbs; its reference leaks only).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

import zennit_resnet_lrp as lrp  # noqa: E402
from helpers import build, make_inputs, make_model  # noqa: E402

MODELS = [
    ("torchvision", "resnet18"), ("torchvision", "resnet50"), ("torchvision", "resnext50_32x4d"),
    ("torchvision", "wide_resnet50_2"), ("torchvision", "regnet_y_400mf"), ("torchvision", "regnet_x_400mf"),
    ("timm", "resnet18"), ("timm", "resnet50"), ("timm", "resnet50d"), ("timm", "resnext50_32x4d"),
    ("timm", "seresnext26d_32x4d"), ("timm", "ecaresnet26t"), ("timm", "skresnet18"), ("timm", "res2net50_26w_4s"),
    ("timm", "resnetrs50"), ("timm", "resnetv2_50"), ("timm", "regnety_002"),
    ("hand-written", "cifar_resnet20"), ("hand-written", "preact_resnet"),
    ("torchvision", "vit_b_16"), ("torchvision", "swin_t"), ("timm", "vit_tiny_patch16_224"),
    ("timm", "deit_tiny_patch16_224"), ("timm", "swin_tiny_patch4_window7_224"),
]
SIZES = {"vit_b_16": 224, "swin_t": 224, "vit_tiny_patch16_224": 224, "deit_tiny_patch16_224": 224,
         "swin_tiny_patch4_window7_224": 224}  # transformers of a fixed input size; the rest 64x64


def model_for(source: str, name: str) -> torch.nn.Module:
    if source == "torchvision" and name.startswith(("resnet", "resnext", "wide")):
        return make_model(name)
    model = build(f"torchvision/{name}" if source == "torchvision" else name)
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():  # torchvision's ViT starts its head at zero: every logit 0, nothing to explain
        if isinstance(module, torch.nn.Linear) and not bool(module.weight.any()):
            module.weight.data.copy_(torch.randn(module.weight.shape, generator=generator) * 0.02)
    return model


def main() -> None:
    print("| source | model | blocks | gates | input error (max) | block leak (max) | flows_skip: input / start |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for source, name in MODELS:
        inputs = make_inputs(2, SIZES.get(name, 64))
        model = model_for(source, name)
        report = lrp.check_conservation(model, inputs)
        result = report.attribution
        # blocks that run per window (timm's Swin: a batch of windows) record per window, not per sample
        leak = max(float(((b.input - b.output) / result.start).abs().max()) for b in result.blocks
                   if b.input.shape[0] == result.start.shape[0])
        with lrp.FlowsSkipConservative().context(model):
            gates = sum(isinstance(module, lrp.GatedProduct) for module in model.modules())
        paper = lrp.attribute(model, inputs, "flows_skip", tolerance=None)
        kept = paper.total if paper.absorbed is None else paper.total + paper.absorbed  # a class token's share too
        ratio = kept / paper.start
        print(f"| {source} | {name} | {len(result.blocks)} | {gates} | {float(report.error.max()):.1e} | "
              f"{leak:.1e} | {float(ratio.min()):.3f}-{float(ratio.max()):.3f} |", flush=True)


if __name__ == "__main__":
    main()
