"""An evaluation's results folder: it belongs to one configuration (recorded in ``run.json``, a run with another
one is refused, naming what differs), one run writes to it at a time (a lock), score rows are appended as they come
(one JSON line each, resumable) and read back each once."""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..application.files import write_json

SCORE_FILES = "scores*.jsonl"
CONFIGURATION_FILE = "run.json"
LOCK_FILE = ".lock"


class ResultsFolderError(ValueError):
    """A results folder that holds another configuration's results, or that another run is writing to."""


def fingerprint(configuration: dict) -> str:
    """A short hash of a configuration (a JSON-able dict)."""
    text = json.dumps(configuration, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content (weights files: a checkpoint replaced under the same name is another one)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key old -> new`` for every leaf that differs between two configurations."""
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key} {json.dumps(a)} -> {json.dumps(b)}")
    return found


def claim(folder: Path, configuration: dict) -> None:
    """Make ``folder`` this configuration's, or check that it is: raise :py:class:`ResultsFolderError` when it holds
    results of another configuration (or of an unrecorded one). Writes ``run.json`` when the folder is new."""
    path = folder / CONFIGURATION_FILE
    recorded = None
    if path.exists():
        try:
            recorded = json.loads(path.read_text())["configuration"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ResultsFolderError(f"{path} is not a readable run record; use another --output folder") from None
    elif any(folder.glob(SCORE_FILES)):
        raise ResultsFolderError(f"{folder} holds scores without a record of their configuration; use another "
                                 "--output folder")
    if recorded is not None:
        changed = differences(recorded, configuration)
        if changed:
            raise ResultsFolderError(
                f"{folder} holds results of another configuration (differs in: {'; '.join(changed[:4])}"
                f"{f'; and {len(changed) - 4} more' if len(changed) > 4 else ''}); use another --output folder "
                "or remove it")
        return
    write_json(path, {"fingerprint": fingerprint(configuration), "configuration": configuration})


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock while the body runs (the folder is made if missing); raise
    :py:class:`ResultsFolderError` at once when another process holds it. The lock is the operating system's
    (``flock``): it goes with the process, also when the process is killed. A folder this made that ends without a
    score holds nothing afterwards and is removed; a refused run touches nothing (the files are the holder's)."""
    new = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    handle = _lock(folder)
    try:
        yield
    finally:
        try:
            if new:
                _remove_unscored(folder)
        finally:
            if handle is not None:
                handle.close()


def _lock(folder: Path):
    """The open lock file, locked without waiting; None where there is no ``flock`` (Windows: runs not guarded)."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ResultsFolderError(f"another evaluation is writing to {folder}; wait for it to finish or use another "
                                 "--output folder") from None
    return handle


def _remove_unscored(folder: Path) -> None:
    """Remove what a run left in a folder it made when no score came of it (its record and lock file, then the
    folder if empty)."""
    if not folder.is_dir() or any(folder.glob(SCORE_FILES)):
        return
    for name in (CONFIGURATION_FILE, LOCK_FILE):
        (folder / name).unlink(missing_ok=True)
    if not any(folder.iterdir()):
        folder.rmdir()


def read_rows(folder: Path) -> list[dict]:
    """Every finished score row in ``folder`` (all shards), each (model, image, method) once; a line cut short by an
    interruption is ignored."""
    rows: dict[tuple, dict] = {}
    for path in sorted(folder.glob(SCORE_FILES)):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.setdefault((row["model"], row["image"], row["method"]), row)
    return list(rows.values())


class RowWriter:
    """Appends score rows to ``path``, a line each, flushed as they come; the file is made with the first row, so a
    run that scores nothing leaves nothing behind. A last line left unfinished by an interruption is cut first."""

    def __init__(self, path: Path) -> None:
        self.path, self.handle = path, None
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                path.write_bytes(data[:data.rfind(b"\n") + 1])

    def write(self, row: dict) -> None:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a")
        self.handle.write(json.dumps(row) + "\n")

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
