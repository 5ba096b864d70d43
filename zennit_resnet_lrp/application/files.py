"""Files out, whole or not at all: every writer goes through a temporary file and a rename; output paths are
checked before any work starts.

One policy for every output, folder or file: missing folders are made when writing (an output folder, and the folder
of an output file alike), so the check up front only refuses what cannot be made or written: a path through a file,
a file where a folder is wanted or the other way round, a folder that is not writable."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence


class OutputError(ValueError):
    """An output path that cannot be written."""


def check_output_folder(path: str | os.PathLike, files: Sequence[str] = ()) -> Path:
    """Raise :py:class:`OutputError` unless files can be written into ``path`` (made later if missing): no part of
    it is a file, the nearest folder that exists is writable, and none of the ``files`` (names in it that the run
    will write) is a folder. Creates nothing."""
    path = _check_writable(Path(path), Path(path))
    for name in files:
        check_output_file(path / name)
    return path


def check_output_file(path: str | os.PathLike) -> Path:
    """Raise :py:class:`OutputError` unless the file ``path`` can be written: it is not a folder, and its folder
    exists or can be made (:py:func:`write_atomic` makes it). Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write to {path}: it is a folder; give a file name")
    return _check_writable(path, path.parent)


def _check_writable(path: Path, folder: Path) -> Path:
    for existing in (folder, *folder.parents):
        if not existing.exists():
            continue
        if not existing.is_dir():
            raise OutputError(f"cannot write to {path}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write to {path}: {existing} is not writable")
        _probe(existing, path)
        break
    return path


def _probe(folder: Path, path: Path) -> None:
    """Make and remove a folder in ``folder``: permissions do not tell everything (``/proc`` says root may write,
    and takes nothing; a full or read-only disk)."""
    try:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".resnet-lrp-probe-"):
            pass
    except OSError as error:
        raise OutputError(f"cannot write to {path}: {folder} takes no new files ({error.strerror})") from None


def write_atomic(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through a temporary file and rename, so a file is either complete or absent; missing folders are
    made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
