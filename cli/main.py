"""``resnet-lrp``: explain, check, methods and evaluate."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
import torch

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.application.demo import DEMO_MODELS, demo_images
from zennit_resnet_lrp.application.explain import ExplainOptions, explain_images
from zennit_resnet_lrp.application.files import OutputError, check_output_file, check_output_folder, write_json
from zennit_resnet_lrp.application.heatmap import SIGNS
from zennit_resnet_lrp.application.images import ImageError, find_images, open_image
from zennit_resnet_lrp.application.models import ModelError, UnknownNameError
from zennit_resnet_lrp.evaluation.methods import METHODS, MethodError, get_method

from .evaluate import evaluate_command
from .options import RunOptions, run_options
from .progress import Progress


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
        except (UnknownNameError, lrp.AttributionError, MethodError, OutputError) as error:
            raise click.UsageError(_one_line(error), ctx) from None
        except (ModelError, ImageError) as error:
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
    """List every method: the composites (ours and zennit's; for explain, check and evaluate) and the baselines
    (evaluate only), one line each."""
    for method in METHODS.values():
        used_by = "all commands" if method.is_composite else "evaluate"
        click.echo(f"{method.name:<28} {method.kind:<9} {used_by:<13} {method.description}")


def _composite(run: RunOptions) -> str:
    return get_method(run.method or lrp.DEFAULT_METHOD, composites_only=True).name


def _images(model: str, images: tuple[str, ...]) -> list[Path]:
    if images:
        try:
            return find_images(images)
        except ImageError as error:
            raise click.BadParameter(str(error), param_hint="IMAGES") from None
    if model in DEMO_MODELS:
        return demo_images()
    raise click.UsageError("give images to explain (files, folders or globs); only the demo models have defaults")


@cli.command()
@click.argument("images", nargs=-1)
@run_options
@click.option("--label", "--target", "target", type=click.IntRange(min=0), default=None,
              help="Class to explain for every image (default: the top-k predicted classes).")
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--start-with", type=click.Choice(lrp.START_WITH), default="softmax", show_default=True,
              help="Relevance put in at the target: its probability (paper), its logit or 1.")
@click.option("--heat-quantization", is_flag=True, help="Quantize each map into --hq-level levels (paper 4).")
@click.option("--hq-level", type=click.IntRange(min=2), default=8, show_default=True)
@click.option("--normalize", is_flag=True, help="Display normalisation with 2% outliers (paper 5).")
@click.option("--sign", type=click.Choice(SIGNS), default="positive", show_default=True)
@click.option("--cmap", default="bwr", show_default=True, help="zennit colour map (bwr, coldnhot, hot, gray, ...).")
@click.option("--overlay", is_flag=True, help="Also write the heatmap over the image.")
@click.option("--save-relevance", is_flag=True, help="Also write the raw relevance (C, H, W) as .npy.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("resnet-lrp-out"),
              show_default=True)
def explain(images, run, target, top_k, start_with, heat_quantization, hq_level, normalize, sign, cmap, overlay,
            save_relevance, output):
    """Write heatmaps for IMAGES (files, folders, globs); with no model and no images, the shipped digits."""
    from zennit.image import CMAPS

    method = _composite(run)
    if cmap not in CMAPS:
        raise click.BadParameter(f"unknown colour map {cmap!r}; choose one of {', '.join(CMAPS)}", param_hint="--cmap")
    check_output_folder(output)
    loaded = run.load()
    paths = _images(run.model, images)
    options = ExplainOptions(method=method, target=target, top_k=top_k, start_with=start_with,
                             batch_size=run.batch_size, cmap=cmap, overlay=overlay, save_relevance=save_relevance,
                             heat_quantization=heat_quantization, hq_level=hq_level, normalize=normalize, sign=sign)
    device_name = next(loaded.model.parameters()).device
    click.echo(f"{run.model} ({loaded.weights or 'random weights'}) on {device_name}, method {method}: "
               f"{len(paths)} image(s) -> {output}", err=True)

    def report(item):
        click.echo(f"{item.image}: predicted {item.predicted_name} (p={item.probability:.4f}); "
                   f"target {item.target_name}: relevance sum {item.relevance_sum:.6g}, start {item.start:.6g}, "
                   f"conservation error {item.conservation_error:.2e}")
        progress.update()

    with Progress(len(paths) * (1 if target is not None else top_k), "explaining") as progress:
        results, failures = explain_images(loaded, paths, output, options, report)
    if results:
        click.echo(f"wrote {len(results)} heatmap(s) and summary.json/summary.csv to {output}", err=True)
    for path, reason in failures:
        click.echo(f"error: {reason}", err=True)
    if failures:
        click.echo(f"error: {len(failures)} of {len(paths)} image(s) failed", err=True)
        sys.exit(1)


@cli.command()
@click.argument("images", nargs=-1)
@run_options
@click.option("--random", "random_count", type=click.IntRange(min=1), default=4, show_default=True,
              help="Without images: this many seeded random inputs.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--start-with", type=click.Choice(lrp.START_WITH), default="softmax", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--tolerance", type=click.FloatRange(min=0), default=lrp.DEFAULT_TOLERANCE, show_default=True,
              help="Largest acceptable |sum of input relevance - start| / start.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the report as JSON to this file ('-' for stdout, instead of the table).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Draw the paper's Fig. 5 to this image file (needs matplotlib).")
def check(images, run, random_count, seed, start_with, dtype, tolerance, json_path, plot):
    """Verify conservation block by block; exit status 1 when the error exceeds --tolerance."""
    method = _composite(run)
    for path in (json_path, plot):
        if path and path != "-":
            check_output_file(path)
    loaded = run.load()
    precision = getattr(torch, dtype)
    model_device = next(loaded.model.parameters()).device
    loaded.model.to(precision)
    prep = loaded.preprocessing
    if images:
        paths = _images(run.model, images)
        with Progress(len(paths), "reading") as progress:
            inputs = []
            for path in paths:
                inputs.append(prep(open_image(path)))
                progress.update()
        inputs = torch.stack(inputs)
        source = f"{len(paths)} image(s)"
    else:
        size = prep.crop or prep.resize or 224
        generator = torch.Generator().manual_seed(seed)
        inputs = torch.randn(random_count, prep.channels, size, size, generator=generator)
        source = f"{random_count} random input(s), seed {seed}"
    inputs = inputs.to(device=model_device, dtype=precision)
    with Progress(inputs.shape[0], "checking") as progress:
        report = lrp.check_conservation(loaded.model, inputs, method, start_with=start_with, tolerance=tolerance,
                                        batch_size=run.batch_size, progress=progress.update)
    if json_path == "-":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"{run.model}, method {method}, {source}, {dtype}")
        click.echo(report.format_table())
        if json_path:
            write_json(Path(json_path), report.to_dict())
    if plot:
        try:
            from zennit_resnet_lrp.application.plots import conservation_plot

            conservation_plot(report, plot)
        except ImportError:
            raise click.ClickException("--plot needs matplotlib: pip install 'zennit-resnet-lrp[plot]'") from None
    if not report.passed:
        sys.exit(1)


cli.add_command(evaluate_command, name="evaluate")


def main() -> None:
    cli(prog_name="resnet-lrp")


if __name__ == "__main__":
    main()
