"""Explain image files: attribution in batches with one method or several, heatmaps over each photo at its own size
(or at the model input's), relevance files, a summary written as it comes, a labelled overview and, for several
methods, a comparison grid; and what a user must know besides (relevance not conserved, images changed on reading,
images the demo model was not made for)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..attribution import AttributionError, attribute, locate_violation
from ..composites import DEFAULT_METHOD
from ..registry import make_composite
from ..conservation import DEFAULT_TOLERANCE, Violation, violations
from ..outputs import OutputError, logits_of
from ..results import Attribution
from ..rewriting import TraceCache
from ..snapshot import evaluating
from ..targets import Region
from .demo import DEMO_MODELS, looks_like_a_digit
from .earlier_run import EarlierRun, clear_earlier_run
from .files import write_atomic, write_csv, write_json
from .heatmap import hatch, keep_sign, limit_of, normalize, outline, overlay, quantize, render, to_photo
from .images import DEFAULT_MAX_PIXELS, ImageError, read_image
from .methods import MethodContext, get_method, method_names
from .models import TASKS, LoadedModel
from .pictures import comparison, legend_for, overview

OVERVIEW_LIMIT = 40  # images in overview.png and comparison.png


@dataclass
class ExplainOptions:
    """What to explain and what to write; the command line's ``explain`` flags. ``task`` "segmentation" explains,
    per image, the pixels the model assigns to the label ``target`` (a :py:class:`~zennit_resnet_lrp.Region`; the
    label is required, composites only, one target)."""

    methods: Sequence[str] = (DEFAULT_METHOD,)
    target: int | None = None
    top_k: int = 1
    start_with: str = "softmax"
    batch_size: int = 16
    cmap: str = "bwr"
    overlay: bool = False
    save_relevance: bool = False
    heat_quantization: bool = False
    hq_level: int = 8
    normalize: bool = False
    sign: str = "positive"
    photo_size: bool = True
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # images decoding to more pixels fail (None: no limit)
    tolerance: float = DEFAULT_TOLERANCE
    task: str = "classification"


@dataclass
class Explained:
    """One explained (image, method, target): what the summary holds. Baselines have no relevance sum; ``absorbed`` is
    the relevance the model's own tokens took (a vision transformer's class token), None where it has none. For a
    segmentation, ``target`` is the label, ``region_pixels`` the number of pixels the model assigns to it (the
    explained region), ``predicted`` the label too and the probabilities the label's mean over the region."""

    image: str
    method: str
    target: int
    target_name: str
    target_probability: float
    predicted: int
    predicted_name: str
    probability: float
    start: float | None
    relevance_sum: float | None
    absorbed: float | None
    conservation_error: float | None
    heatmap: str
    overlay: str | None = None
    relevance: str | None = None
    task: str = "classification"
    region_pixels: int | None = None


@dataclass
class Loss:
    """A method that did not conserve relevance on some images: how many, by how much at most, and why and where
    for the worst image of the first batch it happened in."""

    method: str
    images: int
    error: float
    violation: Violation | None = None

    @property
    def kinds(self) -> list[str]:
        """The types of the modules no rule covers and of those where relevance changed."""
        return [] if self.violation is None else self.violation.kinds


@dataclass
class ExplainOutcome:
    """Everything ``explain_images`` did: results, images that failed, notes on images changed when read, losses of
    relevance, and how many images the demo model was not made for."""

    results: list[Explained] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    # segmentation: images where the model assigns no pixel to the label (nothing to explain there), and why
    without_region: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[tuple[Path, str]] = field(default_factory=list)
    losses: dict[str, Loss] = field(default_factory=dict)
    unlike_digits: int = 0
    uniform: int = 0  # explained images on which the model's output is (near) uniform: nothing to explain
    earlier: EarlierRun = field(default_factory=EarlierRun)  # what an earlier run had left in the folder


def class_label(index: int, name: str) -> str:
    """A class as a user reads it: its index and, where the weights carry one, its name (``324 cabbage
    butterfly``)."""
    return str(index) if name == str(index) else f"{index} {name}"


def class_phrase(index: int, name: str) -> str:
    """A class in a sentence: ``class 3``, or with its name where the weights carry one (``class 10 (background)``)."""
    return f"class {index}" if name == str(index) else f"class {index} ({name})"


def label_regions(model: torch.nn.Module, inputs: torch.Tensor, label: int,
                  batch_size: int | None = None) -> torch.Tensor:
    """The pixels a segmentation model assigns to ``label`` (its top class there), per input: boolean (N, H, W) at
    the output's resolution, from forward passes in eval mode of at most ``batch_size`` inputs (the model left as
    it was). The logits are taken from the output as :py:func:`~zennit_resnet_lrp.outputs.logits_of` finds them
    (torchvision's ``"out"``).

    Raises :py:class:`~zennit_resnet_lrp.AttributionError` (one line) where the output is not (N, K, H, W), naming
    its shape, or ``label`` is not one of its K classes.
    """
    size = batch_size or inputs.shape[0]
    masks = []
    with torch.no_grad(), evaluating(model):
        for begin in range(0, inputs.shape[0], size):
            try:
                output = logits_of(model(inputs[begin:begin + size]))
            except OutputError as error:
                raise AttributionError(str(error)) from None
            _check_dense(output, label)
            masks.append(Region(label).pixels(output))  # its top class there
    return torch.cat(masks)


def _check_dense(output: torch.Tensor, label: int) -> None:
    if output.ndim != 4:
        raise AttributionError(f"segmentation needs a model whose output is (N, K, H, W), a score per class and "
                               f"pixel; this model's output has shape {tuple(output.shape)} (explain it as a "
                               "classifier)")
    if not 0 <= label < output.shape[1]:
        raise AttributionError(f"label {label} is out of range for the model's {output.shape[1]} classes "
                               f"(0..{output.shape[1] - 1})")


def near_uniform(probabilities: torch.Tensor) -> bool:
    """Whether a probability vector is (near) uniform: its top class at most 1.5 times as likely as a uniform guess
    (a model with random weights and batch norms often outputs 1/K for every class)."""
    return bool(probabilities.max() <= 1.5 / probabilities.numel())


@dataclass
class _Image:
    """One image of a batch: its path, output file stem, the photo as read and the model's input."""

    path: Path
    stem: str
    photo: Image.Image
    cropped: Image.Image
    tensor: torch.Tensor


@dataclass
class _Run:
    """A run's state: the loaded model, options, output folder, a composite per composite method (made once, so each
    module structure is traced once) and the pictures collected so far."""

    loaded: LoadedModel
    options: ExplainOptions
    output: Path
    outcome: ExplainOutcome
    composites: dict = field(default_factory=dict)
    cache: TraceCache = field(default_factory=TraceCache)
    tiles: dict = field(default_factory=dict)  # (image, target) -> (photo, caption, {method: (heatmap, caption)})


def explain_images(
    loaded: LoadedModel,
    paths: Sequence[Path],
    output: Path,
    options: ExplainOptions,
    on_result: Callable[[Explained], None] | None = None,
) -> ExplainOutcome:
    """Explain every image in ``paths`` with every method of ``options`` and write the files into ``output``.

    Unknown method names raise before any work. Images that cannot be read are skipped and returned as failures;
    every finished image's files are on disk before the next batch starts, and ``summary.json`` / ``summary.csv``
    are rewritten after every batch. The folder is made when the first file is written: a run in which every
    image fails leaves nothing behind. The files an earlier run left in ``output`` are removed first
    (``ExplainOutcome.earlier`` says how many, and names heatmap files of unknown origin).
    """
    names = method_names(list(options.methods))
    _check_task(options, names)
    run = _Run(loaded, options, output, ExplainOutcome(earlier=clear_earlier_run(output)))
    stems = dict(zip(paths, _unique_stems(paths)))
    explain_batch = _explain_regions if options.task == "segmentation" else _explain_classes
    for batch in _batches(paths, options.batch_size):
        images = _read(run, batch, stems)
        if not images:
            continue
        inputs = torch.stack([image.tensor for image in images]).to(**_placement(loaded.model))
        for done, image, index in explain_batch(run, names, images, inputs):
            record = _write_image(run, done, image, index)
            run.outcome.results.append(record)
            if on_result is not None:
                on_result(record)
        if run.outcome.results:  # a run in which every image fails leaves nothing behind
            _write_summary(output, run.outcome.results)
    _write_pictures(run, names)
    return run.outcome


def _check_task(options: ExplainOptions, names: list[str]) -> None:
    """A task the options can do, before any work: a segmentation needs its label and composites, one target."""
    if options.task not in TASKS:
        raise AttributionError(f"unknown task {options.task!r}; choose one of {', '.join(TASKS)}")
    if options.task != "segmentation":
        return
    if options.target is None:
        raise AttributionError("a segmentation is explained for one label: give it (--label N)")
    baselines = [name for name in names if not get_method(name).is_composite]
    if baselines:
        raise AttributionError(f"a segmentation is explained with composites only, not the baseline(s) "
                               f"{', '.join(baselines)}")


def _explain_classes(run: _Run, names: list[str], images: list[_Image],
                     inputs: torch.Tensor) -> Iterator[tuple["_Done", _Image, int]]:
    """Each method's attribution of the batch's classes, rank by rank: the given label, else the top-k."""
    options = run.options
    ranked = _ranked(run, inputs, names[0])
    for k in range(1 if options.target is not None else options.top_k):
        for name in names:
            targets = ranked[:, k] if ranked is not None else None
            done = _attribute(run, name, inputs, targets, k)
            ranked = _ranking(run, done.output) if ranked is None else ranked
            for index, image in enumerate(images):
                yield done, image, index


def _explain_regions(run: _Run, names: list[str], images: list[_Image],
                     inputs: torch.Tensor) -> Iterator[tuple["_Done", _Image, int]]:
    """Each method's attribution of the pixels the model assigns to the label, per image; an image with none is
    recorded as such (:py:attr:`ExplainOutcome.without_region`), and the others go on."""
    label = run.options.target
    masks = label_regions(run.loaded.model, inputs, label, run.options.batch_size)
    keep = [index for index in range(len(images)) if bool(masks[index].any())]
    phrase = class_phrase(label, run.loaded.category(label))
    run.outcome.without_region += [(image.path, f"the model assigns no pixel to {phrase} in {image.path}")
                                   for index, image in enumerate(images) if index not in keep]
    if not keep:
        return
    images, region = [images[index] for index in keep], Region(label, masks[keep])
    for name in names:
        done = _attribute(run, name, inputs[keep], region, 0)
        done.regions = region.mask
        for index, image in enumerate(images):
            yield done, image, index


def _placement(model: torch.nn.Module) -> dict:
    parameter = next(model.parameters())
    return {"device": parameter.device, "dtype": parameter.dtype}


def _read(run: _Run, batch: Sequence[Path], stems: dict) -> list[_Image]:
    """The batch's images read and preprocessed, large photos decoded reduced (heatmaps at the photo's size are drawn
    over that reduced photo); an image failing, for whatever reason, is its own failure and the others go on."""
    prep, images = run.loaded.preprocessing, []
    for path in batch:
        try:
            photo, notes = read_image(path, prep.decode_side, run.options.max_pixels)
            cropped = prep.image(photo)  # resized and cropped once
        except ImageError as error:
            run.outcome.failures.append((path, str(error)))
            continue
        except Exception as error:  # e.g. MemoryError preprocessing it: this image's failure, not the run's
            run.outcome.failures.append((path, f"{path}: {type(error).__name__}: {error}"))
            continue
        run.outcome.notes += [(path, note) for note in notes]
        if run.loaded.name in DEMO_MODELS and not looks_like_a_digit(photo, DEMO_MODELS[run.loaded.name].
                                                                        preprocessing.crop):
            run.outcome.unlike_digits += 1
        images.append(_Image(path, stems[path], photo, cropped, prep.normalize(prep.pixels(cropped, cropped=True))))
    return images


def _ranked(run: _Run, inputs: torch.Tensor, first: str) -> torch.Tensor | None:
    """The classes to explain per rank (N, K): the given label; else the classes by predicted probability, from a
    forward pass, or None when the first method is a composite (its attribution of the top class gives them)."""
    if run.options.target is not None:
        return torch.full((inputs.shape[0], 1), run.options.target, dtype=torch.long, device=inputs.device)
    if get_method(first).is_composite:
        return None
    with torch.no_grad():
        return _ranking(run, run.loaded.model.eval()(inputs))


def _ranking(run: _Run, output: torch.Tensor) -> torch.Tensor:
    if run.options.target is None and run.options.top_k > output.shape[1]:
        raise AttributionError(f"top-k {run.options.top_k} is more than the model's {output.shape[1]} classes")
    return output.argsort(1, descending=True)


@dataclass
class _Done:
    """One method's attribution of one batch: the maps as shown, the targets, the model's output and, for a
    composite, the attribution itself."""

    method: str
    k: int
    shown: torch.Tensor
    targets: torch.Tensor
    output: torch.Tensor
    result: Attribution | None = None
    regions: torch.Tensor | None = None  # a segmentation's explained pixels (N, H, W) at the output's resolution


def _attribute(run: _Run, name: str, inputs: torch.Tensor, targets: torch.Tensor | Region | None, k: int) -> _Done:
    """One method on one batch (``targets`` None: each image's top class, for a composite; a Region: its pixels)."""
    method, options = get_method(name), run.options
    bounds = run.loaded.preprocessing.bounds(inputs.dtype, inputs.device)
    result = None
    if method.is_composite:
        if name not in run.composites:
            run.composites[name] = make_composite(name, bounds, run.cache)
        result = attribute(run.loaded.model, inputs, run.composites[name], targets, options.start_with, tolerance=None)
        _note_losses(run, name, inputs, result)
        maps, output, targets = result.heatmap, result.output, result.target
    else:
        maps = method.run(run.loaded.model, inputs, targets, MethodContext(bounds, None, run.cache)).detach()
        maps = maps.sum(1) if maps.ndim == 4 else maps
        with torch.no_grad():
            output = run.loaded.model(inputs)
    if options.heat_quantization:
        maps = quantize(maps, options.hq_level)
    # the same sign policy for every method, one or several, normalised or not
    shown = normalize(maps, options.sign) if options.normalize else keep_sign(maps, options.sign)
    return _Done(name, k, shown, targets, output, result)


def _note_losses(run: _Run, name: str, inputs: torch.Tensor, result) -> None:
    """Count the images whose relevance is not conserved beyond the tolerance, and find where for the worst."""
    composite, tolerance = run.composites[name], run.options.tolerance
    bad = violations(result, tolerance)
    if not bool(bad.any()):
        return
    loss = run.outcome.losses.setdefault(name, Loss(name, 0, 0.0))
    loss.images += int(bad.sum())
    loss.error = max(loss.error, float(result.conservation_error[bad].max()))
    if loss.violation is None:  # why and where, once per run: it may re-run the worst sample watching every module
        loss.violation = locate_violation(run.loaded.model, inputs, result, composite, run.options.start_with,
                                          tolerance=tolerance)


def _write_image(run: _Run, done: _Done, image: _Image, index: int) -> Explained:
    """One (image, method, target)'s heatmap (and overlay, relevance) files; the summary record."""
    options, loaded, result = run.options, run.loaded, done.result
    region = done.regions[index] if done.regions is not None else None
    target, target_probability, predicted, probability = _scores(run, done, index, region)
    several = len(options.methods) > 1
    base = f"{image.stem}_{target}_{done.method}" if several else f"{image.stem}_{target}"
    heatmap_image, covered = _heatmap_image(run, image, done.shown[index])
    border = None if region is None else _region_on(run, image, region, done.shown[index].shape)
    heatmap_image = heatmap_image if border is None else outline(heatmap_image, border)
    files = {"heatmap": run.output / f"{base}_heatmap.png"}
    write_atomic(files["heatmap"], lambda handle: heatmap_image.save(handle, format="PNG"))
    if options.overlay:
        files["overlay"] = run.output / f"{base}_overlay.png"
        blended = overlay(heatmap_image, image.photo if options.photo_size else image.cropped)
        blended = hatch(blended, covered) if covered is not None and not bool(covered.all()) else blended
        blended = blended if border is None else outline(blended, border)  # the blend dims the heatmap's outline
        write_atomic(files["overlay"], lambda handle: blended.save(handle, format="PNG"))
    if options.save_relevance and result is not None:
        files["relevance"] = run.output / f"{base}_relevance.npy"
        array = result.relevance[index].detach().cpu().numpy()
        write_atomic(files["relevance"], lambda handle: np.save(handle, array))
    record = Explained(
        image=str(image.path), method=done.method, target=target, target_name=loaded.category(target),
        target_probability=target_probability, predicted=predicted,
        predicted_name=loaded.category(predicted), probability=probability,
        start=None if result is None else float(result.start[index]),
        relevance_sum=None if result is None else float(result.total[index]),
        absorbed=None if result is None or result.absorbed is None else float(result.absorbed[index]),
        conservation_error=None if result is None else float(result.conservation_error[index]),
        task=options.task, region_pixels=None if region is None else int(region.sum()),
        **{key: str(value) for key, value in files.items()},
    )
    _collect_tile(run, image, record, heatmap_image, done.k)
    return record


def _scores(run: _Run, done: _Done, index: int, region: torch.Tensor | None) -> tuple[int, float, int, float]:
    """``(target, its probability, predicted class, its probability)`` of one image; counts a (near) uniform output.
    For a region: the label, its mean probability over the region, twice (the region is where it is predicted)."""
    target = int(done.targets[index])
    probabilities = done.output[index].softmax(0)
    if region is not None:
        mean = float(probabilities[target][region].mean())
        return target, mean, target, mean
    predicted = int(probabilities.argmax())
    first = done.method == run.options.methods[0] and done.k == 0
    run.outcome.uniform += int(near_uniform(probabilities) and first)
    return target, float(probabilities[target]), predicted, float(probabilities[predicted])


def _region_on(run: _Run, image: _Image, region: torch.Tensor, input_size: torch.Size) -> torch.Tensor:
    """A region of the output (H, W) where the heatmap shows it: at the model input's size, or laid over the photo
    (the part the crop cut off outside it)."""
    mask = region[None, None].float()
    if tuple(mask.shape[-2:]) != tuple(input_size):  # an output coarser than the input
        mask = torch.nn.functional.interpolate(mask, size=tuple(input_size), mode="nearest")
    if not run.options.photo_size:
        return mask[0, 0].cpu() > 0.5
    values, _ = to_photo(mask[0, 0].cpu(), run.loaded.preprocessing.input_region(image.photo.size), image.photo.size)
    return values > 0.5


def _heatmap_image(run: _Run, image: _Image, shown: torch.Tensor) -> tuple[Image.Image, torch.Tensor | None]:
    """The rendered heatmap, over the photo at its size (the part the model did not see hatched) or at the model
    input's size; and the mask of what the model saw (None at the input's size)."""
    options = run.options
    if not options.photo_size:
        return render(shown, options.cmap, normalized=options.normalize), None
    region = run.loaded.preprocessing.input_region(image.photo.size)
    values, covered = to_photo(shown, region, image.photo.size)
    rendered = render(values, options.cmap, normalized=options.normalize, limit=limit_of(shown))
    return (rendered if bool(covered.all()) else hatch(rendered, covered)), covered


def _collect_tile(run: _Run, image: _Image, record: Explained, heatmap: Image.Image, k: int) -> None:
    key = (str(image.path), k)
    if key not in run.tiles and len(run.tiles) >= OVERVIEW_LIMIT:
        return
    caption = [image.path.name, f"{class_label(record.target, record.target_name)}",
               f"p={record.target_probability:.3f}"]
    if record.region_pixels is not None:  # why these pixels are the label
        caption[1:] = [f"why {record.region_pixels} px are {class_label(record.target, record.target_name)}",
                       f"mean p={record.target_probability:.3f}"]
    _, _, heatmaps = run.tiles.setdefault(key, (image.photo, caption, {}))
    heatmaps[record.method] = (heatmap, _relevance_caption(record))


def _relevance_caption(record: Explained) -> list[str]:
    """The relevance sum under a heatmap, with what the model's tokens absorbed where they did."""
    if record.relevance_sum is None:
        return []
    if record.absorbed is None:
        return [f"R={record.relevance_sum:.3g}"]
    return [f"R={record.relevance_sum:.3g}", f"+ tokens {record.absorbed:.3g}"]


def _write_pictures(run: _Run, names: list[str]) -> None:
    if not run.tiles:
        return
    first = names[0]
    entries = [(photo, caption + heatmaps[first][1], heatmaps[first][0])
               for photo, caption, heatmaps in run.tiles.values() if first in heatmaps]
    legend = legend_for(run.options.cmap, run.options.normalize, run.options.sign)
    sheet = overview([(photo, heatmap, caption) for photo, caption, heatmap in entries], legend=legend)
    write_atomic(run.output / "overview.png", lambda handle: sheet.save(handle, format="PNG"))
    if len(names) > 1:
        rows = [(photo, caption, [heatmaps.get(name) for name in names])  # None: a blank cell, columns kept
                for photo, caption, heatmaps in run.tiles.values()]
        grid = comparison(rows, names, legend=legend)
        write_atomic(run.output / "comparison.png", lambda handle: grid.save(handle, format="PNG"))


def _write_summary(output: Path, results: Sequence[Explained]) -> None:
    rows = [asdict(result) for result in results]
    write_json(output / "summary.json", rows)
    write_csv(output / "summary.csv", rows, list(Explained.__dataclass_fields__))


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems.append(path.stem if count == 0 else f"{path.stem}-{count}")
    return stems


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for begin in range(0, len(items), size):
        yield items[begin:begin + size]
