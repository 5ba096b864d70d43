"""Where an attribution's time goes: the relevance pass by rule and module type, beside the forward and the gradient.

    python benchmarks/profile_rules.py --model convnext_tiny
    python benchmarks/profile_rules.py --model timm/resnet50 --batch 8 --threads 2

One process: the plain gradient of the target logit and one ``attribute`` call (the default composite, made once)
are timed alternately, ``--repeats`` rounds after a warm-up, minimum of each; then one more ``attribute`` call runs
with every rule's relevance timed (``RelevanceRule.propagate``), and the forward alone without a graph. The table
lists each (rule, module type): calls, milliseconds and share of the relevance pass; the rest of an attribution is
its forward and the bookkeeping between rules.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build(name: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    if name.startswith("timm/"):
        import timm

        return timm.create_model(name.split("/", 1)[1], pretrained=False).eval()
    return getattr(torchvision.models, name)().eval()


def profile(name: str, batch: int, size: int, repeats: int, method: str) -> str:
    import torch

    import zennit_resnet_lrp as lrp
    from zennit_resnet_lrp.rules.core import RelevanceRule

    model = build(name)
    inputs = torch.randn(batch, 3, size, size)
    targets = torch.zeros(batch, dtype=torch.long)
    composite = lrp.make_composite(method)

    def gradient():
        x = inputs.clone().requires_grad_()
        torch.autograd.grad(model(x).gather(1, targets[:, None]).sum(), x)

    def attribution():
        lrp.attribute(model, inputs, composite, target=targets, start_with="one", tolerance=None)

    times = {gradient: [], attribution: []}
    for round_index in range(repeats + 1):
        for call, values in times.items():
            began = time.perf_counter()
            call()
            if round_index:
                values.append(time.perf_counter() - began)
    best_gradient, best_attribution = min(times[gradient]), min(times[attribution])
    with torch.no_grad():
        began = time.perf_counter()
        model(inputs)
        forward = time.perf_counter() - began

    spent = collections.defaultdict(lambda: [0, 0.0])
    propagate = RelevanceRule.propagate

    def timed(rule, module, *args, **kwargs):
        began = time.perf_counter()
        result = propagate(rule, module, *args, **kwargs)
        entry = spent[(type(rule).__name__, type(module).__name__)]
        entry[0] += 1
        entry[1] += time.perf_counter() - began
        return result

    RelevanceRule.propagate = timed
    try:
        attribution()
    finally:
        RelevanceRule.propagate = propagate
    total = sum(seconds for _, seconds in spent.values())
    lines = [f"{name}, batch {batch}, {size}x{size}, {torch.get_num_threads()} thread(s), {method}: gradient "
             f"{1000 * best_gradient:.0f} ms, attribution {1000 * best_attribution:.0f} ms "
             f"({best_attribution / best_gradient:.2f}x), forward alone {1000 * forward:.0f} ms "
             f"({forward / best_gradient:.2f}x); relevance pass in rules {1000 * total:.0f} ms "
             f"({total / best_gradient:.2f}x)", "",
             "| rule | module | calls | ms | share of the relevance pass |", "| --- | --- | --- | --- | --- |"]
    for (rule, module), (calls, seconds) in sorted(spent.items(), key=lambda item: -item[1][1]):
        lines.append(f"| {rule} | {module} | {calls} | {1000 * seconds:.1f} | {seconds / total:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="convnext_tiny")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method", default="flows_skip_conservative")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(profile(args.model, args.batch, args.size, args.repeats, args.method))


if __name__ == "__main__":
    main()
