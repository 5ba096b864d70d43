"""``resnet-lrp``: explain, check, methods (and evaluate)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
import torch
from zennit.composites import COMPOSITES

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.attribution import STARTS, AttributionError
from zennit_resnet_lrp.conservation import check_conservation, figure5
from zennit_resnet_lrp.data import ImageError, find_images, open_image
from zennit_resnet_lrp.demo import demo_images
from zennit_resnet_lrp.explain import ExplainOptions, explain_images
from zennit_resnet_lrp.files import write_json
from zennit_resnet_lrp.heatmap import SIGNS
from zennit_resnet_lrp.models import DEMO_MODELS, ModelError, UnknownNameError

from .options import build_model, model_options, resolve_method


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
        except (UnknownNameError, AttributionError) as error:
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
    """List every available composite (ours and zennit's), one line each."""
    ours = lrp.OUR_COMPOSITES
    for name in [lrp.DEFAULT_METHOD, *[n for n in ours if n != lrp.DEFAULT_METHOD],
                 *sorted(set(COMPOSITES) - set(ours))]:
        paragraph = " ".join((COMPOSITES[name].__doc__ or "").strip().split("\n\n")[0].split())
        doc = paragraph.split(". ")[0].rstrip(".").replace("``", "")
        origin = "default" if name == lrp.DEFAULT_METHOD else "ours" if name in ours else "zennit"
        click.echo(f"{name:<28} {origin:<8} {doc}")


def _images(model: str, images: tuple[str, ...]) -> list[Path]:
    if images:
        try:
            return find_images(images)
        except ImageError as error:
            raise click.BadParameter(str(error), param_hint="IMAGES") from None
    if model in DEMO_MODELS:
        return demo_images()
    raise click.UsageError(f"give images to explain (files, folders or globs); only the demo models have defaults")


def _writable(output: Path) -> Path:
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".resnet-lrp-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise click.ClickException(f"cannot write to {output}: {error.strerror}; choose another --output") from None
    return output


@cli.command()
@click.argument("images", nargs=-1)
@model_options
@click.option("--label", "--target", "target", type=click.IntRange(min=0), default=None,
              help="Class to explain for every image (default: the top-k predicted classes).")
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--start", type=click.Choice(STARTS), default="softmax", show_default=True,
              help="Relevance put in at the target: probability (paper), logit or 1.")
@click.option("--heat-quantization", is_flag=True, help="Quantize each map into --hq-level levels (paper 4).")
@click.option("--hq-level", type=click.IntRange(min=2), default=8, show_default=True)
@click.option("--normalize", is_flag=True, help="Display normalisation with 2% outliers (paper 5).")
@click.option("--sign", type=click.Choice(SIGNS), default="positive", show_default=True)
@click.option("--cmap", default="bwr", show_default=True, help="zennit colour map (bwr, coldnhot, hot, gray, ...).")
@click.option("--overlay", is_flag=True, help="Also write the heatmap over the image.")
@click.option("--save-relevance", is_flag=True, help="Also write the raw relevance (C, H, W) as .npy.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("resnet-lrp-out"),
              show_default=True)
def explain(images, model, weights, num_classes, device, resize, crop, mean, std, method, skip_connection_prop_type,
            batch_size, target, top_k, start, heat_quantization, hq_level, normalize, sign, cmap, overlay,
            save_relevance, output):
    """Write heatmaps for IMAGES (files, folders, globs); with no model and no images, the shipped digits."""
    from zennit.image import CMAPS

    method = resolve_method(method, skip_connection_prop_type)
    if cmap not in CMAPS:
        raise click.BadParameter(f"unknown colour map {cmap!r}; choose one of {', '.join(CMAPS)}", param_hint="--cmap")
    loaded = build_model(model, weights, num_classes, device, resize, crop, mean, std)
    paths = _images(model, images)
    classes = _num_classes(loaded.model)
    if target is not None and classes is not None and target >= classes:
        raise click.BadParameter(f"{target} is out of range for {model} with {classes} classes (0..{classes - 1})",
                                 param_hint="--label")
    output = _writable(output)
    options = ExplainOptions(method, target, top_k, start, batch_size, cmap, overlay, save_relevance,
                             heat_quantization, hq_level, normalize, sign)
    device_name = next(loaded.model.parameters()).device
    click.echo(f"{model} ({loaded.weights or 'random weights'}) on {device_name}, method {method}: "
               f"{len(paths)} image(s) -> {output}", err=True)

    def report(item):
        click.echo(f"{item.image}: predicted {item.predicted_name} (p={item.probability:.4f}); "
                   f"target {item.target_name}: relevance sum {item.relevance_sum:.6g}, start {item.start:.6g}, "
                   f"conservation error {item.conservation_error:.2e}")

    results, failures = explain_images(loaded, paths, output, options, report)
    click.echo(f"wrote {len(results)} heatmap(s) and summary.json/summary.csv to {output}", err=True)
    if failures:
        for path, reason in failures:
            click.echo(f"error: {reason}", err=True)
        click.echo(f"error: {len(failures)} of {len(paths)} image(s) failed", err=True)
        sys.exit(1)


def _num_classes(model: torch.nn.Module) -> int | None:
    fc = getattr(model, "fc", None)
    return fc.out_features if isinstance(fc, torch.nn.Linear) else None


@cli.command()
@click.argument("images", nargs=-1)
@model_options
@click.option("--random", "random_count", type=click.IntRange(min=1), default=4, show_default=True,
              help="Without images: this many seeded random inputs.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--start", type=click.Choice(STARTS), default="softmax", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--tolerance", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="Largest acceptable |sum of input relevance - start| / start.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the report as JSON to this file ('-' for stdout, instead of the table).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Draw the paper's Fig. 5 to this image file (needs matplotlib).")
def check(images, model, weights, num_classes, device, resize, crop, mean, std, method, skip_connection_prop_type,
          batch_size, random_count, seed, start, dtype, tolerance, json_path, plot):
    """Verify conservation block by block; exit status 1 when the error exceeds --tolerance."""
    method = resolve_method(method, skip_connection_prop_type)
    loaded = build_model(model, weights, num_classes, device, resize, crop, mean, std)
    precision = getattr(torch, dtype)
    model_device = next(loaded.model.parameters()).device
    loaded.model.to(precision)
    prep = loaded.preprocessing
    if images:
        paths = _images(model, images)
        inputs = torch.stack([prep(open_image(path)) for path in paths])
        source = f"{len(paths)} image(s)"
    else:
        size = prep.crop or prep.resize or 224
        generator = torch.Generator().manual_seed(seed)
        inputs = torch.randn(random_count, prep.channels, size, size, generator=generator)
        source = f"{random_count} random input(s), seed {seed}"
    inputs = inputs.to(device=model_device, dtype=precision)
    report = check_conservation(loaded.model, inputs, method, start=start, tolerance=tolerance,
                                batch_size=batch_size)
    if json_path == "-":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"{model}, method {method}, {source}, {dtype}")
        click.echo(report.format_table())
        if json_path:
            write_json(Path(json_path), report.to_dict())
    if plot:
        try:
            figure5(report, plot)
        except ImportError:
            raise click.ClickException("--plot needs matplotlib: pip install 'zennit-resnet-lrp[plot]'") from None
    if not report.passed:
        sys.exit(1)



from .evaluate import evaluate_command  # noqa: E402

cli.add_command(evaluate_command, name="evaluate")


def main() -> None:
    cli(prog_name="resnet-lrp")


if __name__ == "__main__":
    main()
