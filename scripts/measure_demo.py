"""Measure the shipped demo models on their 1,000 held-out digits: conservation of the default method at the input
and at every block, and Insertion / Deletion / ID of our methods against the baselines, under our protocol and the
reference implementation's (docs/evaluation.md figures).

    python scripts/measure_demo.py [--limit N] [--models demo-mnist,...] [--protocols ours,reference]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zennit_resnet_lrp import attribute  # noqa: E402
from zennit_resnet_lrp.application.images import open_image  # noqa: E402
from zennit_resnet_lrp.evaluation.datasets import image_folder  # noqa: E402
from zennit_resnet_lrp.application.demo import export_held_out  # noqa: E402
from zennit_resnet_lrp.evaluation.run import EvaluationSettings, evaluate  # noqa: E402
from zennit_resnet_lrp.evaluation.store import read_rows  # noqa: E402
from zennit_resnet_lrp.evaluation.summary import format_markdown, summarize  # noqa: E402
from zennit_resnet_lrp.evaluation.metrics import CurveSpec  # noqa: E402
from zennit_resnet_lrp.application.demo import DEMO_MODELS  # noqa: E402
from zennit_resnet_lrp.application.models import load_model  # noqa: E402
from zennit_resnet_lrp.application.threads import choose_threads  # noqa: E402
from zennit_resnet_lrp.evaluation.protocol import PROTOCOLS  # noqa: E402

METHODS = ["flows_skip_conservative", "flows_skip", "zennit_epsilon_plus_flat", "lrp_epsilon_plain", "gradient",
           "integrated_gradients", "captum_lrp", "captum_integrated_gradients", "captum_guided_backprop",
           "captum_gradient_x_input", "gradcam", "random"]
# captum's LRP has no rule for layer norms and attention; a transformer has no ReLU for Guided Backprop to guide
METHODS_OF = {
    "demo-mnist-convnext": [m for m in METHODS if m != "captum_lrp"],
    "demo-mnist-vit": ["flows_skip_conservative", "attnlrp", "flows_skip", "gradient", "integrated_gradients",
                       "captum_integrated_gradients", "captum_gradient_x_input", "attention_rollout", "random"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--models", default=",".join(name for name, demo in DEMO_MODELS.items()
                                                     if demo.task == "classification"))
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    args = parser.parse_args()
    torch.set_num_threads(choose_threads())
    with tempfile.TemporaryDirectory() as folder:
        root = export_held_out(Path(folder) / "digits", args.limit)
        samples, _ = image_folder(root)
        for name in args.models.split(","):
            loaded = load_model(name)
            inputs = torch.stack([loaded.preprocessing(open_image(s.path)) for s in samples])
            for dtype in (torch.float32, torch.float64):
                model = load_model(name).model.to(dtype)
                result = attribute(model, inputs.to(dtype), record_blocks=True, batch_size=250)
                block_error = max(float(((b.input - b.output).abs() / result.start).max()) for b in result.blocks)
                absorbed = "" if result.absorbed is None else (
                    f", absorbed by the class token {float((result.absorbed / result.start).mean()):.3f} (mean), "
                    f"{float((result.absorbed / result.start).max()):.3f} (max) of the start")
                print(f"{name} {str(dtype)[6:]}: {len(samples)} digits, input error max "
                      f"{float(result.conservation_error.max()):.2e}, block leak max {block_error:.2e}{absorbed}",
                      flush=True)
            methods = METHODS_OF.get(name, METHODS)
            for protocol in args.protocols.split(","):
                output = Path(folder) / f"{name}-{protocol}"
                settings = EvaluationSettings(methods, CurveSpec(points=28, patch_grid=PROTOCOLS[protocol].patch_grid),
                                              PROTOCOLS[protocol], batch_size=256, images_per_step=64,
                                              heat_quantization=8 if PROTOCOLS[protocol].heat_quantization else None)
                evaluate([(name, loaded)], samples, settings, output)
                print(f"\n{name}, protocol {protocol}: Insertion / Deletion / ID on {len(samples)} held-out digits "
                      "(28 points per curve)\n")
                print(format_markdown(summarize(read_rows(output), methods)), flush=True)


if __name__ == "__main__":
    main()
