"""``resnet-lrp evaluate``: Insertion, Deletion and ID for several methods, resumable, under torchrun too."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from zennit_resnet_lrp.application.files import check_output_folder, write_csv, write_json
from zennit_resnet_lrp.evaluation.datasets import DATASETS, DatasetError, subsample
from zennit_resnet_lrp.evaluation.metrics import BASELINES
from zennit_resnet_lrp.evaluation.run import (
    DEFAULT_METHODS, EvaluationSettings, default_curve_spec, evaluate, format_markdown, method_names,
    read_rows, sharded, summarize,
)

from .options import run_options
from .progress import Progress


@click.command()
@run_options(several_weights=True)
@click.option("--dataset", type=click.Choice(sorted(DATASETS)), default="digits", show_default=True,
              help="imagenet (val, torchvision or class-folder layout), cub (test split), folder (ImageFolder), "
                   "digits (the demo's shipped digits).")
@click.option("--dataset-root", type=click.Path(file_okay=False), default=None)
@click.option("--methods", "method_list", default=",".join(DEFAULT_METHODS), show_default=True,
              help="Comma-separated names `resnet-lrp methods` lists, or 'all'; --method adds one.")
@click.option("--per-class", type=click.IntRange(min=1), default=None, help="Images per class (seeded).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--step", type=click.IntRange(min=1), default=None, help="Pixels per curve point (paper: 500).")
@click.option("--points", type=click.IntRange(min=1), default=None, help="Or: curve points (small images).")
@click.option("--patch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--baseline", type=click.Choice(BASELINES), default="black", show_default=True)
@click.option("--strict", is_flag=True, help="Exactly --step pixels per point, ties broken by position.")
@click.option("--heat-quantization", is_flag=True, help="Quantize maps first (paper section 4).")
@click.option("--hq-level", type=click.IntRange(min=2), default=8, show_default=True)
@click.option("--explain", "explain_target", type=click.Choice(["predicted", "label"]), default="predicted",
              show_default=True, help="Explain the top-1 class (the reference) or the label.")
@click.option("--images-per-step", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--plot", is_flag=True, help="Also draw the mean curves to curves.png (needs matplotlib).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              default=Path("resnet-lrp-eval"), show_default=True)
def evaluate_command(run, dataset, dataset_root, method_list, per_class, limit, seed, step, points, patch_size,
                     baseline, strict, heat_quantization, hq_level, explain_target, images_per_step, plot, output):
    """Insertion / Deletion / ID of several methods; per-image scores are written as they come and a rerun
    resumes. Under `torchrun --nproc_per_node N` the images are sharded over the processes."""
    names = method_names(method_list, run.method)
    if step is not None and points is not None:
        raise click.UsageError("give --step or --points, not both")
    if dataset != "digits" and dataset_root is None:
        raise click.UsageError(f"--dataset {dataset} needs --dataset-root")
    check_output_folder(output)
    try:
        samples, _ = DATASETS[dataset](dataset_root)
    except DatasetError as error:
        raise click.BadParameter(str(error), param_hint="--dataset-root") from None
    samples = subsample(samples, per_class, limit, seed)

    with sharded(run.device) as shard:
        weight_list = list(run.weights) or [None]
        models = []
        for index, item in enumerate(weight_list):
            loaded = dataclasses.replace(run, device=shard.device).load(item)
            model_id = run.model if len(weight_list) == 1 else f"{run.model}[{index}]:{Path(str(item)).name}"
            models.append((model_id, loaded))
        prep = models[0][1].preprocessing
        spec = default_curve_spec(prep.crop or prep.resize or 224, step=step, points=points, patch_size=patch_size,
                                  baseline=baseline, strict=strict)
        settings = EvaluationSettings(names, spec, batch_size=run.batch_size, images_per_step=images_per_step,
                                      heat_quantization=hq_level if heat_quantization else None,
                                      explain=explain_target)
        shard_size = len(samples[shard.rank::shard.world]) * len(models)
        if shard.leader:
            click.echo(f"{len(samples)} image(s) x {len(names)} method(s) x {len(models)} model(s)"
                       f"{f' over {shard.world} processes' if shard.world > 1 else ''} -> {output}", err=True)
            with Progress(shard_size, "evaluating") as progress:
                _, failures = evaluate(models, samples, settings, output, shard.rank, shard.world,
                                       progress=progress.update)
        else:
            _, failures = evaluate(models, samples, settings, output, shard.rank, shard.world)
        shard.barrier()
        rows = [row for row in read_rows(output) if row["method"] in names]
        if shard.leader and rows:
            table = summarize(rows, names)
            click.echo(format_markdown(table))
            write_json(output / "results.json", table)
            write_csv(output / "results.csv", table)
            if plot:
                try:
                    from zennit_resnet_lrp.application.plots import curves_plot

                    curves_plot(rows, output / "curves.png")
                except ImportError:
                    raise click.ClickException(
                        "--plot needs matplotlib: pip install 'zennit-resnet-lrp[plot]'"
                    ) from None
    for path, reason in failures:
        click.echo(f"error: {reason}", err=True)
    if failures:
        sys.exit(1)

