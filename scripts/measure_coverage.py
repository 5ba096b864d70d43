"""Measure the default composite on every torchvision classification family and on the smallest model of every timm
module, and write docs/coverage.md.

    python scripts/measure_coverage.py                    # all (about 45 minutes on one core), then docs/coverage.md
    python scripts/measure_coverage.py --only convnext_atto,vit_b_16     # these again
    python scripts/measure_coverage.py --report           # docs/coverage.md from the results measured so far

Per model: random weights and batch-norm statistics, float64, eval mode, two seeded inputs of the model's default
size (224x224 for timm models made for inputs over 512 pixels a side, where they take another size); the plain
gradient of the top logit and ``attribute`` (the default composite, made once, its second call timed); the
conservation error ``max |total + absorbed - start| / start``, the exception if one is raised, the modules the
composite gives no rule and those it could not trace. Results go to build/coverage/results.jsonl as each model is
done (a rerun skips the models measured); one thread, one model at a time.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import signal
import sys
import time
import traceback
import warnings
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import zennit_resnet_lrp as lrp  # noqa: E402
from zennit_resnet_lrp.coverage import unruled_modules  # noqa: E402

RESULTS = ROOT / "build" / "coverage" / "results.jsonl"
SELECTION = ROOT / "build" / "coverage" / "selection.json"
REPORT = ROOT / "docs" / "coverage.md"
TOLERANCE = 1e-5
# float64 attention over inputs larger than this needs more than a 24 GiB machine gives one process (the three ViTs
# at 546-768 px did not fit in 21 GiB): such models are measured at 224x224 where timm builds them for another size
LARGEST_SIDE = 512
# torchvision's model names -> family (the rest: the name's letters before its size)
FAMILIES = [(r"^efficientnet_v2_", "efficientnet_v2"), (r"^efficientnet_b\d$", "efficientnet"),
            (r"^mobilenet_v3_", "mobilenet_v3"), (r"^regnet_x_", "regnet_x"), (r"^regnet_y_", "regnet_y"),
            (r"^swin_v2_", "swin_v2"), (r"^swin_[tsb]$", "swin"), (r"^vgg\d+_bn$", "vgg_bn"), (r"^vgg\d+$", "vgg"),
            (r"^vit_", "vit"), (r"^wide_resnet", "wide_resnet"), (r"^resnext", "resnext"),
            (r"^resnet\d+$", "resnet"), (r"^densenet", "densenet"), (r"^convnext_", "convnext"),
            (r"^mnasnet", "mnasnet"), (r"^shufflenet_v2_", "shufflenet_v2"), (r"^squeezenet", "squeezenet")]
ATTENTION = re.compile(r"attention|attn", re.IGNORECASE)
TOO_LARGE_STATUS = "too large for this machine"


def parameters(build) -> int | None:
    """A model's parameter count, built on the meta device (no memory, no time)."""
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in build().parameters())
    except Exception:  # noqa: BLE001 - builders fail in many ways on meta tensors
        return None


def _published_parameters(name: str) -> int | None:
    """The parameter count torchvision's weights metadata gives (for builders that fail on the meta device: RegNet)."""
    import torchvision

    try:
        return int(torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"])
    except Exception:  # noqa: BLE001 - models without weights
        return None


def select() -> list[dict]:
    """The smallest model (by parameters) of each torchvision family and of each timm module, test models aside."""
    if SELECTION.exists():
        return json.loads(SELECTION.read_text())
    import timm
    import torchvision

    chosen = []
    families = defaultdict(list)
    for name in torchvision.models.list_models(module=torchvision.models):
        family = next((family for pattern, family in FAMILIES if re.search(pattern, name)), name)
        families[family].append(name)
    for family, names in sorted(families.items()):
        sizes = {name: parameters(lambda n=name: torchvision.models.get_model(n, num_classes=10))
                 or _published_parameters(name) for name in names}
        chosen.append({"source": "torchvision", "group": family, "name": min(names, key=lambda n: sizes[n] or 1e12)})
    for module in timm.list_modules():
        names = [name for name in timm.list_models(module=module) if not name.startswith("test_")]
        sizes = {name: parameters(lambda n=name: timm.create_model(n, pretrained=False)) for name in names}
        if names:
            chosen.append({"source": "timm", "group": module, "name": min(names, key=lambda n: sizes[n] or 1e12)})
    SELECTION.parent.mkdir(parents=True, exist_ok=True)
    SELECTION.write_text(json.dumps(chosen, indent=1))
    return chosen


@torch.no_grad()
def build(source: str, name: str) -> tuple[torch.nn.Module, tuple]:
    """The model with seeded random weights and batch-norm statistics, float64, eval mode; its input size."""
    torch.manual_seed(0)
    if source == "torchvision":
        import torchvision

        model = torchvision.models.get_model(name, num_classes=10)
        try:
            crop = torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size
            size = (3, crop[0], crop[-1])
        except Exception:  # noqa: BLE001 - models without weights metadata
            size = (3, 224, 224)
    else:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=10)
        size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
        if max(size[1:]) > LARGEST_SIDE:  # made for large inputs: at 224 where the model takes another size
            try:
                torch.manual_seed(0)
                model, size = timm.create_model(name, pretrained=False, num_classes=10, img_size=224), (3, 224, 224)
            except TypeError:  # no img_size argument: measured at its own size
                pass
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) * 1.5 + 0.5)
    return model.double().eval(), size


def _timed(call) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def measure(source: str, group: str, name: str) -> dict:
    """One model's row."""
    row = {"source": source, "group": group, "name": name}
    model, size = build(source, name)
    row["parameters"] = sum(p.numel() for p in model.parameters())
    row["kind"] = "attention" if any(isinstance(m, torch.nn.MultiheadAttention) or ATTENTION.search(type(m).__name__)
                                     for m in model.modules()) else "convolutional"
    row["input"] = list(size)
    row["reduced"] = source == "timm" and list(size) != list(model.pretrained_cfg.get("input_size", size))
    inputs = torch.randn(2, *size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    try:
        with torch.no_grad():
            target = model(inputs).argmax(1)
    except Exception as error:  # noqa: BLE001
        return {**row, "status": "forward fails", "exception": _one_line(error)}

    def gradient():
        x = inputs.clone().requires_grad_()
        torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)

    composite = lrp.make_composite()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            lrp.attribute(model, inputs, composite, target, tolerance=None)  # traced here, timed below
            row["gradient_s"] = _timed(gradient)
            result = []
            row["attribute_s"] = _timed(lambda: result.append(lrp.attribute(model, inputs, composite, target,
                                                                             tolerance=None)))
        except Exception as error:  # noqa: BLE001
            status = TOO_LARGE_STATUS if "can't allocate memory" in str(error) else "raises"
            return {**row, "status": status, "exception": _one_line(error),
                    "where": traceback.extract_tb(error.__traceback__)[-1].name}
    attribution = result[0]
    row["error"] = float(attribution.conservation_error.max())
    row["status"] = "conserves" if row["error"] <= TOLERANCE else "loses or creates relevance"
    row["unruled"] = dict(Counter(kind for _, kind in unruled_modules(model, composite)))
    row["untraced"] = [f"{kind}: {reason}" for _, kind, reason in attribution.untraced]
    if row["error"] > TOLERANCE:
        violation = lrp.locate_violation(model, inputs, attribution, composite, tolerance=TOLERANCE)
        row["changes"] = [] if violation is None else violation.kinds
    return row


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout("took longer than the timeout")


def run(models: list[dict], timeout: int, memory: int) -> None:
    """Measure each model not measured yet in a process of its own (forked: nothing to import again), with at most
    ``memory`` GiB and ``timeout`` seconds: a model too large for the machine is reported, not fatal."""
    done = {(row["source"], row["name"]) for row in read()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for entry in models:
        if (entry["source"], entry["name"]) in done:
            continue
        began = time.perf_counter()
        child = os.fork()
        if child == 0:
            _measure_here(entry, timeout, memory, began)
        _, status = os.waitpid(child, 0)
        if status != 0:
            _write({**entry, "status": "not measured",
                    "exception": f"the measuring process died (status {status}: out of memory?)",
                    "seconds": round(time.perf_counter() - began, 1)})
        gc.collect()


def _measure_here(entry: dict, timeout: int, memory: int, began: float) -> None:
    """In the forked process: measure one model, write its row, exit."""
    resource.setrlimit(resource.RLIMIT_AS, (memory << 30, resource.RLIM_INFINITY))
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        row = measure(entry["source"], entry["group"], entry["name"])
    except (Exception, MemoryError) as error:  # noqa: BLE001 - cannot be built, too large, or a timeout
        row = {**entry, "status": "not measured", "exception": _one_line(error)}
    row["seconds"] = round(time.perf_counter() - began, 1)
    _write(row)
    os._exit(0)


def _write(row: dict) -> None:
    with open(RESULTS, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(f"{row['source']:<12} {row['name']:<40} {row['status']:<28} {row.get('error', row.get('exception'))}",
          flush=True)


def read() -> list[dict]:
    if not RESULTS.exists():
        return []
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]


# why a model still fails, where the table's columns do not say it (read off the model's code when it was measured)
REASONS: dict[str, str] = {}  # none left at the last run
TOO_LARGE = "float64 weights and activations beyond the measuring process's memory limit (`--memory`, GiB)"


def report(rows: list[dict]) -> str:
    """docs/coverage.md: the figures, then a table per kind of model."""
    lines = ["# Coverage", "",
             "What the default composite (`flows_skip_conservative`) does on the smallest model of every torchvision",
             "classification family and of every timm model module, measured by `python scripts/measure_coverage.py`",
             f"(random weights and batch-norm statistics, float64, two seeded inputs of each model's size; torch "
             f"{torch.__version__.split('+')[0]}). \"conserves\": "
             f"`max |total + absorbed - start| / start <= {TOLERANCE:g}`.",
             "Time: one `attribute` call over one plain gradient of the top logit, both on the two inputs, one thread.",
             f"Models made for inputs over {LARGEST_SIDE} pixels a side are measured at 224x224 where timm builds them "
             "for another size (their rows name the input): float64 attention at 546-768 pixels needs more memory "
             "than this 24 GiB machine gives one process.",
             ""]
    for kind in ("convolutional", "attention"):
        mine = [row for row in rows if row.get("kind", "convolutional") == kind]
        for source in ("torchvision", "timm"):
            theirs = [row for row in mine if row["source"] == source]
            conserving = sum(row["status"] == "conserves" for row in theirs)
            raising = sum(row["status"] == "raises" for row in theirs)
            large = sum(row["status"] in (TOO_LARGE_STATUS, "not measured") for row in theirs)
            lines.append(f"- {kind}, {source}: {conserving} of {len(theirs)} conserve, {raising} raise from "
                         "`attribute`" + (f", {large} too large for this machine (not measured)" if large else ""))
    lines.append("")
    for kind in ("convolutional", "attention"):
        lines += [f"## {kind.capitalize()} models", "",
                  "| source | family or module | model | result | error | time x gradient "
                  "| without a rule / not traced / "
                  "where it changes |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for row in sorted((r for r in rows if r.get("kind", "convolutional") == kind),
                          key=lambda r: (r["status"] != "conserves", r["source"], r["group"])):
            ratio = (f"{row['attribute_s'] / row['gradient_s']:.2f}" if row.get("gradient_s") else "")
            error = f"{row['error']:.1e}" if "error" in row else row.get("exception", "")
            notes = [", ".join(f"{k} x{v}" for k, v in row.get("unruled", {}).items()),
                     "; ".join(row.get("untraced", [])[:2]), ", ".join(row.get("changes", []))]
            name = row["name"] + (f" ({row['input'][-2]}x{row['input'][-1]})" if row.get("reduced") else "")
            lines.append(f"| {row['source']} | {row['group']} | {name} | {row['status']} | {error} | {ratio} | "
                         + " / ".join(note or "-" for note in notes) + " |")
        lines.append("")
    failing = [row for row in rows if row["status"] != "conserves"]
    if failing:
        lines += ["## Remaining shortfalls", ""]
        for row in sorted(failing, key=lambda r: r["name"]):
            exception = row.get("exception", "")
            reason = REASONS.get(row["name"]) or (TOO_LARGE if row["status"] in (TOO_LARGE_STATUS, "not measured")
                                                  or "allocate memory" in exception
                                                  else "; ".join(row.get("changes", [])) or exception)
            lines.append(f"- {row['source']} `{row['name']}` ({row['status']}): {reason}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated model names")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per model")
    parser.add_argument("--memory", type=int, default=16, help="GiB per model")
    parser.add_argument("--report", action="store_true", help="only write docs/coverage.md from the results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.report:
        models = select()
        if args.only:  # measured again: their earlier rows are dropped
            wanted = set(args.only.split(","))
            models = [entry for entry in models if entry["name"] in wanted]
            kept = [row for row in read() if row["name"] not in wanted]
            RESULTS.write_text("".join(json.dumps(row) + "\n" for row in kept))
        run(models, args.timeout, args.memory)
    REPORT.write_text(report(read()) + "\n")
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
