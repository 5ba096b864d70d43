"""Score methods x images x models through Insertion/Deletion: resumable, sharded over processes, every random choice
drawn from the run's seed."""
from __future__ import annotations

import hashlib
import os
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from ..application.images import ImageError, open_image
from ..application.methods import MethodContext, MethodError, get_method, method_names
from ..application.models import LoadedModel
from ..rewriting import TraceCache
from .datasets import Sample
from .metrics import CurveSpec, insertion_deletion
from .protocol import OURS, PROTOCOLS, Protocol
from .store import RowWriter, read_rows

# what `resnet-lrp evaluate` compares when no --methods are given: the proposed method against the paper's baselines
DEFAULT_METHODS = ("flows_skip", "zennit_epsilon_plus_flat", "lrp_epsilon_plain", "gradient", "integrated_gradients",
                   "random")
# the paper's curve step at 224x224; smaller images get this many points instead
PAPER_STEP = 500
SMALL_IMAGE_POINTS = 28


def default_curve_spec(image_size: int, **options) -> CurveSpec:
    """The paper's curves (a step of 500 pixels) for images of at least 112 pixels a side, else 28 points."""
    if options.get("step") is None and options.get("points") is None:
        if image_size >= 112:
            options["step"] = PAPER_STEP
        else:
            options["points"] = SMALL_IMAGE_POINTS
    return CurveSpec(**options)


def sample_seed(seed: int, image: str | os.PathLike) -> int:
    """The seed of one image's random choices: from the run's seed and the image's path alone, so it is the same
    whatever batch, shard or resumed run scores the image."""
    digest = hashlib.sha256(f"{seed}:{image}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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
        Names from :py:data:`zennit_resnet_lrp.application.methods.METHODS`.
    spec : CurveSpec
        Curve step, patch size, baseline, ordering.
    protocol : Protocol
        Ours or the reference implementation's conventions (:py:mod:`zennit_resnet_lrp.evaluation.protocol`).
    batch_size : int
        Curve images per forward pass.
    images_per_step : int
        Images attributed together (and whose curves share forward passes).
    heat_quantization : int or None
        Quantize every map into this many levels first (the paper: 8), or not.
    explain : {"predicted", "label"}
        Explain each image's top-1 prediction (the reference) or its ground-truth label; the score is always the
        ground-truth label's probability.
    seed : int
        The seed every random choice of the methods is drawn from (per image: :py:func:`sample_seed`).
    """

    methods: list[str]
    spec: CurveSpec = field(default_factory=CurveSpec)
    protocol: Protocol = PROTOCOLS[OURS]
    batch_size: int = 64
    images_per_step: int = 8
    heat_quantization: int | None = None
    explain: str = "predicted"
    seed: int = 0


@dataclass
class _Job:
    """One model's part of a run: where its rows go and what is done."""

    model_id: str
    loaded: LoadedModel
    settings: EvaluationSettings
    done: set
    writer: RowWriter
    samples: Sequence[Sample]
    failures: list
    inapplicable: list
    cache: TraceCache = field(default_factory=TraceCache)


def evaluate(
    models: Sequence[tuple[str, LoadedModel]],
    samples: Sequence[Sample],
    settings: EvaluationSettings,
    output: Path,
    shard: Shard = Shard(),
    progress: Callable[[int], None] | None = None,
) -> tuple[int, list[tuple[str, str]], list[tuple[str, str, str]]]:
    """Score this shard's ``samples`` (``samples[rank::world]``) with every method on every model, appending one JSON
    line per (model, image, method) to ``output/scores[.rankR].jsonl`` as soon as it is known; rows already in
    ``output`` are skipped, so an interrupted run resumes where it stopped.

    Returns
    -------
    (rows written, failures as (image, reason), inapplicable as (model id, method, reason)): images that cannot be
    read, methods that do not apply to a model (the others are scored all the same)
    """
    method_names(settings.methods)  # unknown names fail before any work
    done = {(row["model"], row["image"], row["method"]) for row in read_rows(output)}
    mine = list(samples)[shard.rank::shard.world]
    path = output / ("scores.jsonl" if shard.world == 1 else f"scores.rank{shard.rank}.jsonl")
    written, failures, inapplicable = 0, [], []
    with closing(RowWriter(path)) as writer:
        for model_id, loaded in models:
            job = _Job(model_id, loaded, settings, done, writer, mine, failures, inapplicable)
            for begin in range(0, len(mine), settings.images_per_step):
                chunk = mine[begin:begin + settings.images_per_step]
                written += _score_chunk(job, chunk)
                if progress is not None:
                    progress(len(chunk))
    return written, failures, inapplicable


def _score_chunk(job: _Job, chunk: Sequence[Sample]) -> int:
    """Score the images of ``chunk`` not done yet with every method not done for them."""
    todo = [s for s in chunk if any((job.model_id, str(s.path), m) not in job.done for m in job.settings.methods)]
    parameter = next(job.loaded.model.parameters())
    pixels, kept = [], []
    for sample in todo:
        try:
            # decoded at the size the preprocessing needs, as explain and check decode it: the same model input
            prep = job.loaded.preprocessing
            pixels.append(prep.pixels(open_image(sample.path, prep.decode_side)))
            kept.append(sample)
        except ImageError as error:
            job.failures.append((str(sample.path), str(error)))
    if not pixels:
        return 0
    return _score_images(job, kept, torch.stack(pixels).to(parameter.device, parameter.dtype))


def _score_images(job: _Job, samples: Sequence[Sample], pixels: torch.Tensor) -> int:
    settings, prep = job.settings, job.loaded.preprocessing
    inputs = prep.normalize(pixels)
    labels = torch.tensor([s.label for s in samples], device=pixels.device)
    with torch.no_grad():
        predicted = job.loaded.model(inputs).argmax(1)
    targets = predicted if settings.explain == "predicted" else labels
    levels = settings.heat_quantization
    written = 0
    for name in settings.methods:
        pending = [i for i, s in enumerate(samples) if (job.model_id, str(s.path), name) not in job.done]
        if not pending:
            continue
        index = torch.tensor(pending, device=pixels.device)
        context = MethodContext(prep.bounds(pixels.dtype, pixels.device),
                                [sample_seed(settings.seed, samples[i].path) for i in pending], job.cache)
        try:
            maps = get_method(name).run(job.loaded.model, inputs[index], targets[index], context).detach()
        except MethodError as error:  # a method that does not apply to this model: said once, the others go on
            job.inapplicable.append((job.model_id, name, str(error)))
            job.done.update((job.model_id, str(sample.path), name) for sample in job.samples)
            continue
        maps = settings.protocol.flat_maps(maps, levels)
        scores = insertion_deletion(job.loaded.model, pixels[index], maps, labels[index], prep.normalize,
                                    settings.spec, batch_size=settings.batch_size)
        for row_index, sample_index in enumerate(pending):
            sample = samples[sample_index]
            job.writer.write({
                "model": job.model_id, "image": str(sample.path), "label": sample.label,
                "target": int(targets[sample_index]), "method": name,
                **{key: float(scores[key][row_index]) for key in ("insertion", "deletion", "id")},
                "insertion_curve": [round(v, 6) for v in scores["insertion_curve"][row_index].tolist()],
                "deletion_curve": [round(v, 6) for v in scores["deletion_curve"][row_index].tolist()],
            })
            job.done.add((job.model_id, str(sample.path), name))
            written += 1
        job.writer.flush()
    return written
