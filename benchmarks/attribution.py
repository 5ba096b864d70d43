"""Attribution speed and peak memory against the plain gradient, measured in the same run.

    python benchmarks/attribution.py                      # resnet18 and resnet50, batches 1, 8, 32, CPU
    python benchmarks/attribution.py --device cuda --autocast bf16
    python benchmarks/attribution.py --models resnet50,timm/resnet50 --batches 1,8   # timm's ResNet, traced
    python benchmarks/attribution.py --models timm/vit_tiny_patch16_224,vit_b_16 --batches 1,8 \
        --methods gradient,lxt_attnlrp,attnlrp,lxt_cp_lrp,cp_lrp,flows_skip_conservative   # against LXT 2.1
    python benchmarks/attribution.py --models fcn_resnet50,r3d_18 --batches 1 --methods gradient,flows_skip_conservative

Segmentation models (torchvision's fcn_resnet50, deeplabv3_resnet50, lraspp_mobilenet_v3_large; random weights,
21 classes) explain a Region: the pixels of the class predicted most often in the batch, with relevance 1 per pixel;
their gradient is that of the region's summed logits, the same start. Peers that explain classes only (zennit's
attributor, captum, LXT) are rows saying "skipped: ...". Video models (r3d_18, mc3_18, r2plus1d_18) take clips
(batch, 3, --frames, --size, --size), 8 frames of 112x112 by default, and explain class 0 as classifiers do.

Time: for each (model, batch) one process runs all methods round-robin, --repeats rounds after a warm-up round
(CUDA events on a GPU). It reports each method's median in ms per image, and its ratio to the plain gradient as the
median over rounds of (method time / gradient time in the same round), and the lowest and highest of those
per-round ratios (how far one round can be off on this machine): interleaving and per-round ratios keep the
comparison fair on a machine whose speed drifts. ``lxt_attnlrp`` and ``lxt_cp_lrp`` are LXT 2.1's own maps
(``pip install --no-deps lxt==2.1``; benchmarks/lxt_reference.py): ``attnlrp`` and ``cp_lrp`` get their ratio to
them, by round, in the last column. Memory: every (model, batch, method) runs once more in a fresh process, so its
peak is its own: on the CPU the growth of the peak resident set over the state before the first attribution, on a GPU
torch's peak allocation.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METHODS = ["gradient", "zennit_epsilon_plus_flat", "captum_lrp", "flows_skip_conservative", "flows_skip",
           "flows_skip_simple", "latest", "simple", "gradient@channels_last", "flows_skip_conservative@channels_last"]
CHANNELS_LAST = "@channels_last"  # suffix: the same method on channels-last inputs
LXT = "lxt_"  # prefix: LXT's own map of the variant named after it (benchmarks/lxt_reference.py)
SEGMENTATION = ("fcn_resnet50", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large")
VIDEO = ("r3d_18", "mc3_18", "r2plus1d_18")
FRAMES = 8  # a video clip's frames by default
SIZE = {"image": 224, "video": 112}  # input height and width by default


class Unsupported(Exception):
    """A method that cannot explain this model's target (a peer given a segmentation's region): a "skipped" row."""


def kind_of(model_name: str) -> str:
    """``segmentation``, ``video`` or ``image`` (a classifier of images)."""
    return "segmentation" if model_name in SEGMENTATION else "video" if model_name in VIDEO else "image"


def build(model_name: str, device: str):
    """The model, random weights, in eval mode on ``device``."""
    import torch
    import torchvision

    if model_name.startswith("timm/"):
        import timm

        return timm.create_model(model_name.split("/", 1)[1], pretrained=False).eval().to(device)
    if model_name in SEGMENTATION:
        factory = getattr(torchvision.models.segmentation, model_name)
        return factory(weights=None, weights_backbone=None, num_classes=21).eval().to(device)
    if model_name in VIDEO:
        return getattr(torchvision.models.video, model_name)(weights=None).eval().to(device)
    return getattr(torchvision.models, model_name)().eval().to(device)


def classes_of(model) -> int:
    """A classifier's number of classes: its last linear layer's outputs (torchvision's video models have 400)."""
    import torch

    return next((module.out_features for module in reversed(list(model.modules()))
                 if isinstance(module, torch.nn.Linear)), 1000)


def region_of(model, inputs):
    """The segmentation's target: a Region of the pixels of the class the model predicts most often in the batch."""
    import torch

    import zennit_resnet_lrp as lrp

    # one no-grad forward, before the attribution: the memory run's baseline includes its (small) peak
    with torch.no_grad():
        predicted = model(inputs)["out"].argmax(1)
    label = int(torch.bincount(predicted.flatten()).argmax())
    return lrp.Region(label, predicted == label)


def make_call(model_name: str, batch: int, spec: str, device: str, size: int | None, frames: int = FRAMES):
    import torch
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    import zennit_resnet_lrp as lrp

    method = spec.removesuffix(CHANNELS_LAST)
    kind = kind_of(model_name)
    if kind == "segmentation" and (method in ("zennit_epsilon_plus_flat", "captum_lrp") or method.startswith(LXT)):
        raise Unsupported(f"{method} explains classes of (N, K) logits, not a region of a segmentation")
    size = size or SIZE["video" if kind == "video" else "image"]
    torch.manual_seed(0)
    model = build(model_name, device)
    shape = (batch, 3, frames, size, size) if kind == "video" else (batch, 3, size, size)
    inputs = torch.randn(*shape, device=device)
    if spec.endswith(CHANNELS_LAST):
        inputs = inputs.contiguous(memory_format=torch.channels_last_3d if kind == "video" else torch.channels_last)
    targets = torch.zeros(batch, dtype=torch.long, device=device)
    region = region_of(model, inputs) if kind == "segmentation" else None

    def gradient():
        x = inputs.clone().requires_grad_()
        if region is None:
            torch.autograd.grad(model(x).gather(1, targets[:, None]).sum(), x)
        else:  # the region's summed logits: 1 per region pixel, the start "one" puts in
            torch.autograd.grad((model(x)["out"][:, region.label] * region.mask).sum(), x)

    def zennit():
        with Gradient(model, EpsilonPlusFlat(canonizers=[ResNetCanonizer()])) as attributor:
            attributor(inputs, torch.eye(classes_of(model), device=device)[targets])

    def ours(name):
        # relevance 1 at the target, as the gradient and zennit get: with random weights the target's softmax is
        # ~1e-40 on resnet50, a subnormal float32 that underflows to 0 and slows CPU arithmetic (~15% here). The
        # composite is made once, as a loop over batches would (its canonizer keeps the traces of the model's modules)
        composite = lrp.make_composite(name)
        return lambda: lrp.attribute(model, inputs, composite, target=targets if region is None else region,
                                     start_with="one", tolerance=None)

    def captum():
        # captum's LRP with its default rules (epsilon; ReLU, pooling and batch norm passed through): it supports
        # convolutional networks of modules only, and raises on the others (a layer norm, a functional add)
        from captum.attr import LRP

        explainer = LRP(model)
        return lambda: explainer.attribute(inputs, target=targets)

    def lxt(variant):
        from benchmarks.lxt_reference import load_lxt, lxt_relevance

        reference = load_lxt()
        return lambda: lxt_relevance(reference, variant, model, inputs, targets)

    if method == "gradient":
        return gradient
    if method == "zennit_epsilon_plus_flat":
        return zennit
    if method == "captum_lrp":
        return captum()
    if method.startswith(LXT):
        return lxt(method.removeprefix(LXT))
    return ours(method)


def timed(call, device: str, autocast: str | None) -> float:
    import torch

    cuda = device.startswith("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast)
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    else:
        began = time.perf_counter()
    if cuda and dtype:
        with torch.autocast("cuda", dtype=dtype):
            call()
    else:
        call()
    if cuda:
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000
    return time.perf_counter() - began


def time_all(model_name: str, batch: int, methods: list[str], device: str, repeats: int, autocast, size,
             frames: int = FRAMES) -> dict:
    """``{method: (median ms per image, median of the per-round ratios to the gradient, median of the per-round
    ratios to LXT's map of the same variant or None, lowest and highest per-round ratio to the gradient)}``, or
    ``{method: "raises: <why>"}`` for a method that does not run on this model (a peer that does not support its
    layers), ``{method: "skipped: <why>"}`` for one that cannot explain its target (a peer that explains classes
    only, given a segmentation's region)."""
    calls, failed = {}, {}
    for method in methods:  # built and run once: the warm-up, and whether the method runs on this model at all
        try:
            calls[method] = make_call(model_name, batch, method, device, size, frames)
            timed(calls[method], device, autocast)
        except Unsupported as error:
            failed[method] = f"skipped: {error}"
        except Exception as error:  # noqa: BLE001 - a peer's failure is a row of the table, not the end of the run
            calls.pop(method, None)
            failed[method] = f"raises: {type(error).__name__}: {str(error).splitlines()[0][:80] if str(error) else ''}"
    if "gradient" in failed:
        raise RuntimeError(f"the gradient baseline failed on {model_name}: {failed['gradient']}")
    times = {method: [] for method in calls}
    for _ in range(repeats):
        for method, call in calls.items():
            times[method].append(timed(call, device, autocast))

    def ratios(values, base):
        return [v / b for v, b in zip(values, base)] if base else [float("nan")]

    def ratio(values, base):
        return statistics.median(ratios(values, base))
    gradient = times.get("gradient")
    return {**{method: (1000 * statistics.median(values) / batch, ratio(values, gradient),
                        ratio(values, times[LXT + method]) if LXT + method in times else None,
                        min(ratios(values, gradient)), max(ratios(values, gradient)))
               for method, values in times.items()}, **failed}


def peak_memory(model_name: str, batch: int, method: str, device: str, autocast, size,
                frames: int = FRAMES) -> float:
    import torch

    call = make_call(model_name, batch, method, device, size, frames)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        timed(call, device, autocast)
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    timed(call, device, autocast)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / 2 ** 20


def input_sizes(args) -> str:
    """The inputs' sizes, as ``224x224`` (and ``video 8x112x112`` where there are video models)."""
    kinds = {"video" if kind_of(model) == "video" else "image" for model in args.models.split(",")}
    sizes = {kind: args.size or SIZE[kind] for kind in kinds}
    return ", ".join(([f"{sizes['image']}x{sizes['image']}"] if "image" in sizes else [])
                     + ([f"video {args.frames}x{sizes['video']}x{sizes['video']}"] if "video" in sizes else []))


def machine(args) -> str:
    """One line naming what the numbers come from."""
    import platform
    from importlib.metadata import version

    import torch

    if args.device.startswith("cuda"):
        where = torch.cuda.get_device_name(torch.device(args.device))
    else:
        where = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
            else platform.processor()
        where += f", {args.threads} threads"
    return (f"{where}; torch {torch.__version__}, zennit {version('zennit')}; {input_sizes(args)}, "
            f"{args.repeats} rounds{', autocast ' + args.autocast if args.autocast else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", choices=["bf16", "fp16"], default=None, help="GPU only")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=None,
                        help=f"input height and width (default {SIZE['image']}, video {SIZE['video']})")
    parser.add_argument("--frames", type=int, default=FRAMES, help="a video clip's frames")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = parser.parse_args()
    if (args.size is not None and args.size < 1) or args.frames < 1:
        parser.error("--size and --frames must be at least 1")
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        kind, model, batch, methods = args.one.split(":")
        if kind == "time":
            result = time_all(model, int(batch), methods.split(","), args.device, args.repeats, args.autocast,
                              args.size, args.frames)
        else:
            result = peak_memory(model, int(batch), methods, args.device, args.autocast, args.size, args.frames)
        print(json.dumps(result))
        return

    def child(spec: str):
        command = [sys.executable, __file__, "--one", spec, "--device", args.device, "--repeats", str(args.repeats),
                   "--frames", str(args.frames), "--threads", str(args.threads)]
        if args.size:
            command += ["--size", str(args.size)]
        if args.autocast:
            command += ["--autocast", args.autocast]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    rows = []
    methods = args.methods.split(",")
    if "gradient" not in methods:
        parser.error("--methods must include gradient, the baseline of the ratios")
    print(machine(args), flush=True)
    for model in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            times = child(f"time:{model}:{batch}:{','.join(methods)}")
            for method in methods:
                if isinstance(times[method], str):  # does not run on this model
                    rows.append({"model": model, "batch": batch, "method": method, "failed": times[method]})
                    print(f"  {model} batch {batch} {method}: {times[method]}", file=sys.stderr, flush=True)
                    continue
                milliseconds, ratio, to_lxt, lowest, highest = times[method]
                rows.append({"model": model, "batch": batch, "method": method, "ms_per_image": milliseconds,
                             "time_ratio": ratio, "lxt_ratio": to_lxt, "ratio_range": (lowest, highest),
                             "peak_mb": child(f"memory:{model}:{batch}:{method}")})
                print(f"  {model} batch {batch} {method}: {milliseconds:.0f} ms/image ({ratio:.2f}x), "
                      f"{rows[-1]['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
    lxt_column = any(row.get("lxt_ratio") is not None for row in rows)  # time of ours / LXT's, same variant
    print("| model | batch | method | ms / image | x gradient | rounds' range | peak MB | x gradient |"
          + (" x LXT |" if lxt_column else ""))
    print("| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if lxt_column else ""))
    for row in rows:
        if "failed" in row:
            print(f"| {row['model']} | {row['batch']} | {row['method']} | {row['failed']} | | | | |"
                  + (" |" if lxt_column else ""))
            continue
        base = next(r for r in rows if r["model"] == row["model"] and r["batch"] == row["batch"]
                    and r["method"] == "gradient")
        lowest, highest = row["ratio_range"]
        print(f"| {row['model']} | {row['batch']} | {row['method']} | {row['ms_per_image']:.0f} | "
              f"{row['time_ratio']:.2f} | {lowest:.2f}-{highest:.2f} | {row['peak_mb']:.0f} | "
              f"{row['peak_mb'] / max(base['peak_mb'], 1e-9):.2f} |"
              + (f" {row['lxt_ratio']:.2f} |" if row["lxt_ratio"] is not None else " |" if lxt_column else ""))


if __name__ == "__main__":
    main()
