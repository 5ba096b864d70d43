"""``resnet-lrp evaluate``: Insertion, Deletion and ID for several methods, resumable, under torchrun too."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from zennit_resnet_lrp.evaluation.datasets import DATASETS
from zennit_resnet_lrp.evaluation.metrics import BASELINES
from zennit_resnet_lrp.evaluation.protocol import OURS, PROTOCOLS
from zennit_resnet_lrp.evaluation.run import DEFAULT_METHODS
from zennit_resnet_lrp.evaluation.session import EvaluationRequest, run_evaluation

from .options import HEAT_QUANTIZATION_OPTION, HQ_LEVEL_OPTION, run_options
from .progress import Progress


@click.command()
@run_options(several_weights=True)
@click.option("--dataset", type=click.Choice(sorted(DATASETS)), default="digits", show_default=True,
              help="imagenet (val, torchvision or class-folder layout), cub (test split), folder (ImageFolder), "
                   "digits (the demo's shipped digits).")
@click.option("--dataset-root", type=click.Path(file_okay=False), default=None)
@click.option("--methods", "method_list", default=",".join(DEFAULT_METHODS), show_default=True,
              help="Comma-separated names `resnet-lrp methods` lists, or 'all'; --method adds one.")
@click.option("--protocol", type=click.Choice(sorted(PROTOCOLS)), default=OURS, show_default=True,
              help="The metric's conventions: ours, or the reference implementation's (first channel of per-channel "
                   "maps, heat quantization, seed-42 shuffled sampling, zero-padded patches); docs/evaluation.md.")
@click.option("--per-class", type=click.IntRange(min=1), default=None, help="Images per class.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many images.")
@click.option("--step", type=click.IntRange(min=1), default=None, help="Pixels per curve point (paper: 500).")
@click.option("--points", type=click.IntRange(min=1), default=None, help="Or: curve points (small images).")
@click.option("--patch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--baseline", type=click.Choice(BASELINES), default="black", show_default=True)
@click.option("--strict", is_flag=True, help="Exactly --step pixels per point, ties broken by position.")
@HEAT_QUANTIZATION_OPTION
@HQ_LEVEL_OPTION
@click.option("--explain", "explain_target", type=click.Choice(["predicted", "label"]), default="predicted",
              show_default=True, help="Explain the top-1 class (the reference) or the label.")
@click.option("--images-per-step", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--plot", is_flag=True, help="Also draw the mean curves of every method in the table to curves.png "
                                           "(needs matplotlib).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              default=Path("resnet-lrp-eval"), show_default=True)
def evaluate_command(run, *, dataset, dataset_root, method_list, protocol, per_class, limit, step, points, patch_size,
                     baseline, strict, heat_quantization, hq_level, explain_target, images_per_step, plot, output):
    """Insertion / Deletion / ID of several methods; per-image scores are written as they come and a rerun with the
    same options resumes or adds methods (another configuration is refused; the table holds every method the folder
    has scores of). One run per folder at a time. Under `torchrun --nproc_per_node N` the images are sharded over the
    processes."""
    if step is not None and points is not None:
        raise click.UsageError("give --step or --points, not both")
    if dataset != "digits" and dataset_root is None:
        raise click.UsageError(f"--dataset {dataset} needs --dataset-root")
    methods = [name.strip() for name in method_list.split(",")] if method_list.strip() != "all" else "all"
    if run.method and methods != "all" and run.method not in methods:
        methods.append(run.method)
    request = EvaluationRequest(
        model=run.spec(), weights=tuple(run.weights) or (None,), dataset=dataset, dataset_root=dataset_root,
        per_class=per_class, limit=limit, seed=run.seed, methods=methods, protocol=protocol,
        curve={"step": step, "points": points, "patch_size": patch_size, "baseline": baseline, "strict": strict},
        heat_quantization=heat_quantization, hq_level=hq_level, explain=explain_target, batch_size=run.batch_size,
        images_per_step=images_per_step, output=output, plot=plot,
    )

    run.use_threads()

    def announce(text: str) -> None:  # the models are loaded by then
        run.warn_if_random()
        click.echo(text, err=True)

    outcome = run_evaluation(request, _EvaluationProgress, announce)
    if outcome.table:
        click.echo(outcome.markdown)
    if outcome.earlier:  # the table shows every method the folder holds; say which this run did not score
        click.echo(f"note: the table also holds {', '.join(outcome.earlier)}: scored into {output} by an earlier run "
                   "with the same configuration", err=True)
    # a method named that does not apply to the model is an error; with --methods all, a note
    for model_id, method, reason in outcome.inapplicable:
        click.echo(f"{'note' if methods == 'all' else 'error'}: {method} on {model_id}: {reason}", err=True)
    for path, reason in outcome.failures:
        click.echo(f"error: {reason}", err=True)
    if outcome.failures or outcome.inapplicable and methods != "all":
        sys.exit(1)


class _EvaluationProgress(Progress):
    """A progress line whose context value is its update function."""

    def __init__(self, total: int) -> None:
        super().__init__(total, "evaluating")

    def __enter__(self):
        super().__enter__()
        return self.update
