"""``resnet-lrp``: explain, check, methods and evaluate."""
from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import click
import torch

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.application.check import check_inputs, check_regions
from zennit_resnet_lrp.application.demo import CANVASES, DEMO_MODELS, demo_canvases, demo_images
from zennit_resnet_lrp.application.explain import ExplainOptions, class_label, class_phrase, explain_images
from zennit_resnet_lrp.application.files import OutputError, check_output_file, check_output_folder, write_json
from zennit_resnet_lrp.application.heatmap import SIGNS
from zennit_resnet_lrp.application.images import ImageError, find_images
from zennit_resnet_lrp.application.methods import METHODS, MethodError, get_method, method_names
from zennit_resnet_lrp.application.models import ModelError, UnknownNameError, model_task
from zennit_resnet_lrp.application.plots import PlotError
from zennit_resnet_lrp.evaluation.datasets import DatasetError
from zennit_resnet_lrp.evaluation.store import ResultsFolderError

from .evaluate import evaluate_command
from .options import (HEAT_QUANTIZATION_OPTION, HQ_LEVEL_OPTION, MAX_PIXELS_OPTION, START_WITH_OPTION, TASK_OPTION,
                      RunOptions, resolve_task, run_options)
from .progress import Progress

COVERAGE_NOTES = "docs/coverage.md"


class ResnetLrpGroup(click.Group):
    """Turns every error into one line on stderr: exit 2 for usage errors, 1 otherwise, no traceback
    (set RESNET_LRP_DEBUG=1 to see it)."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as error:
            click.echo(f"error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except BrokenPipeError:  # output piped into head & co.: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError):
            raise
        except (UnknownNameError, lrp.AttributionError, MethodError, OutputError, ResultsFolderError) as error:
            raise click.UsageError(_one_line(error), ctx) from None
        except DatasetError as error:
            raise click.BadParameter(_one_line(error), ctx, param_hint="--dataset-root") from None
        except (ModelError, ImageError, PlotError) as error:
            raise click.ClickException(_one_line(error)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; the files written so far are complete") from None
        except Exception as error:
            if os.environ.get("RESNET_LRP_DEBUG"):
                raise
            raise click.ClickException(f"{type(error).__name__}: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split("\n"))


@click.group(cls=ResnetLrpGroup)
@click.version_option(lrp.__version__, prog_name="resnet-lrp")
def cli():
    """LRP with conservation for ResNets (Relevance Splitting, ECCV 2024), on zennit."""


@cli.command()
def methods():
    """List every method: the composites (ours and zennit's; for every command) and the baselines (explain --methods
    and evaluate), one line each, with whose implementation runs."""
    rows = [(method.name, method.kind, method.source, "all" if method.is_composite else "explain, evaluate",
             method.description) for method in METHODS.values()]
    click.echo(_table(("method", "kind", "implementation", "commands", "description"), rows,
                      shutil.get_terminal_size((120, 24)).columns))


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], width: int) -> str:
    """Columns as wide as their longest entry, the last one wrapped to what is left of ``width`` (at least 40
    characters), a rule under the header."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header) - 1)]
    indent = sum(widths) + 2 * len(widths)
    wrap = max(40, width - indent - 1)
    lines = []
    for row in [header, tuple("-" * len(text) for text in header), *rows]:
        cells = "".join(f"{text:<{size}}  " for text, size in zip(row, widths))
        description = textwrap.wrap(row[-1], wrap) or [""]
        lines.append(cells + description[0])
        lines += [" " * indent + more for more in description[1:]]
    return "\n".join(lines)


def _images(model: str, images: tuple[str, ...]) -> list[Path]:
    if images:
        try:
            return find_images(images)
        except ImageError as error:
            raise click.BadParameter(str(error), param_hint="IMAGES") from None
    if model in DEMO_MODELS and model_task(model) == "segmentation":
        return _demo_canvases()
    if model in DEMO_MODELS:
        return demo_images()
    raise click.UsageError("give images to explain (files, folders or globs); only the demo models have defaults")


def _demo_canvases() -> list[Path]:
    """The segmentation demo's held-out canvases (their ``*_labels.png`` masks left out)."""
    canvases = demo_canvases()
    if not canvases:
        raise click.UsageError(f"the segmentation demo's canvases are missing from {CANVASES}; give images")
    return canvases


def _explain_methods(run: RunOptions, methods: str | None) -> list[str]:
    if methods is not None and run.method is not None:
        raise click.UsageError("give --method or --methods, not both")
    return method_names(methods if methods is not None else [run.method or lrp.DEFAULT_METHOD])


@cli.command()
@click.argument("images", nargs=-1)
@run_options
@click.option("--methods", "method_list", default=None,
              help="Several methods side by side (composites and the baselines `resnet-lrp methods` lists, "
                   "comma-separated): heatmaps of each and comparison.png, images by methods.")
@click.option("--label", "--target", "target", type=click.IntRange(min=0), default=None,
              help="Class to explain for every image (default: the top-k predicted classes); with --task "
                   "segmentation, the class whose pixels are explained (required).")
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True)
@TASK_OPTION
@START_WITH_OPTION
@HEAT_QUANTIZATION_OPTION
@HQ_LEVEL_OPTION
@click.option("--normalize", is_flag=True, help="Display normalisation with 2% outliers (paper 5).")
@click.option("--sign", type=click.Choice(SIGNS), default="positive", show_default=True)
@click.option("--cmap", default="bwr", show_default=True, help="zennit colour map (bwr, coldnhot, hot, gray, ...).")
@click.option("--overlay", is_flag=True, help="Also write the heatmap over the image.")
@click.option("--size", type=click.Choice(["photo", "input"]), default="photo", show_default=True,
              help="Heatmaps over each photo at its own size (what the crop cut off hatched), or at the model "
                   "input's size.")
@click.option("--save-relevance", is_flag=True, help="Also write the raw relevance (C, H, W) as .npy.")
@click.option("--strict", is_flag=True, help="Exit with status 1 when relevance was not conserved.")
@MAX_PIXELS_OPTION
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("resnet-lrp-out"),
              show_default=True)
def explain(images, run, *, method_list, target, top_k, task, start_with, heat_quantization, hq_level, normalize, sign,
            cmap, overlay, size, save_relevance, strict, max_pixels, output):
    """Write heatmaps for IMAGES (files, folders, globs); with no model and no images, the shipped digits (with
    --task segmentation: the shipped canvases of digits, why the pixels of class --label are that class)."""
    from zennit.image import CMAPS

    run, task = resolve_task(run, task, target)
    if task == "segmentation" and top_k != 1:
        raise click.UsageError("--top-k is for classification; a segmentation explains the pixels of its --label")
    names = _explain_methods(run, method_list)
    if cmap not in CMAPS:
        raise click.BadParameter(f"unknown colour map {cmap!r}; choose one of {', '.join(CMAPS)}", param_hint="--cmap")
    check_output_folder(output)
    run.use_threads()
    loaded = run.load()
    paths = _images(run.model, images)
    options = ExplainOptions(methods=names, target=target, top_k=top_k, start_with=start_with,
                             batch_size=run.batch_size, cmap=cmap, overlay=overlay, save_relevance=save_relevance,
                             heat_quantization=bool(heat_quantization), hq_level=hq_level, normalize=normalize,
                             sign=sign, photo_size=size == "photo", max_pixels=max_pixels, task=task)
    device_name = next(loaded.model.parameters()).device
    click.echo(f"{run.model} ({loaded.weights or 'random weights'}) on {device_name}, method {', '.join(names)}: "
               f"{len(paths)} image(s) -> {output}", err=True)

    def report(item):
        method = f" [{item.method}]" if len(names) > 1 else ""
        if item.region_pixels is not None:
            click.echo(f"{item.image}{method}: why these {item.region_pixels} pixel(s) are "
                       f"{class_label(item.target, item.target_name)} (mean p={item.target_probability:.4f})"
                       f"{_relevance_line(item)}")
        else:
            click.echo(f"{item.image}{method}: predicted {class_label(item.predicted, item.predicted_name)} "
                       f"(p={item.probability:.4f}); target {class_label(item.target, item.target_name)}"
                       f"{_relevance_line(item)}")
        progress.update()

    count = len(paths) * (1 if target is not None else top_k) * len(names)
    with Progress(count, "explaining") as progress:
        outcome = explain_images(loaded, paths, output, options, report)
    _explain_warnings(run, outcome, len(paths))
    if outcome.results:
        click.echo(f"wrote {len(outcome.results)} heatmap(s) and summary.json/summary.csv to {output}", err=True)
    for _, reason in outcome.without_region:
        click.echo(f"note: {reason}: nothing to explain there", err=True)
    if outcome.without_region and not outcome.results and not outcome.failures:
        click.echo(f"error: the model assigns no pixel to {class_phrase(target, loaded.category(target))} in any of "
                   f"the {len(paths)} image(s)", err=True)
        sys.exit(1)
    for path, reason in outcome.failures:
        click.echo(f"error: {reason}", err=True)
    if outcome.failures:
        click.echo(f"error: {len(outcome.failures)} of {len(paths)} image(s) failed", err=True)
        sys.exit(1)
    if strict and outcome.losses:
        click.echo(f"error: relevance was not conserved (--strict: tolerance {lrp.DEFAULT_TOLERANCE:.0e})", err=True)
        sys.exit(1)


def _relevance_line(item) -> str:
    """The relevance of one explained image, as an equation that adds up: the input's sum, what the model's own
    tokens absorbed, the start, and the error against the one tolerance."""
    if item.relevance_sum is None:
        return ""
    kept = f"relevance sum {item.relevance_sum:.6g}"
    if item.absorbed is not None:
        kept += f" + tokens {item.absorbed:.6g} = {item.relevance_sum + item.absorbed:.6g}"
    verdict = ("" if item.conservation_error <= lrp.DEFAULT_TOLERANCE
               else f" > tolerance {lrp.DEFAULT_TOLERANCE:.0e}: not conserved")
    return f": {kept}; start {item.start:.6g}; conservation error {item.conservation_error:.2e}{verdict}"


def _explain_warnings(run: RunOptions, outcome, images: int) -> None:
    """What a user must know about the run: images changed on reading, images the demo model was not made for,
    relevance not conserved (one line each)."""
    earlier = outcome.earlier
    if earlier.removed:
        click.echo(f"note: removed the {earlier.removed} file(s) an earlier run had written to this output folder",
                   err=True)
    if earlier.unknown:
        more = ", ..." if len(earlier.unknown) > 3 else ""
        click.echo(f"warning: {len(earlier.unknown)} heatmap file(s) in the output folder are not from this run "
                   f"(left as they were): {', '.join(earlier.unknown[:3])}{more}", err=True)
    for path, note in outcome.notes:
        click.echo(f"note: {path}: {note}", err=True)
    if outcome.unlike_digits:
        side = DEMO_MODELS[run.model].preprocessing.crop
        trained_on = "digits" if DEMO_MODELS[run.model].task == "classification" else "canvases of digits"
        click.echo(f"warning: {outcome.unlike_digits} of {images} image(s) are in colour or larger than {2 * side} "
                   f"pixels: {run.model} was trained on {side}x{side} {trained_on}; pass --model (e.g. resnet50 "
                   "--weights IMAGENET1K_V1)", err=True)
    if outcome.uniform:
        click.echo(f"warning: the model's output is (near) uniform on {outcome.uniform} of {images} image(s) (no class "
                   "above 1.5 times a uniform guess): the heatmaps explain next to nothing; are its weights random?",
                   err=True)
    for loss in outcome.losses.values():
        click.echo(f"warning: {loss.method} did not conserve relevance on {loss.images} of {images} image(s) (error "
                   f"up to {loss.error:.2g} > tolerance {lrp.DEFAULT_TOLERANCE:.0e}){_loss_cause(loss)}", err=True)


def _loss_cause(loss) -> str:
    """Why relevance was not conserved, as far as known: by design (the paper's variants), or the modules no rule
    covers, custom autograd functions and where relevance changed (pointing to the coverage notes)."""
    violation = loss.violation
    if violation is None:
        return ""
    if violation.by_design:
        return f": {violation.explanation()}; {lrp.DEFAULT_METHOD} conserves"
    explanation = violation.explanation()
    return f": {explanation}; see {COVERAGE_NOTES}" if explanation else f"; see {COVERAGE_NOTES}"


@cli.command()
@click.argument("images", nargs=-1)
@run_options
@click.option("--random", "random_count", type=click.IntRange(min=1), default=4, show_default=True,
              help="Without images: this many seeded random inputs.")
@TASK_OPTION
@click.option("--label", type=click.IntRange(min=0), default=None,
              help="With --task segmentation: the class whose pixels are explained, per input (required).")
@START_WITH_OPTION
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--tolerance", type=click.FloatRange(min=0), default=lrp.DEFAULT_TOLERANCE, show_default=True,
              help="Largest acceptable |sum of input relevance - start| / start.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the report as JSON to this file ('-' for stdout, instead of the table).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Draw the paper's Fig. 5 to this image file (needs matplotlib).")
@MAX_PIXELS_OPTION
def check(images, run, *, random_count, task, label, start_with, dtype, tolerance, json_path, plot, max_pixels):
    """Verify conservation block by block; exit status 1 when the error exceeds --tolerance (with --task
    segmentation: for the pixels the model assigns to --label, per input)."""
    run, task = resolve_task(run, task, label)
    if task == "classification" and label is not None:
        raise click.UsageError("--label is for --task segmentation; a classification check explains each input's top "
                               "class")
    method = get_method(run.method or lrp.DEFAULT_METHOD, composites_only=True).name
    if json_path and json_path != "-":
        check_output_file(json_path)
    if plot:  # matplotlib there, a format it writes, a place it can write (its folder made): before any work
        from zennit_resnet_lrp.application.plots import check_plot_file

        check_plot_file(plot)
    run.use_threads()
    loaded = run.load()
    paths = _images(run.model, images) if images else []
    seed = 0 if run.seed is None else run.seed
    with Progress(len(paths), "reading") as progress:
        inputs, source = check_inputs(loaded, paths, random_count, seed, getattr(torch, dtype), progress.update,
                                      max_pixels)
    if task == "segmentation":
        _check_regions(run, loaded, inputs, paths, source, label, method, start_with=start_with, dtype=dtype,
                       tolerance=tolerance, json_path=json_path, plot=plot)
        return
    with Progress(inputs.shape[0], "checking") as progress:
        report = lrp.check_conservation(loaded.model, inputs, method, start_with=start_with, tolerance=tolerance,
                                        batch_size=run.batch_size, progress=progress.update)
    _check_output(report, f"{run.model}, method {method}, {source}, {dtype}", {}, json_path, plot,
                  f"{run.model}, {method}")
    if not report.passed:
        sys.exit(1)


def _check_output(report, heading: str, extra: dict, json_path: str | None, plot: str | None, subject: str) -> None:
    """The check's report: as JSON (with ``extra``) on stdout or in a file, else as a table; and its plot."""
    if json_path == "-":
        click.echo(json.dumps({**report.to_dict(), **extra}, indent=2))
    else:
        click.echo(heading)
        click.echo(report.format_table())
        if json_path:
            write_json(Path(json_path), {**report.to_dict(), **extra})
    if plot:
        from zennit_resnet_lrp.application.plots import conservation_plot

        conservation_plot(report, plot, subject=subject)


def _check_regions(run: RunOptions, loaded, inputs, paths, source: str, label: int, method: str, *, start_with: str,
                   dtype: str, tolerance: float, json_path: str | None, plot: str | None) -> None:
    """``check --task segmentation``: conservation of "why are these pixels the label" per input; every input where
    the model assigns no pixel to the label named in one line; exit status 1 for those or a failed check."""
    phrase = class_phrase(label, loaded.category(label))
    names = [str(path) for path in paths] or [f"random input {index}" for index in range(inputs.shape[0])]
    with Progress(inputs.shape[0], "checking") as progress:
        checked = check_regions(loaded.model, inputs, label, method, start_with=start_with, tolerance=tolerance,
                                batch_size=run.batch_size, progress=progress.update)
    if checked.report is not None:
        sizes = ", ".join(str(checked.sizes[index]) for index in checked.checked)
        extra = {"task": "segmentation", "label": label, "inputs": [names[index] for index in checked.checked],
                 "region_pixels": [checked.sizes[index] for index in checked.checked]}
        _check_output(checked.report, f"{run.model}, method {method}, {source}, {dtype}; the pixels assigned to "
                      f"{phrase}: {sizes} per input", extra, json_path, plot, f"{run.model}, {method}, {phrase}")
    for index in checked.empty:
        click.echo(f"note: the model assigns no pixel to {phrase} in {names[index]}: nothing to check there", err=True)
    if checked.report is None:
        click.echo(f"error: the model assigns no pixel to {phrase} in any of the {len(names)} input(s)", err=True)
        sys.exit(1)
    if not checked.report.passed:
        sys.exit(1)


cli.add_command(evaluate_command, name="evaluate")


def main() -> None:
    cli(prog_name="resnet-lrp")


if __name__ == "__main__":
    main()
