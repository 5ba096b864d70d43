"""That the installed torch and torchvision fit together, checked before anything else is imported: a torchvision
built for another torch fails deep inside its own import ("operator torchvision::nms does not exist"), which says
neither what is wrong nor how to mend it."""
from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

COMMAND = "resnet-lrp"


def mismatch_message(error: BaseException) -> str:
    """One line naming both versions, what torchvision asks for, and the fix."""
    import torch

    torchvision = _version("torchvision")
    wanted = [req for req in _requires("torchvision") if req.split()[0].split("(")[0].strip() == "torch"]
    asks = f" (it asks for {wanted[0]})" if wanted else ""
    base = torch.__version__.split("+")[0]
    return (f"torchvision {torchvision} does not fit torch {torch.__version__}{asks}: {' '.join(str(error).split())}; "
            f"install a matching pair from one index: pip install --force-reinstall torch=={base} torchvision "
            "(add --index-url https://download.pytorch.org/whl/cpu for the CPU-only build)")


def check_torchvision() -> None:
    """Import torchvision; where it does not fit the installed torch, raise ImportError with one line (for the
    command line: exit with that line, no traceback)."""
    try:
        import torchvision  # noqa: F401
    except RuntimeError as error:  # its compiled operators were built for another torch
        message = mismatch_message(error)
        if Path(sys.argv[0]).name == COMMAND:  # the command line's import: one line, exit status 1
            raise SystemExit(f"error: {message}") from None
        raise ImportError(message) from None


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def _requires(name: str) -> list[str]:
    try:
        return importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        return []
