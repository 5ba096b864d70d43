"""Attribution speed and peak memory against the plain gradient, measured in the same run.

    python benchmarks/attribution.py                      # resnet18 and resnet50, batches 1, 8, 32, CPU
    python benchmarks/attribution.py --device cuda --autocast bf16

Time: for each (model, batch) one process runs all methods round-robin, --repeats rounds after a warm-up round,
and takes each method's median (CUDA events on a GPU), in ms per image; interleaving keeps the ratios fair on a
machine whose speed drifts. Memory: every (model, batch, method) runs once more in a fresh process, so its peak is
its own: on the CPU the growth of the peak resident set over the state before the first attribution, on a GPU
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

METHODS = ["gradient", "zennit_epsilon_plus_flat", "flows_skip_conservative", "flows_skip", "flows_skip_simple",
           "latest", "simple"]


def make_call(model_name: str, batch: int, method: str, device: str, size: int):
    import torch
    import torchvision
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    import zennit_resnet_lrp as lrp

    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)().eval().to(device)
    inputs = torch.randn(batch, 3, size, size, device=device)
    targets = torch.zeros(batch, dtype=torch.long, device=device)

    def gradient():
        x = inputs.clone().requires_grad_()
        torch.autograd.grad(model(x).gather(1, targets[:, None]).sum(), x)

    def zennit():
        with Gradient(model, EpsilonPlusFlat(canonizers=[ResNetCanonizer()])) as attributor:
            attributor(inputs, torch.eye(1000, device=device)[targets])

    def ours(name):
        return lambda: lrp.attribute(model, inputs, name, target=targets, tolerance=None)

    if method == "gradient":
        return gradient
    if method == "zennit_epsilon_plus_flat":
        return zennit
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


def time_all(model_name: str, batch: int, methods: list[str], device: str, repeats: int, autocast, size) -> dict:
    calls = {method: make_call(model_name, batch, method, device, size) for method in methods}
    times = {method: [] for method in methods}
    for round_index in range(repeats + 1):
        for method, call in calls.items():
            elapsed = timed(call, device, autocast)
            if round_index:  # the first round warms up
                times[method].append(elapsed)
    return {method: 1000 * statistics.median(values) / batch for method, values in times.items()}


def peak_memory(model_name: str, batch: int, method: str, device: str, autocast, size) -> float:
    import torch

    call = make_call(model_name, batch, method, device, size)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        timed(call, device, autocast)
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    timed(call, device, autocast)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", choices=["bf16", "fp16"], default=None, help="GPU only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = parser.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        kind, model, batch, methods = args.one.split(":")
        if kind == "time":
            result = time_all(model, int(batch), methods.split(","), args.device, args.repeats, args.autocast,
                              args.size)
        else:
            result = peak_memory(model, int(batch), methods, args.device, args.autocast, args.size)
        print(json.dumps(result))
        return

    def child(spec: str):
        command = [sys.executable, __file__, "--one", spec, "--device", args.device, "--repeats", str(args.repeats),
                   "--size", str(args.size), "--threads", str(args.threads)]
        if args.autocast:
            command += ["--autocast", args.autocast]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    rows = []
    methods = args.methods.split(",")
    for model in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            times = child(f"time:{model}:{batch}:{','.join(methods)}")
            for method in methods:
                rows.append({"model": model, "batch": batch, "method": method, "ms_per_image": times[method],
                             "peak_mb": child(f"memory:{model}:{batch}:{method}")})
                print(f"  {model} batch {batch} {method}: {times[method]:.0f} ms/image, {rows[-1]['peak_mb']:.0f} MB",
                      file=sys.stderr, flush=True)
    print(f"| model | batch | method | ms / image | x gradient | peak MB | x gradient |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"] and r["batch"] == row["batch"]
                    and r["method"] == "gradient")
        print(f"| {row['model']} | {row['batch']} | {row['method']} | {row['ms_per_image']:.0f} | "
              f"{row['ms_per_image'] / base['ms_per_image']:.2f} | {row['peak_mb']:.0f} | "
              f"{row['peak_mb'] / max(base['peak_mb'], 1e-9):.2f} |")


if __name__ == "__main__":
    main()
