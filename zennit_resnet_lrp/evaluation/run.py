"""Run methods x images x models through Insertion/Deletion: resumable, sharded over processes, summarised."""
from __future__ import annotations

import json
import math
import os
import statistics
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from ..application.heatmap import quantize
from ..application.images import ImageError, open_image
from ..application.models import LoadedModel
from .datasets import Sample
from .methods import METHODS, MethodError, get_method
from .metrics import CurveSpec, insertion_deletion

SCORE_FILES = "scores*.jsonl"
# what `resnet-lrp evaluate` compares when no --methods are given: the proposed method against the paper's baselines
DEFAULT_METHODS = ("flows_skip", "zennit_epsilon_plus_flat", "lrp_epsilon_plain", "gradient", "integrated_gradients",
                   "random")
# the paper's curve step at 224x224; smaller images get this many points instead
PAPER_STEP = 500
SMALL_IMAGE_POINTS = 28


def method_names(methods: str | Sequence[str] | None, *extra: str | None) -> list[str]:
    """The methods to evaluate: a comma-separated list or sequence (``"all"`` for every method, None for
    :py:data:`DEFAULT_METHODS`) followed by ``extra`` names not yet in it; each checked to exist."""
    if methods is None:
        names = list(DEFAULT_METHODS)
    elif isinstance(methods, str):
        names = list(METHODS) if methods == "all" else [n.strip() for n in methods.split(",") if n.strip()]
    else:
        names = list(methods)
    names += [name for name in dict.fromkeys(extra) if name and name not in names]
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise MethodError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return names


def default_curve_spec(image_size: int, **options) -> CurveSpec:
    """The paper's curves (a step of 500 pixels) for images of at least 112 pixels a side, else 28 points."""
    if options.get("step") is None and options.get("points") is None:
        if image_size >= 112:
            options["step"] = PAPER_STEP
        else:
            options["points"] = SMALL_IMAGE_POINTS
    return CurveSpec(**options)


@dataclass(frozen=True)
class Shard:
    """This process's part of a run under torchrun (``rank`` of ``world``), and the device it should use."""

    rank: int = 0
    world: int = 1
    device: str | None = None

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process of the run (nothing to wait for outside torchrun)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


@contextmanager
def sharded(device: str | torch.device) -> Iterator[Shard]:
    """The process group of a torchrun launch (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), set up for the run and
    torn down after it: NCCL with one GPU per process when ``device`` asks for CUDA and there is one, else gloo.
    Outside torchrun, a single shard on ``device``."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world == 1:
        yield Shard(0, 1, str(device))
        return
    import torch.distributed as dist

    use_cuda = str(device) != "cpu" and torch.cuda.is_available()
    if use_cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        yield Shard(rank, world, str(device))
    finally:
        dist.destroy_process_group()


@dataclass
class EvaluationSettings:
    """What to measure and how.

    Attributes
    ----------
    methods : list of str
        Names from :py:data:`zennit_resnet_lrp.evaluation.methods.METHODS`.
    spec : CurveSpec
        Curve step, patch size, baseline, ordering.
    batch_size : int
        Curve images per forward pass.
    images_per_step : int
        Images attributed together (and whose curves share forward passes).
    heat_quantization : int or None
        Quantize every map into this many levels first (the paper: 8), or not.
    explain : {"predicted", "label"}
        Explain each image's top-1 prediction (the reference) or its ground-truth label; the score is always the
        ground-truth label's probability.
    """

    methods: list[str]
    spec: CurveSpec = field(default_factory=CurveSpec)
    batch_size: int = 64
    images_per_step: int = 8
    heat_quantization: int | None = None
    explain: str = "predicted"


def read_rows(output: Path) -> list[dict]:
    """Every finished score row in ``output`` (all shards); a line cut short by an interruption is ignored."""
    rows: list[dict] = []
    for path in sorted(output.glob(SCORE_FILES)):
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def evaluate(
    models: Sequence[tuple[str, LoadedModel]],
    samples: Sequence[Sample],
    settings: EvaluationSettings,
    output: Path,
    rank: int = 0,
    world: int = 1,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, list[tuple[str, str]]]:
    """Score ``samples[rank::world]`` with every method on every model, appending one JSON line per
    (model, image, method) to ``output/scores[.rankR].jsonl`` as soon as it is known; rows already in ``output``
    are skipped, so an interrupted run resumes where it stopped.

    Returns
    -------
    (rows written, failures as (image, reason))
    """
    method_names(settings.methods)  # unknown names fail before any work
    done = {(row["model"], row["image"], row["method"]) for row in read_rows(output)}
    mine = list(samples)[rank::world]
    path = output / ("scores.jsonl" if world == 1 else f"scores.rank{rank}.jsonl")
    written, failures = 0, []
    _drop_cut_line(path)
    with closing(_Sink(path)) as sink:
        for model_id, loaded in models:
            device = next(loaded.model.parameters()).device
            dtype = next(loaded.model.parameters()).dtype
            prep = loaded.preprocessing
            bounds = prep.bounds(dtype, device)
            for begin in range(0, len(mine), settings.images_per_step):
                chunk = mine[begin:begin + settings.images_per_step]
                todo = [s for s in chunk if any((model_id, str(s.path), m) not in done for m in settings.methods)]
                pixels, kept = [], []
                for sample in todo:
                    try:
                        pixels.append(prep.pixels(open_image(sample.path)))
                        kept.append(sample)
                    except ImageError as error:
                        failures.append((str(sample.path), str(error)))
                if pixels:
                    written += _score_chunk(loaded, model_id, kept, torch.stack(pixels).to(device, dtype), bounds,
                                            settings, done, sink)
                if progress is not None:
                    progress(len(chunk))
    return written, failures


class _Sink:
    """Appends score rows to ``path``; the file (and its folder) is made with the first row, so a run that scores
    nothing leaves nothing behind."""

    def __init__(self, path: Path) -> None:
        self.path, self.handle = path, None

    def write(self, text: str) -> None:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a")
        self.handle.write(text)

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _drop_cut_line(path: Path) -> None:
    """Cut a last line left unfinished by an interruption, so appended rows start on a line of their own."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[:data.rfind(b"\n") + 1])


def _score_chunk(loaded, model_id, samples, pixels, bounds, settings, done, sink) -> int:
    prep = loaded.preprocessing
    inputs = prep.normalize(pixels)
    labels = torch.tensor([s.label for s in samples], device=pixels.device)
    with torch.no_grad():
        predicted = loaded.model(inputs).argmax(1)
    targets = predicted if settings.explain == "predicted" else labels
    written = 0
    for name in settings.methods:
        pending = [i for i, s in enumerate(samples) if (model_id, str(s.path), name) not in done]
        if not pending:
            continue
        index = torch.tensor(pending, device=pixels.device)
        maps = get_method(name)(loaded.model, inputs[index], targets[index], bounds).detach()
        if settings.heat_quantization:
            maps = quantize(maps, settings.heat_quantization)
        scores = insertion_deletion(loaded.model, pixels[index], maps, labels[index], prep.normalize, settings.spec,
                                    settings.batch_size)
        for row_index, sample_index in enumerate(pending):
            sample = samples[sample_index]
            row = {
                "model": model_id, "image": str(sample.path), "label": sample.label,
                "target": int(targets[sample_index]), "method": name,
                **{key: float(scores[key][row_index]) for key in ("insertion", "deletion", "id")},
                "insertion_curve": [round(v, 6) for v in scores["insertion_curve"][row_index].tolist()],
                "deletion_curve": [round(v, 6) for v in scores["deletion_curve"][row_index].tolist()],
            }
            sink.write(json.dumps(row) + "\n")
            done.add((model_id, row["image"], name))
            written += 1
        sink.flush()
    return written


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def summarize(rows: Sequence[dict], methods: Sequence[str] | None = None) -> list[dict]:
    """Insertion, Deletion and ID per method as mean and std: over images for one model; over the models' means
    when there are several (the paper's five CUB models)."""
    methods = list(methods or dict.fromkeys(row["method"] for row in rows))
    table = []
    for method in methods:
        mine = [row for row in rows if row["method"] == method]
        model_ids = list(dict.fromkeys(row["model"] for row in mine))
        entry = {"method": method, "images": len({row["image"] for row in mine}), "models": len(model_ids)}
        for metric in ("insertion", "deletion", "id"):
            if len(model_ids) > 1:
                per_model = [statistics.fmean(r[metric] for r in mine if r["model"] == m) for m in model_ids]
                entry[metric], entry[f"{metric}_std"] = _mean_std(per_model)
            else:
                entry[metric], entry[f"{metric}_std"] = _mean_std([r[metric] for r in mine])
        table.append(entry)
    return table


def format_markdown(table: Sequence[dict]) -> str:
    """The table as markdown, values in %."""
    over = "models" if any(entry["models"] > 1 for entry in table) else "images"
    lines = ["| method | images | Insertion | Deletion | ID |", "| --- | --- | --- | --- | --- |"]
    for entry in table:
        cells = [f"{100 * entry[m]:.1f} +- {100 * entry[m + '_std']:.1f}" for m in ("insertion", "deletion", "id")]
        lines.append(f"| {entry['method']} | {entry['images']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nvalues in %, mean +- std over {over}"
