"""An evaluation run from start to end, as ``resnet-lrp evaluate`` asks for it: the images sampled, the models loaded,
the results folder claimed for the run's configuration and locked, every (model, image, method) scored (sharded
under torchrun, resumable), and the table of exactly this run's rows written."""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Sequence

from .. import __version__
from ..application.files import check_output_folder, write_csv, write_json
from ..application.methods import method_names
from ..application.models import LoadedModel, ModelSpec
from .datasets import DATASETS
from .metrics import CurveSpec
from .protocol import OURS, PROTOCOLS
from .run import DEFAULT_METHODS, EvaluationSettings, default_curve_spec, evaluate, sharded
from .store import file_digest, read_rows, results_folder
from .summary import format_markdown, summarize

Progress = Callable[[int], ContextManager[Callable[[int], None]]]


@dataclass(frozen=True)
class EvaluationRequest:
    """Everything an evaluation run is given.

    Attributes
    ----------
    model : ModelSpec
        The model; ``weights`` lists one or more weights to evaluate it with (the paper's five CUB checkpoints),
        None for the spec's own.
    dataset, dataset_root : str
        A name of :py:data:`~zennit_resnet_lrp.evaluation.datasets.DATASETS` and its folder (the digits need none).
    per_class, limit : int, optional
        Images per class, then at most this many in all.
    seed : int, optional
        The seed of the sampling, of random weights and of the methods' random choices; the protocol's by default.
    methods : str or sequence of str
        Method names, comma-separated or a sequence, or "all".
    protocol : {"ours", "reference"}
    curve : dict
        :py:class:`~zennit_resnet_lrp.evaluation.metrics.CurveSpec` options (step, points, patch_size, baseline,
        strict); the protocol's patch grid and the image size's step by default.
    heat_quantization : bool, optional
        Quantize the maps into ``hq_level`` levels first; the protocol's default when None (the reference's: yes).
    hq_level : int
    explain : {"predicted", "label"}
    batch_size, images_per_step : int
    output : Path
    plot : bool
        Also draw the mean curves (``curves.png``; needs matplotlib).
    """

    model: ModelSpec
    weights: Sequence[str | None] = (None,)
    dataset: str = "digits"
    dataset_root: str | None = None
    per_class: int | None = None
    limit: int | None = None
    seed: int | None = None
    methods: str | Sequence[str] = DEFAULT_METHODS
    protocol: str = OURS
    curve: dict = field(default_factory=dict)
    heat_quantization: bool | None = None
    hq_level: int = 8
    explain: str = "predicted"
    batch_size: int = 64
    images_per_step: int = 8
    output: Path = Path("resnet-lrp-eval")
    plot: bool = False


@dataclass
class EvaluationOutcome:
    """What a run produced: the table (each method's means and std over this run's rows; empty on a shard other
    than the leader), the rows, the images that failed and the methods that do not apply to a model (model id,
    method, reason)."""

    table: list[dict]
    rows: list[dict]
    failures: list[tuple[str, str]]
    images: int
    models: int
    inapplicable: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def markdown(self) -> str:
        return format_markdown(self.table)


def run_evaluation(request: EvaluationRequest, progress: Progress | None = None,
                   announce: Callable[[str], None] | None = None) -> EvaluationOutcome:
    """Run ``request``; raises ``MethodError``, ``DatasetError``, ``ModelError``, ``OutputError`` or
    ``ResultsFolderError`` (each one line naming the problem) before any scoring."""
    protocol = PROTOCOLS[request.protocol]
    names = method_names(request.methods)
    check_output_folder(request.output)
    seed = protocol.seed if request.seed is None else request.seed
    samples, _ = DATASETS[request.dataset](request.dataset_root)
    samples = protocol.sample(samples, request.per_class, request.limit, seed)
    with sharded(request.model.device) as shard:
        spec = dataclasses.replace(request.model, device=shard.device, seed=seed)
        models = _load_models(spec, request.weights)
        settings = _settings(request, names, models[0][1], seed)
        configuration = _configuration(request, spec, models, settings, len(samples))
        with results_folder(request.output, configuration) if shard.leader else nullcontext():
            shard.barrier()  # the folder is claimed before any shard writes to it
            if announce is not None and shard.leader:
                announce(f"{len(samples)} image(s) x {len(names)} method(s) x {len(models)} model(s)"
                         f"{f' over {shard.world} processes' if shard.world > 1 else ''} -> {request.output}")
            total = len(samples[shard.rank::shard.world]) * len(models)
            with (progress(total) if progress is not None and shard.leader else nullcontext(None)) as update:
                _, failures, inapplicable = evaluate(models, samples, settings, request.output, shard, update)
            shard.barrier()
            if not shard.leader:
                return EvaluationOutcome([], [], failures, len(samples), len(models), inapplicable)
            rows = _rows_of(request.output, [model_id for model_id, _ in models], samples, names)
            scored = [name for name in names if any(row["method"] == name for row in rows)]
            table = summarize(rows, scored) if rows else []
            if rows:
                _write_results(request, table, rows)
    return EvaluationOutcome(table, rows, failures, len(samples), len(models), inapplicable)


def _load_models(spec: ModelSpec, weights: Sequence[str | None]) -> list[tuple[str, LoadedModel]]:
    weights = list(weights) or [None]
    models = []
    for index, item in enumerate(weights):
        model_id = spec.name if len(weights) == 1 else f"{spec.name}[{index}]:{Path(str(item)).name}"
        models.append((model_id, spec.load(item)))
    return models


def _settings(request: EvaluationRequest, names: list[str], loaded: LoadedModel, seed: int) -> EvaluationSettings:
    protocol = PROTOCOLS[request.protocol]
    curve = {"patch_grid": protocol.patch_grid, **request.curve}
    if curve.get("step") is not None and curve.get("points") is not None:
        raise ValueError("give step or points, not both")
    quantize = protocol.heat_quantization if request.heat_quantization is None else request.heat_quantization
    return EvaluationSettings(names, default_curve_spec(loaded.preprocessing.input_size, **curve), protocol,
                              request.batch_size, request.images_per_step, request.hq_level if quantize else None,
                              request.explain, seed)


def _weights_record(loaded: LoadedModel, seed: int) -> dict:
    """What the weights are: a file's name and content hash, a torchvision weights name, or random from a seed."""
    if loaded.weights is None:
        return {"random": seed}
    path = Path(loaded.weights)
    if path.is_file():
        return {"file": path.name, "sha256": file_digest(path)}
    return {"name": loaded.weights}


def _configuration(request: EvaluationRequest, spec: ModelSpec, models, settings: EvaluationSettings,
                   images: int) -> dict:
    """Everything that changes a score, as JSON (the results folder's record): package version, protocol, models
    and weights, preprocessing, dataset and sampling, metric options and the seed. The methods are not in it: each
    row names its method, and a later run may add methods to the same folder."""
    spec_curve: CurveSpec = settings.spec
    return {
        "package": __version__,
        "protocol": settings.protocol.name,
        "models": [{"id": model_id, "model": spec.name, "num_classes": spec.num_classes,
                    "weights": _weights_record(loaded, settings.seed)} for model_id, loaded in models],
        "preprocessing": {key: list(value) if isinstance(value, tuple) else value
                          for key, value in dataclasses.asdict(models[0][1].preprocessing).items()},
        "dataset": {"name": request.dataset, "root": None if request.dataset_root is None
                    else str(Path(request.dataset_root).resolve()), "per_class": request.per_class,
                    "limit": request.limit, "images": images},
        "metric": {**dataclasses.asdict(spec_curve), "heat_quantization": settings.heat_quantization,
                   "explain": settings.explain},
        "seed": settings.seed,
    }


def _rows_of(output: Path, model_ids: list[str], samples, names: list[str]) -> list[dict]:
    """The rows of exactly this run: its models, images and methods (each once)."""
    models, images, methods = set(model_ids), {str(s.path) for s in samples}, set(names)
    return [row for row in read_rows(output)
            if row["model"] in models and row["image"] in images and row["method"] in methods]


def _write_results(request: EvaluationRequest, table: list[dict], rows: list[dict]) -> None:
    write_json(request.output / "results.json", table)
    write_csv(request.output / "results.csv", table)
    if request.plot:
        from ..application.plots import curves_plot  # matplotlib: raises ImportError without it

        curves_plot(rows, request.output / "curves.png")
