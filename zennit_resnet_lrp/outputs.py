"""The logits among what a model returns: a tensor as it is; by convention the ``logits`` of a Hugging Face
``ModelOutput`` (or of any mapping or object that has them), torchvision's segmentation models' ``"out"``, the first
of a tuple or list; or what the caller names (``output=``): a key, an index or a callable."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Union

import torch

OutputChoice = Union[str, int, Callable[[object], torch.Tensor], None]
CONVENTIONAL_KEYS = ("logits", "out")


class OutputError(ValueError):
    """A model output in which the logits cannot be found, or a choice that does not fit it."""


def logits_of(output, choice: OutputChoice = None) -> torch.Tensor:
    """The tensor of ``output`` that holds the logits: chosen by ``choice`` (a key or attribute name, an index, or a
    function of the output), else by convention. Raises :py:class:`OutputError` with what the output holds."""
    if choice is None:
        found = _conventional(output)
    elif callable(choice):
        found = choice(output)
    elif isinstance(choice, str):
        found = output[choice] if isinstance(output, Mapping) and choice in output else getattr(output, choice, None)
    elif isinstance(choice, int) and isinstance(output, (tuple, list)) and -len(output) <= choice < len(output):
        found = output[choice]
    else:
        found = None
    if not isinstance(found, torch.Tensor):
        how = "by convention (logits, out, the first of a tuple)" if choice is None else f"as {choice!r}"
        raise OutputError(f"found no logits tensor in the model's output {_describe(output)} {how}; name it with "
                          "output= (a key, an index or a function of the output)")
    return found


def _conventional(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        return next((output[key] for key in CONVENTIONAL_KEYS if key in output), None)
    if isinstance(output, (tuple, list)):
        return output[0] if output else None
    return getattr(output, "logits", None)


def _describe(output) -> str:
    """What an output is, in a few words: its type and keys or length."""
    if isinstance(output, Mapping):
        return f"({type(output).__name__} with keys {', '.join(map(str, list(output)[:6]))})"
    if isinstance(output, (tuple, list)):
        return f"({type(output).__name__} of {len(output)})"
    return f"({type(output).__name__})"
