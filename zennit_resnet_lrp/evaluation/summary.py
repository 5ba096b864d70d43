"""An evaluation's table: Insertion, Deletion and ID per method, as mean and std, and as markdown."""
from __future__ import annotations

import math
import statistics
from typing import Sequence


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def summarize(rows: Sequence[dict], methods: Sequence[str] | None = None) -> list[dict]:
    """Insertion, Deletion and ID per method as mean and std: over images for one model; over the models' means
    when there are several (the paper's five CUB models). Methods in the order ``methods`` gives, then every other
    method the rows hold: none is left out."""
    methods = list(dict.fromkeys([*(methods or ()), *(row["method"] for row in rows)]))
    table = []
    for method in methods:
        mine = [row for row in rows if row["method"] == method]
        model_ids = list(dict.fromkeys(row["model"] for row in mine))
        entry = {"method": method, "images": len({row["image"] for row in mine}), "models": len(model_ids)}
        for metric in ("insertion", "deletion", "id"):
            if len(model_ids) > 1:
                per_model = [statistics.fmean(r[metric] for r in mine if r["model"] == m) for m in model_ids]
                entry[metric], entry[f"{metric}_std"] = _mean_std(per_model)
            else:
                entry[metric], entry[f"{metric}_std"] = _mean_std([r[metric] for r in mine])
        table.append(entry)
    return table


def format_markdown(table: Sequence[dict]) -> str:
    """The table as markdown, values in %."""
    over = "models" if any(entry["models"] > 1 for entry in table) else "images"
    lines = ["| method | images | Insertion | Deletion | ID |", "| --- | --- | --- | --- | --- |"]
    for entry in table:
        cells = [f"{100 * entry[m]:.1f} +- {100 * entry[m + '_std']:.1f}" for m in ("insertion", "deletion", "id")]
        lines.append(f"| {entry['method']} | {entry['images']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nvalues in %, mean +- std over {over}"
