"""``resnet-lrp evaluate``: Insertion, Deletion and ID for several methods, resumable, under torchrun too."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import torch
import torch.distributed as dist

from zennit_resnet_lrp.data import DATASETS, DatasetError, subsample
from zennit_resnet_lrp.evaluate import (
    EvaluationSettings, evaluate, format_markdown, plot_curves, read_rows, summarize,
)
from zennit_resnet_lrp.files import write_csv, write_json
from zennit_resnet_lrp.methods import METHODS
from zennit_resnet_lrp.metrics import BASELINES, CurveSpec

from .options import build_model, model_options

DEFAULT_METHODS = "flows_skip,zennit_epsilon_plus_flat,lrp_epsilon_plain,gradient,integrated_gradients,random"


@click.command()
@model_options(several_weights=True)
@click.option("--dataset", type=click.Choice(sorted(DATASETS)), default="digits", show_default=True,
              help="imagenet (val, torchvision or class-folder layout), cub (test split), folder (ImageFolder), "
                   "digits (the demo's shipped digits).")
@click.option("--dataset-root", type=click.Path(file_okay=False), default=None)
@click.option("--methods", "method_list", default=DEFAULT_METHODS, show_default=True,
              help=f"Comma-separated; any of: {', '.join(METHODS)}, or 'all'.")
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
def evaluate_command(model, weights, num_classes, device, resize, crop, mean, std, method, skip_connection_prop_type,
                     batch_size, dataset, dataset_root, method_list, per_class, limit, seed, step, points,
                     patch_size, baseline, strict, heat_quantization, hq_level, explain_target, images_per_step,
                     plot, output):
    """Insertion / Deletion / ID of several methods; per-image scores are written as they come and a rerun
    resumes. Under `torchrun --nproc_per_node N` the images are sharded over the processes."""
    names = list(METHODS) if method_list == "all" else [n.strip() for n in method_list.split(",") if n.strip()]
    for extra in (method, skip_connection_prop_type):
        if extra and extra not in names:
            names.append(extra)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise click.BadParameter(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}",
                                 param_hint="--methods")
    if step is not None and points is not None:
        raise click.UsageError("give --step or --points, not both")
    if dataset != "digits" and dataset_root is None:
        raise click.UsageError(f"--dataset {dataset} needs --dataset-root")
    try:
        samples, _ = DATASETS[dataset](dataset_root)
    except DatasetError as error:
        raise click.BadParameter(str(error), param_hint="--dataset-root") from None
    samples = subsample(samples, per_class, limit, seed)

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    weight_list = list(weights) or [None]
    models = []
    for index, item in enumerate(weight_list):
        loaded = build_model(model, item, num_classes, device, resize, crop, mean, std)
        model_id = model if len(weight_list) == 1 else f"{model}[{index}]:{Path(str(item)).name}"
        models.append((model_id, loaded))
    if step is None and points is None:
        step = 500 if (models[0][1].preprocessing.crop or 224) >= 112 else None
        points = None if step else 28
    spec = CurveSpec(step=step, points=points, patch_size=patch_size, baseline=baseline, strict=strict)
    settings = EvaluationSettings(names, spec, batch_size=max(batch_size, 1), images_per_step=images_per_step,
                                  heat_quantization=hq_level if heat_quantization else None, explain=explain_target)
    output.mkdir(parents=True, exist_ok=True)
    shard = len(samples[rank::world]) * len(models)
    if rank == 0:
        click.echo(f"{len(samples)} image(s) x {len(names)} method(s) x {len(models)} model(s)"
                   f"{f' over {world} processes' if world > 1 else ''} -> {output}", err=True)
    if rank == 0:
        with click.progressbar(length=shard, label="evaluating", file=sys.stderr) as bar:
            _, failures = evaluate(models, samples, settings, output, rank, world, progress=bar.update)
    else:
        _, failures = evaluate(models, samples, settings, output, rank, world)
    if world > 1:
        dist.barrier()
    if rank == 0:
        rows = [row for row in read_rows(output) if row["method"] in names]
        table = summarize(rows, names)
        click.echo(format_markdown(table))
        write_json(output / "results.json", table)
        write_csv(output / "results.csv", table)
        if plot:
            try:
                plot_curves(rows, output / "curves.png")
            except ImportError:
                raise click.ClickException("--plot needs matplotlib: pip install 'zennit-resnet-lrp[plot]'") from None
    if world > 1:
        dist.destroy_process_group()
    if failures:
        for path, reason in failures:
            click.echo(f"error: {reason}", err=True)
        sys.exit(1)
