"""An evaluation run from start to end, as ``resnet-lrp evaluate`` asks for it: every output checked, the results
folder locked, the images sampled, the models loaded, the folder claimed for the run's configuration, every (model,
image, method) scored (sharded under torchrun, resumable), and the table of every method the folder holds for this
configuration written."""
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
from .metrics import CurveSpec, curve_fractions
from .protocol import OURS, PROTOCOLS
from .run import DEFAULT_METHODS, EvaluationSettings, Shard, default_curve_spec, evaluate, sharded
from .store import CONFIGURATION_FILE, claim, file_digest, locked, read_rows
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
    """What a run produced: the table (each method's means and std over the folder's rows of this configuration;
    empty on a shard other than the leader), the rows, the images that failed and the methods that do not apply to a
    model (model id, method, reason). ``earlier`` names the table's methods this run was not asked for: scored by an
    earlier run into the same folder (same configuration), kept in the table rather than dropped."""

    table: list[dict]
    rows: list[dict]
    failures: list[tuple[str, str]]
    images: int
    models: int
    inapplicable: list[tuple[str, str, str]] = field(default_factory=list)
    earlier: list[str] = field(default_factory=list)

    @property
    def markdown(self) -> str:
        return format_markdown(self.table)


# what a run writes into its folder besides the score files (and, with --plot, the curves)
RESULT_FILES = ("results.json", "results.csv", CONFIGURATION_FILE, "scores.jsonl")
CURVES_FILE = "curves.png"


def run_evaluation(request: EvaluationRequest, progress: Progress | None = None,
                   announce: Callable[[str], None] | None = None) -> EvaluationOutcome:
    """Run ``request``; raises ``MethodError``, ``OutputError``, ``PlotError`` or ``ResultsFolderError`` (another run
    holds the folder) before reading the dataset or loading a model, ``DatasetError``, ``ModelError`` or
    ``ResultsFolderError`` (another configuration's folder) before any scoring; each one line naming the problem."""
    names = method_names(request.methods)
    check_outputs(request)
    with sharded(request.model.device) as shard:
        # the folder's lock before anything else: a second run into it is refused at once, not after it has read the
        # dataset and loaded (and hashed) every model
        with locked(request.output) if shard.leader else nullcontext():
            return _run(request, names, shard, progress, announce)


def check_outputs(request: EvaluationRequest) -> None:
    """Every file the run will write checked before any work: the folder and the files in it, and with ``plot`` that
    matplotlib is there."""
    check_output_folder(request.output, RESULT_FILES)
    if request.plot:
        from ..application.plots import check_plot_file  # matplotlib: PlotError without it

        check_plot_file(request.output / CURVES_FILE)


def _run(request: EvaluationRequest, names: list[str], shard: Shard, progress: Progress | None,
         announce: Callable[[str], None] | None) -> EvaluationOutcome:
    """Read the dataset, load the models, claim the (locked) folder and score this shard's images."""
    protocol = PROTOCOLS[request.protocol]
    seed = protocol.seed if request.seed is None else request.seed
    samples, _ = DATASETS[request.dataset](request.dataset_root)
    samples = protocol.sample(samples, request.per_class, request.limit, seed)
    spec = dataclasses.replace(request.model, device=shard.device, seed=seed)
    models = _load_models(spec, request.weights)
    settings = _settings(request, names, models[0][1], seed)
    if shard.leader:
        claim(request.output, _configuration(request, spec, models, settings, len(samples)))
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
    rows = _rows_of(request.output, [model_id for model_id, _ in models], samples)
    # every method scored in the folder: this run's first, then those earlier runs of the configuration added
    order = [name for name in names if any(row["method"] == name for row in rows)]
    earlier = [name for name in dict.fromkeys(row["method"] for row in rows) if name not in names]
    table = summarize(rows, order + earlier) if rows else []
    if rows:
        _write_results(request, table, rows, settings, models)
    return EvaluationOutcome(table, rows, failures, len(samples), len(models), inapplicable, earlier)


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


def _rows_of(output: Path, model_ids: list[str], samples) -> list[dict]:
    """The folder's rows of this run's models and images (each once), every method's: the folder holds one
    configuration, so rows an earlier run scored with other methods are as comparable as this run's."""
    models, images = set(model_ids), {str(s.path) for s in samples}
    return [row for row in read_rows(output) if row["model"] in models and row["image"] in images]


def _write_results(request: EvaluationRequest, table: list[dict], rows: list[dict], settings: EvaluationSettings,
                   models: list[tuple[str, LoadedModel]]) -> None:
    write_json(request.output / "results.json", table)
    write_csv(request.output / "results.csv", table)
    if request.plot:
        from ..application.plots import curves_plot  # checked up front: matplotlib is there

        size = models[0][1].preprocessing.input_size
        subject = f"{', '.join(model_id for model_id, _ in models)} on {request.dataset}"
        order = {entry["method"]: index for index, entry in enumerate(table)}
        curves_plot(sorted(rows, key=lambda row: order[row["method"]]), request.output / CURVES_FILE,
                    curve_fractions((size, size), settings.spec), subject)
