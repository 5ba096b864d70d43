"""An output folder used before: the files an earlier ``explain`` run wrote there are taken away before a new run
writes its own (they are listed in its ``summary.json``), so that nothing in the folder looks like this run's that is
not; heatmap files of unknown origin are named, never touched."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SUMMARY = "summary.json"
# files of a run that its summary's records do not list
RUN_FILES = ("summary.json", "summary.csv", "overview.png", "comparison.png")
FILE_FIELDS = ("heatmap", "overlay", "relevance")
PATTERNS = ("*_heatmap.png", "*_overlay.png", "*_relevance.npy")


@dataclass
class EarlierRun:
    """What a folder held of earlier runs: how many files were removed, and the heatmap-like files left as they were
    (not listed by the earlier run's summary)."""

    removed: int = 0
    unknown: list[str] = field(default_factory=list)


def clear_earlier_run(folder: Path) -> EarlierRun:
    """Remove the files the earlier run in ``folder`` wrote (its summary's records, summaries, overview, comparison),
    and name the heatmap-like files there that no summary lists."""
    folder, found = Path(folder), EarlierRun()
    if not folder.is_dir():
        return found
    names = set(RUN_FILES) | _listed(folder / SUMMARY)
    for name in sorted(names):
        path = folder / name
        if path.is_file():
            path.unlink()
            found.removed += 1
    found.unknown = sorted(path.name for pattern in PATTERNS for path in folder.glob(pattern))
    return found


def _listed(summary: Path) -> set[str]:
    """The file names an earlier run's ``summary.json`` lists (only names: the files are in its folder)."""
    try:
        records = json.loads(summary.read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(records, list):
        return set()
    return {Path(record[key]).name for record in records if isinstance(record, dict)
            for key in FILE_FIELDS if isinstance(record.get(key), str)}
