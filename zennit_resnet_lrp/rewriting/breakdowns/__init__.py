"""Fused modules written out through explicit modules, one kind per file, so that the rules see inside them:
``nn.MultiheadAttention`` (:py:mod:`.multihead`), ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` (:py:mod:`.recurrent`),
torchvision's shifted window attention and Swin's patch merging (:py:mod:`.windows`).

A breakdown is a module (or another object) with three names: ``matches(module)``, whether it breaks ``module`` down;
``decompose(module, name)``, which gives the module children and an instance forward through them and returns the
children's names (None: left whole), all of which ``remove()`` of the canonizer takes away again; and ``NOTE``, what
the canonizer reports of such a module in ``untraced`` (None: nothing). Adding one is adding it to
:py:data:`BREAKDOWNS`, or passing ``ResidualCanonizer(breakdowns=(*BREAKDOWNS, mine))`` (docs/howto-breakdown.md).
"""
from __future__ import annotations

from types import ModuleType
from typing import Sequence

import torch

from . import multihead, recurrent, windows

BREAKDOWNS: tuple[ModuleType | object, ...] = (multihead, recurrent, windows, windows.PATCH_MERGING)


def breakdown_for(module: torch.nn.Module, breakdowns: Sequence = BREAKDOWNS) -> object | None:
    """The first of ``breakdowns`` (the package's by default) that writes ``module`` out, or None.

    Parameters
    ----------
    module : torch.nn.Module
    breakdowns : sequence
        Breakdowns in the order they are asked: modules (or any objects) with ``matches``, ``decompose`` and ``NOTE``.
    """
    return next((breakdown for breakdown in breakdowns if breakdown.matches(module)), None)
