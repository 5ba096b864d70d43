"""Explain image files: attribution in batches, heatmap and relevance files, and a summary, written as they come."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..attribution import AttributionError, attribute
from ..composites import DEFAULT_METHOD
from .files import write_atomic, write_csv, write_json
from .heatmap import montage, normalize, overlay, quantize, render
from .images import ImageError, open_image
from .models import LoadedModel


OVERVIEW_LIMIT = 40  # (image, heatmap) pairs in overview.png


@dataclass
class ExplainOptions:
    """What to explain and what to write; the command line's ``explain`` flags."""

    method: str = DEFAULT_METHOD
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


@dataclass
class Explained:
    """One explained (image, target) pair: what the summary holds."""

    image: str
    target: int
    target_name: str
    predicted: int
    predicted_name: str
    probability: float
    start: float
    relevance_sum: float
    conservation_error: float
    heatmap: str
    overlay: str | None = None
    relevance: str | None = None


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems.append(path.stem if count == 0 else f"{path.stem}-{count}")
    return stems


def explain_images(
    loaded: LoadedModel,
    paths: Sequence[Path],
    output: Path,
    options: ExplainOptions,
    on_result: Callable[[Explained], None] | None = None,
) -> tuple[list[Explained], list[tuple[Path, str]]]:
    """Explain every image in ``paths`` and write its files into ``output``.

    Images that cannot be read are skipped and returned as failures; every finished image's files are on disk
    before the next batch starts, and ``summary.json`` / ``summary.csv`` are rewritten after every batch. The
    folder is made when the first file is written: a run in which every image fails leaves nothing behind.

    Returns
    -------
    (explained, failures)
    """
    device = next(loaded.model.parameters()).device
    dtype = next(loaded.model.parameters()).dtype
    results: list[Explained] = []
    failures: list[tuple[Path, str]] = []
    stems = dict(zip(paths, _unique_stems(paths)))
    tiles: list[Image.Image] = []  # image and heatmap side by side, for overview.png
    for batch in _batches(paths, options.batch_size):
        images, tensors = [], []
        for path in batch:
            try:
                cropped = loaded.preprocessing.image(open_image(path))  # resized and cropped once
                images.append((path, cropped))
                tensors.append(loaded.preprocessing.normalize(loaded.preprocessing.pixels(cropped, cropped=True)))
            except ImageError as error:
                failures.append((path, str(error)))
        if not tensors:
            continue
        inputs = torch.stack(tensors).to(device=device, dtype=dtype)
        # the first attribution (the given label, or the top-1 class) also yields the ranking for the top-k
        first = attribute(loaded.model, inputs, options.method, options.target, options.start_with, tolerance=None)
        ranked = first.output.argsort(1, descending=True)
        if options.target is None and options.top_k > ranked.shape[1]:
            raise AttributionError(f"top-k {options.top_k} is more than the model's {ranked.shape[1]} classes")
        count = 1 if options.target is not None else options.top_k
        for k in range(count):
            result = first if k == 0 else attribute(loaded.model, inputs, options.method, ranked[:, k],
                                                    options.start_with, tolerance=None)
            maps = result.heatmap
            if options.heat_quantization:
                maps = quantize(maps, options.hq_level)
            shown = normalize(maps, options.sign) if options.normalize else maps
            probabilities = result.probabilities
            for index, (path, cropped) in enumerate(images):
                record, heatmap_image = _write(loaded, stems[path], path, cropped, output, options, result, shown,
                                               probabilities, index)
                results.append(record)
                if len(tiles) < 2 * OVERVIEW_LIMIT:
                    tiles += [cropped, heatmap_image]
                if on_result is not None:
                    on_result(record)
        write_summary(output, results)
    if tiles:
        sheet = montage(tiles, columns=10)
        write_atomic(output / "overview.png", lambda handle: sheet.save(handle, format="PNG"))
    return results, failures


def _write(loaded, stem, path, cropped, output, options, result, shown, probabilities, index):
    """Write one (image, target)'s files; return its summary record and the heatmap image."""
    target = int(result.target[index])
    predicted = int(probabilities[index].argmax())
    base = f"{stem}_{target}"
    heatmap_image = render(shown[index], options.cmap, normalized=options.normalize)
    files = {"heatmap": output / f"{base}_heatmap.png"}
    write_atomic(files["heatmap"], lambda handle: heatmap_image.save(handle, format="PNG"))
    if options.overlay:
        files["overlay"] = output / f"{base}_overlay.png"
        blended = overlay(heatmap_image, cropped)
        write_atomic(files["overlay"], lambda handle: blended.save(handle, format="PNG"))
    if options.save_relevance:
        files["relevance"] = output / f"{base}_relevance.npy"
        array = result.relevance[index].detach().cpu().numpy()
        write_atomic(files["relevance"], lambda handle: np.save(handle, array))
    return Explained(
        image=str(path), target=target, target_name=loaded.category(target), predicted=predicted,
        predicted_name=loaded.category(predicted), probability=float(probabilities[index, predicted]),
        start=float(result.start[index]), relevance_sum=float(result.total[index]),
        conservation_error=float(result.conservation_error[index]),
        **{key: str(value) for key, value in files.items()},
    ), heatmap_image


def write_summary(output: Path, results: Sequence[Explained]) -> None:
    rows = [asdict(result) for result in results]
    write_json(output / "summary.json", rows)
    write_csv(output / "summary.csv", rows, list(Explained.__dataclass_fields__))


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for begin in range(0, len(items), size):
        yield items[begin:begin + size]
