"""Measure the default composite on every torchvision classification family, on the smallest model of every timm
module, on Hugging Face transformers' image classifiers, torchvision's segmentation and video models and
segmentation_models_pytorch's architectures, and write docs/coverage.md.

    python scripts/measure_coverage.py                    # all (about an hour on one core), then docs/coverage.md
    python scripts/measure_coverage.py --only convnext_atto,vit_b_16     # these again
    python scripts/measure_coverage.py --source transformers,smp         # these sources (the models not measured)
    python scripts/measure_coverage.py --second-size-only --group attention   # the second size of measured rows
    python scripts/measure_coverage.py --report           # docs/coverage.md from the results measured so far

Per model: random weights and batch-norm statistics (parameters initialised to one constant made random too),
float64, eval mode, two seeded inputs of the model's default
size (224x224 for timm models made for inputs over 512 pixels a side, where they take another size); the plain
gradient of the top logit and ``attribute`` (the default composite, made once, its second call timed); the
conservation error ``max |total + absorbed - start| / start``, the exception if one is raised, the modules the
composite gives no rule and those it could not trace. Then the same at a second size (``second_*`` keys): the first
of SECOND_SIZES (small, non-square first) that the model's forward takes, as it is or built for it. transformers
models are built offline from their default config made small; dense outputs (segmentation) explain the
``Region`` of their most frequent top class. Results go to build/coverage/results.jsonl as each model is done (a
rerun skips the models measured; ``--second-size-only`` measures only the second size of rows without one); one
thread, one model at a time, each in a process of its own with a memory limit and a timeout.
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
from zennit_resnet_lrp.outputs import logits_of  # noqa: E402

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
NOT_BUILT_STATUS = "not built"
UNMEASURED = ("forward fails", NOT_BUILT_STATUS, "not measured", TOO_LARGE_STATUS)
# the sources measured besides torchvision's classifiers and timm, each a section of the report
NEW_SOURCES = {"transformers": "Hugging Face transformers", "segmentation": "torchvision segmentation",
               "video": "torchvision video", "smp": "segmentation_models_pytorch"}
HF_AUTO = "AutoModelForImageClassification"
# a default config made small enough to build and run in seconds (only the fields a config has are changed)
HF_SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128,
            "n_layer": 2, "n_embd": 64, "n_head": 2, "width_coefficient": 1.0, "depth_coefficient": 1.0}
HF_SIZE = 64
# families whose depths are tied to other lists of their config (left as they are) and the few fields set per family
HF_KEEP_DEPTHS = {"pp_lcnet", "textnet"}
# Swin: windows of 2 (at 64 pixels its last stage is 2x2, and a window clipped to it no longer fits its position
# bias); Cvt indexes stage i's blocks by i; EfficientNet: B0's head width with B0's coefficients (the default is B7)
HF_FIELDS = {"timm_wrapper": {"architecture": "resnet18"}, "swin": {"window_size": 2}, "swinv2": {"window_size": 2},
             "donut": {"window_size": 2}, "cvt": {"depth": [1, 2, 3]}, "efficientnet": {"hidden_dim": 1280}}
# classifiers whose input is not an image tensor: nothing to attribute to pixels
HF_NOT_IMAGES = {"imagegpt": "takes colour-cluster token ids, not pixels",
                 "shieldgemma2": "a vision-language model: takes token ids and an image",
                 "siglip2": "takes flattened patch sequences with their spatial shapes, not an image tensor"}
HF_OUTPUT = {"pp_lcnet": "last_hidden_state"}  # returns its logits under this name
SMP_ARCHITECTURES = ("Unet", "FPN", "DeepLabV3Plus", "PSPNet", "Linknet")
SMP_ENCODERS = ("resnet18", "tu-convnext_atto", "mit_b0")
DENSE_SIZE = (3, 128, 128)
NO_SECOND_SIZE = {name: "torchvision's builder fixes its position embeddings for 16x224x224 clips"
                  for name in ("mvit_v1_b", "mvit_v2_s")}
# clip sizes (C, T, H, W) tried in order for a video model's default: the first its forward takes
VIDEO_SIZES = [(3, 8, 112, 112), (3, 16, 112, 112), (3, 16, 224, 224)]
# the second size: the first of these (H, W) that the model (or the model built for it) takes, non-square first
# (112x112 last: for patches of 14, added after the rows were measured with the others, whose choices it keeps)
SECOND_SIZES = [(64, 96), (64, 64), (96, 128), (128, 128), (160, 160), (192, 192), (224, 224), (256, 256),
                (112, 112)]


class _NotBuilt(Exception):
    """A model that cannot be built here (offline, missing library) or takes no image tensor."""


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
        chosen = json.loads(SELECTION.read_text())
        if not any(entry["source"] in NEW_SOURCES for entry in chosen):  # a selection made before them: add them
            chosen += _new_sources()
            SELECTION.write_text(json.dumps(chosen, indent=1))
        return chosen
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
    chosen += _new_sources()
    SELECTION.parent.mkdir(parents=True, exist_ok=True)
    SELECTION.write_text(json.dumps(chosen, indent=1))
    return chosen


def _new_sources() -> list[dict]:
    """Hugging Face's image classifiers (one per family), torchvision's segmentation and video families (the smallest
    of each) and segmentation_models_pytorch's architectures with two encoders."""
    import torchvision
    import transformers

    chosen = [{"source": "transformers", "group": _hf_family(name), "name": name}
              for name in dir(transformers) if name.endswith("ForImageClassification") and name != HF_AUTO]
    for source, module in (("segmentation", torchvision.models.segmentation), ("video", torchvision.models.video)):
        families = defaultdict(list)
        for name in torchvision.models.list_models(module=module):
            families[_torchvision_family(source, name)].append(name)
        for family, names in sorted(families.items()):
            sizes = {name: parameters(lambda n=name: _torchvision_dense(source, n)) for name in names}
            chosen.append({"source": source, "group": family, "name": min(names, key=lambda n: sizes[n] or 1e12)})
    chosen += [{"source": "smp", "group": architecture, "name": f"{architecture}-{encoder}"}
               for encoder in SMP_ENCODERS for architecture in SMP_ARCHITECTURES]
    return chosen


def _hf_family(name: str) -> str:
    """The transformers.models module a class comes from (its family)."""
    import transformers

    return transformers._class_to_module[name].split(".")[-2]  # models.vit.modeling_vit: no import


def _torchvision_family(source: str, name: str) -> str:
    """Segmentation: head and backbone family (fcn_resnet, deeplabv3_mobilenet_v3_large); video: the architecture."""
    if source == "video":
        return re.sub(r"_[a-z]?\d*[a-z]?$", "", name) if not name.startswith("mvit") else name[:7]
    return re.sub(r"\d+$", "", name)


@torch.no_grad()
def build(source: str, name: str, at: tuple | None = None) -> tuple[torch.nn.Module, tuple]:
    """The model with seeded random weights and batch-norm statistics, float64, eval mode; its input size. ``at``:
    (H, W) to build it for (a model with fixed position embeddings), None: its default; raises TypeError where the
    model has no size to build it for."""
    torch.manual_seed(0)
    if source == "torchvision":
        model, size = _torchvision(name, at)
    elif source == "timm":
        model, size = _timm(name, at)
    elif source == "transformers":
        model, size = _transformers(name, at)
    elif source in ("segmentation", "video"):
        if at is not None:  # fully convolutional, or MViT, whose builders fix 16x224x224 clips
            raise TypeError("nothing to build for a size")
        model, size = _torchvision_dense(source, name), DENSE_SIZE
    else:
        if at is not None:
            raise TypeError("fully convolutional: nothing to build for a size")
        model, size = _smp(name), DENSE_SIZE
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) * 1.5 + 0.5)
    # every parameter that is one constant at initialisation (zero-initialised projections and heads, layer scales,
    # norms' weights and biases) made random: a branch whose output is zero gets no relevance and hides a leak
    # (EfficientViT's attention conserved with its zero projections and lost 77% without them)
    for parameter in model.parameters():
        if parameter.numel() and bool(parameter.min() == parameter.max()):
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    model = model.double().eval()
    if source == "video":  # no size in the weights' metadata: the first clip size the model takes
        size = next((size for size in VIDEO_SIZES if _runs(model, size)), VIDEO_SIZES[-1])
    return model, size


def _torchvision(name: str, at: tuple | None) -> tuple[torch.nn.Module, tuple]:
    import torchvision

    if at is not None:  # ViT takes image_size (square), MaxViT input_size
        for arguments in ([{"image_size": at[0]}] if at[0] == at[1] else []) + [{"input_size": at}]:
            try:
                return torchvision.models.get_model(name, num_classes=10, **arguments), (3, *at)
            except TypeError:
                continue
        raise TypeError(f"{name} has no input size argument")
    model = torchvision.models.get_model(name, num_classes=10)
    try:
        crop = torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size
        size = (3, crop[0], crop[-1])
    except Exception:  # noqa: BLE001 - models without weights metadata
        size = (3, 224, 224)
    return model, size


def _timm(name: str, at: tuple | None) -> tuple[torch.nn.Module, tuple]:
    import timm

    if at is not None:
        return timm.create_model(name, pretrained=False, num_classes=10, img_size=at), (3, *at)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    if max(size[1:]) > LARGEST_SIDE:  # made for large inputs: at 224 where the model takes another size
        try:
            torch.manual_seed(0)
            model, size = timm.create_model(name, pretrained=False, num_classes=10, img_size=224), (3, 224, 224)
        except TypeError:  # no img_size argument: measured at its own size
            pass
    return model, size


def _transformers(name: str, at: tuple | None) -> tuple[torch.nn.Module, tuple]:
    """A transformers classifier from its default config made small, built for ``at`` (or 64x64)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers

    family = _hf_family(name)
    if family in HF_NOT_IMAGES:
        raise _NotBuilt(HF_NOT_IMAGES[family])
    try:
        kind = getattr(transformers, name)
        config = _hf_small(kind.config_class(), family, at or (HF_SIZE, HF_SIZE))
        config.num_labels = 10
        model = kind(config)
    except ImportError as error:  # a library transformers needs for it (natten)
        raise _NotBuilt(" ".join(str(error).split()).split(" but ")[0]) from error  # "X requires the Y library"
    if at is not None and not _has_size(config):
        raise TypeError(f"{name}'s config has no image size")
    return model, (getattr(config, "num_channels", 3), *(at or (HF_SIZE, HF_SIZE)))


def _hf_small(config, family: str, size: tuple):
    """``config`` (and its vision config) scaled down: two layers of width 64 where it has such fields, one block per
    stage, inputs of ``size``."""
    fields = config.to_dict()
    for key, value in HF_SMALL.items():
        if key in fields and isinstance(fields[key], type(value)):
            if key == "hidden_size" and "num_hidden_layers" not in fields:
                continue  # a hierarchical model's hidden_size follows its stage widths
            setattr(config, key, value)
    for key in ("depths", "depth"):
        if isinstance(fields.get(key), list) and family not in HF_KEEP_DEPTHS:
            setattr(config, key, [1] * len(fields[key]))
    if "image_size" in fields:
        config.image_size = size if size[0] != size[1] or isinstance(fields["image_size"], list) else size[0]
    for key, value in HF_FIELDS.get(family, {}).items():
        setattr(config, key, value)
    if getattr(config, "vision_config", None) is not None:
        config.vision_config = _hf_small(config.vision_config, family, size)
    return config


def _has_size(config) -> bool:
    vision = getattr(config, "vision_config", None)
    return "image_size" in config.to_dict() or (vision is not None and "image_size" in vision.to_dict())


def _torchvision_dense(source: str, name: str) -> torch.nn.Module:
    """A segmentation model (no weights, no backbone weights) or a video classifier, 10 classes."""
    import torchvision

    if source == "segmentation":
        return torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=10)
    return torchvision.models.get_model(name, weights=None, num_classes=10)


def _smp(name: str) -> torch.nn.Module:
    """A segmentation_models_pytorch model ``Architecture-encoder``, no encoder weights, 10 classes."""
    import segmentation_models_pytorch as smp

    architecture, encoder = name.split("-", 1)
    try:
        return smp.create_model(architecture, encoder_name=encoder, encoder_weights=None, classes=10)
    except (ValueError, KeyError, AttributeError) as error:  # a combination smp does not offer
        raise _NotBuilt(_one_line(error)) from error


def _runs(model: torch.nn.Module, size: tuple) -> bool:
    """Whether the model's forward takes one input of ``size``."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, *size, dtype=torch.float64))
        return True
    except Exception:  # noqa: BLE001 - any failure: it does not take this size
        return False


def _timed(call) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def measure(source: str, group: str, name: str, timeout: int | None = None, second: bool = True) -> dict:
    """One model's row: at its default size, then (``second``) at the second size with a ``timeout`` of its own."""
    row = {"source": source, "group": group, "name": name}
    model, size = build(source, name)
    row["parameters"] = sum(p.numel() for p in model.parameters())
    row["kind"] = "attention" if any(isinstance(m, torch.nn.MultiheadAttention) or ATTENTION.search(type(m).__name__)
                                     for m in model.modules()) else "convolutional"
    row["input"] = list(size)
    row["reduced"] = source == "timm" and list(size) != list(model.pretrained_cfg.get("input_size", size))
    row.update(attribute_at(model, size, HF_OUTPUT.get(group)))
    if row["status"] == TOO_LARGE_STATUS and source == "video":  # float64 does not fit: what float32 says
        retry = attribute_at(model.float(), size, None, torch.float32)
        if retry["status"] != TOO_LARGE_STATUS:
            row = {key: value for key, value in row.items() if key not in ("exception", "where")}
            row.update(dtype="float32", **retry)
    if second and row["status"] != "forward fails":
        del model
        gc.collect()
        if timeout:
            signal.alarm(timeout)
        row.update(measure_second(source, name, size))
    return row


def measure_second(source: str, name: str, size: tuple) -> dict:
    """The ``second_*`` keys: the model at the first of SECOND_SIZES its forward takes, as it is or built for it."""
    default = build(source, name)[0]
    for height, width in SECOND_SIZES:
        if (height, width) == tuple(size[-2:]):
            continue
        model, wanted, rebuilt = default, (*size[:-2], height, width), False
        if not _runs(model, wanted):
            try:
                model, wanted = build(source, name, (height, width))
            except Exception:  # noqa: BLE001 - no size to build it for, or not this one
                continue
            if not _runs(model, wanted):
                continue
            rebuilt = True
        result = attribute_at(model, wanted, HF_OUTPUT.get(_group_of(source, name)))
        return {"second_input": list(wanted), "second_rebuilt": rebuilt,
                **{f"second_{key}": value for key, value in result.items()}}
    return {"second_status": "no second size", "second_exception": NO_SECOND_SIZE.get(
        name, f"takes none of {', '.join(f'{h}x{w}' for h, w in SECOND_SIZES)}")}


def _group_of(source: str, name: str) -> str | None:
    return _hf_family(name) if source == "transformers" else None


def attribute_at(model: torch.nn.Module, size: tuple, output: str | None = None,
                 dtype: torch.dtype = torch.float64) -> dict:
    """``status`` and the figures of the model attributed on two seeded inputs of ``size``: for a classifier its top
    class, for a dense output the region of its most frequent top class."""
    row = {}
    inputs = torch.randn(2, *size, generator=torch.Generator().manual_seed(0), dtype=dtype)
    try:
        with torch.no_grad():
            scores = logits_of(model(inputs), output)
        if scores.ndim == 4:  # dense: the pixels of the most frequent top class
            label = int(scores.argmax(1).flatten().mode().values)
            target, mask = lrp.Region(label), scores.argmax(1) == label
            row["region_label"] = label
        else:
            target = scores.argmax(1)
    except Exception as error:  # noqa: BLE001
        return {**row, "status": "forward fails", "exception": _one_line(error)}

    def gradient():
        x = inputs.clone().requires_grad_()
        scores = logits_of(model(x), output)
        chosen = (scores[:, target.label] * mask).sum() if scores.ndim == 4 else scores.gather(1, target[:, None]).sum()
        torch.autograd.grad(chosen, x)

    composite = lrp.make_composite()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            lrp.attribute(model, inputs, composite, target, tolerance=None, output=output)  # traced here, timed below
            row["gradient_s"] = _timed(gradient)
            result = []
            row["attribute_s"] = _timed(lambda: result.append(lrp.attribute(model, inputs, composite, target,
                                                                             tolerance=None, output=output)))
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
        violation = lrp.locate_violation(model, inputs, attribution, composite, tolerance=TOLERANCE, output=output)
        row["changes"] = [] if violation is None else violation.kinds
        row["places"] = [] if violation is None else [place.name for place in violation.places[:5]]
    return row


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout("took longer than the timeout")


def run(models: list[dict], timeout: int, memory: int, second_only: bool = False) -> None:
    """Measure each model not measured yet in a process of its own (forked: nothing to import again), with at most
    ``memory`` GiB and ``timeout`` seconds: a model too large for the machine is reported, not fatal.
    ``second_only``: only the second size, of the models measured at their default size without it."""
    rows = {(row["source"], row["name"]): row for row in read()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for entry in models:
        row = rows.get((entry["source"], entry["name"]))
        if second_only:
            if row is None or "second_status" in row or row["status"] in UNMEASURED:
                continue
            job = {**entry, "input": row["input"]}
        elif row is not None:
            continue
        else:
            job = entry
        began = time.perf_counter()
        child = os.fork()
        if child == 0:
            _measure_here(job, timeout, memory, began, second_only)
        _, status = os.waitpid(child, 0)
        if status != 0:
            died = f"the measuring process died (status {status}: out of memory?)"
            _write({**entry, "second_status": "not measured", "second_exception": died} if second_only else
                   {**entry, "status": "not measured", "exception": died,
                    "seconds": round(time.perf_counter() - began, 1)})
        gc.collect()


def _measure_here(entry: dict, timeout: int, memory: int, began: float, second_only: bool) -> None:
    """In the forked process: measure one model (or its second size only), write its row, exit."""
    resource.setrlimit(resource.RLIMIT_AS, (memory << 30, resource.RLIM_INFINITY))
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    key = "second_status" if second_only else "status"
    try:
        if second_only:
            row = {**entry, **measure_second(entry["source"], entry["name"], tuple(entry["input"]))}
        else:
            row = measure(entry["source"], entry["group"], entry["name"], timeout)
    except _NotBuilt as reason:
        row = {**entry, key: NOT_BUILT_STATUS, key.replace("status", "exception"): str(reason)}
    except (Exception, MemoryError) as error:  # noqa: BLE001 - cannot be built, too large, or a timeout
        row = {**entry, key: "not measured", key.replace("status", "exception"): _one_line(error)}
    row[key.replace("status", "seconds")] = round(time.perf_counter() - began, 1)
    _write(row)
    os._exit(0)


def _write(row: dict) -> None:
    with open(RESULTS, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    second = (f" | at {'x'.join(map(str, row['second_input'][-2:]))}" if "second_input" in row else " |") + \
        f" {row.get('second_status', '')} {row.get('second_error', row.get('second_exception', ''))}"
    print(f"{row['source']:<12} {row['name']:<40} {row.get('status', ''):<28} "
          f"{row.get('error', row.get('exception', ''))}{second}", flush=True)


def read() -> list[dict]:
    """The results, a row per model: a later line about a model (its second size) completes the earlier one."""
    if not RESULTS.exists():
        return []
    rows: dict[tuple, dict] = {}
    for line in RESULTS.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows.setdefault((row["source"], row["name"]), {}).update(row)
    return list(rows.values())


# why a model still fails, where the table's columns do not say it (read off the model's code when it was measured)
REASONS: dict[str, str] = {
    "csatv2": "timm's SpatialTransformerBlock attends across the batch (q and k are (B, N): q @ k^T is (B, B)), so the "
              "two inputs exchange relevance; the batch's total is conserved (2.0e-16), and so is each input "
              "attributed alone (2.0e-16)",
}
TOO_LARGE = "float64 weights and activations beyond the measuring process's memory limit (`--memory`, GiB)"


def report(rows: list[dict]) -> str:
    """docs/coverage.md: the figures, then a table per kind of model and per further source."""
    lines = ["# Coverage", "",
             "What the default composite (`flows_skip_conservative`) does on the smallest model of every torchvision",
             "classification family and of every timm model module, measured by `python scripts/measure_coverage.py`",
             f"(random weights and batch-norm statistics, every parameter initialised to one constant made random "
             f"too (a zero-initialised branch gets no relevance and would hide a leak), float64, two seeded inputs "
             f"of each model's size; torch "
             f"{torch.__version__.split('+')[0]}). \"conserves\": "
             f"`max |total + absorbed - start| / start <= {TOLERANCE:g}`.",
             "Time: one `attribute` call over one plain gradient of the top logit, both on the two inputs, one thread.",
             f"Models made for inputs over {LARGEST_SIDE} pixels a side are measured at 224x224 where timm builds them "
             "for another size (their rows name the input): float64 attention at 546-768 pixels needs more memory "
             "than this 24 GiB machine gives one process.",
             "Second size: each model again at the first of "
             + ", ".join(f"{h}x{w}" for h, w in SECOND_SIZES) + " (non-square first) that its forward takes, as it is "
             "or built for that size (\"built for it\": position embeddings or windows made for it); \"-\": not "
             "measured at a second size yet.",
             "Further sources, each with its own section: Hugging Face transformers' `*ForImageClassification` "
             f"classes (one per family; the default config made small: 2 layers of width 64, one block per stage, "
             f"{HF_SIZE}x{HF_SIZE} inputs); torchvision's segmentation and video models (the smallest of each family; "
             f"segmentation at {DENSE_SIZE[1]}x{DENSE_SIZE[2]}, video at the first clip size of "
             + ", ".join("x".join(map(str, size[1:])) for size in VIDEO_SIZES) + " (TxHxW) it takes); "
             "segmentation_models_pytorch's " + ", ".join(SMP_ARCHITECTURES) + " with the encoders "
             + ", ".join(SMP_ENCODERS) + f" at {DENSE_SIZE[1]}x{DENSE_SIZE[2]}. Dense outputs explain "
             "`Region(label)`: the pixels of the most frequent top class.",
             ""]
    classifiers = [row for row in rows if row["source"] in ("torchvision", "timm")]
    for kind in ("convolutional", "attention"):
        mine = [row for row in classifiers if row.get("kind", "convolutional") == kind]
        for source in ("torchvision", "timm"):
            lines.append(f"- {kind}, {source}: " + _summary([row for row in mine if row["source"] == source]))
    for source, title in NEW_SOURCES.items():
        lines.append(f"- {title}: " + _summary([row for row in rows if row["source"] == source]))
    lines.append("")
    for kind in ("convolutional", "attention"):
        lines += [f"## {kind.capitalize()} models", "", TABLE_HEAD, TABLE_RULE]
        lines += [_table_row(row, row["source"]) for row in
                  sorted((r for r in classifiers if r.get("kind", "convolutional") == kind),
                         key=lambda r: (r["status"] != "conserves", r["source"], r["group"]))]
        lines.append("")
    for source, title in NEW_SOURCES.items():
        lines += [f"## {title}", "", TABLE_HEAD.replace("| source |", "| kind |"), TABLE_RULE]
        lines += [_table_row(row, row.get("kind", "")) for row in
                  sorted((r for r in rows if r["source"] == source), key=lambda r: (r["group"], r["name"]))]
        lines.append("")
    failing = [row for row in rows if row["status"] != "conserves"
               or row.get("second_status", "conserves") not in ("conserves", "no second size")]
    if failing:
        lines += ["## Remaining shortfalls", ""]
        for row in sorted(failing, key=lambda r: (r["source"], r["name"])):
            lines.append(f"- {row['source']} `{row['name']}`: " + "; ".join(
                f"{prefix}{row[prefix + 'status']}: {_reason(row, prefix)}".replace("second_", "at a second size, ")
                for prefix in ("", "second_") if row.get(prefix + "status") not in (None, "conserves")))
        lines.append("")
    return "\n".join(lines)


TABLE_HEAD = ("| source | family or module | model | result | error | at a second size | time x gradient "
              "| without a rule / not traced / where it changes |")
TABLE_RULE = "| --- | --- | --- | --- | --- | --- | --- | --- |"


def _summary(rows: list[dict]) -> str:
    """A summary line: how many conserve, raise, were not measured or built; the same at the second size."""
    count = Counter(row["status"] for row in rows)
    built = [row for row in rows if row["status"] != NOT_BUILT_STATUS]
    line = f"{count['conserves']} of {len(built)} conserve, {count['raises']} raise from `attribute`"
    large = count[TOO_LARGE_STATUS] + count["not measured"]
    line += f", {large} too large for this machine (not measured)" if large else ""
    line += f", {count['forward fails']} whose forward fails" if count["forward fails"] else ""
    line += f", {count[NOT_BUILT_STATUS]} not built (not counted)" if count[NOT_BUILT_STATUS] else ""
    second = Counter(row["second_status"] for row in rows if "second_status" in row)
    if second:
        measured = sum(second.values()) - second["no second size"]
        waiting = sum("second_status" not in row and row["status"] not in UNMEASURED for row in rows)
        notes = [f"{second['no second size']} take no second size" if second["no second size"] else "",
                 f"{waiting} not measured at one yet" if waiting else ""]
        line += (f"; at a second size: {second['conserves']} of {measured} conserve, {second['raises']} raise"
                 + (f" ({', '.join(note for note in notes if note)})" if any(notes) else ""))
    return line


def _table_row(row: dict, first: str) -> str:
    ratio = f"{row['attribute_s'] / row['gradient_s']:.2f}" if row.get("gradient_s") and "attribute_s" in row else ""
    error = f"{row['error']:.1e}" if "error" in row else row.get("exception", "")
    notes = [", ".join(f"{k} x{v}" for k, v in row.get("unruled", {}).items()),
             "; ".join(row.get("untraced", [])[:2]), ", ".join(row.get("changes", []))]
    name = row["name"] + (f" ({row['input'][-2]}x{row['input'][-1]})" if row.get("reduced") else "")
    if row["source"] in ("video",):
        name += f" ({'x'.join(map(str, row['input'][1:]))}{', float32' if row.get('dtype') == 'float32' else ''})"
    return (f"| {first} | {row['group']} | {name} | {row['status']} | {error} | {_second(row)} | {ratio} | "
            + " / ".join(note or "-" for note in notes) + " |")


def _second(row: dict) -> str:
    """The second-size cell: "at HxW: status (error)"."""
    if "second_status" not in row:
        return "-"
    if "second_input" not in row:
        return f"{row['second_status']}: {row.get('second_exception', '')}"
    at = "x".join(map(str, row["second_input"][-2:])) + (" (built for it)" if row.get("second_rebuilt") else "")
    figure = f"{row['second_error']:.1e}" if "second_error" in row else row.get("second_exception", "")
    return f"at {at}: {row['second_status']} ({figure})"


def _reason(row: dict, prefix: str) -> str:
    """Why a model fails at its default size (prefix "") or its second size ("second_")."""
    exception = row.get(prefix + "exception", "")
    if REASONS.get(row["name"]):
        return REASONS[row["name"]]
    if row[prefix + "status"] in (TOO_LARGE_STATUS, "not measured") or "allocate memory" in exception:
        return TOO_LARGE
    places = ", ".join(row.get(prefix + "places", []))
    return ("; ".join(row.get(prefix + "changes", [])) + (f" (at {places})" if places else "")) or exception


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated model names")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per model")
    parser.add_argument("--memory", type=int, default=16, help="GiB per model")
    parser.add_argument("--report", action="store_true", help="only write docs/coverage.md from the results")
    parser.add_argument("--source", default=None,
                        help="comma-separated sources: torchvision, timm, " + ", ".join(NEW_SOURCES))
    parser.add_argument("--group", default=None, help="comma-separated groups (families, modules, kinds of model: "
                                                     "attention, convolutional)")
    parser.add_argument("--second-size-only", action="store_true",
                        help="only the second size, of the models measured without it (with --only: again)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.report:
        models = select()
        if args.source:
            models = [entry for entry in models if entry["source"] in args.source.split(",")]
        if args.group:
            kinds = {(row["source"], row["name"]): row.get("kind") for row in read()}
            models = [entry for entry in models if {entry["group"], kinds.get((entry["source"], entry["name"]))}
                      & set(args.group.split(","))]
        if args.only:  # measured again: their earlier rows (or second sizes) are dropped
            wanted = set(args.only.split(","))
            models = [entry for entry in models if entry["name"] in wanted]
            kept = [row if row["name"] not in wanted else {k: v for k, v in row.items() if not k.startswith("second_")}
                    for row in read() if row["name"] not in wanted or args.second_size_only]
            RESULTS.write_text("".join(json.dumps(row) + "\n" for row in kept))
        run(models, args.timeout, args.memory, args.second_size_only)
    REPORT.write_text(report(read()) + "\n")
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
