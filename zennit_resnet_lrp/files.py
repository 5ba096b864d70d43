"""Files out, whole or not at all: every writer goes through a temporary file and a rename."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Callable, Sequence


def write_atomic(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through a temporary file and rename, so a file is either complete or absent."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_json(path: Path, data) -> None:
    text = (json.dumps(data, indent=2) + "\n").encode()
    write_atomic(path, lambda handle: handle.write(text))


def write_csv(path: Path, rows: Sequence[dict], fields: Sequence[str] | None = None) -> None:
    """Rows of dicts as CSV, columns ``fields`` (the first row's keys by default)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, list(fields if fields is not None else (rows[0] if rows else [])))
    writer.writeheader()
    writer.writerows(rows)
    data = text.getvalue().encode()
    write_atomic(path, lambda handle: handle.write(data))
