"""What a routing decision reads and returns, the same for both paths: the :py:class:`Facts` about an operation's
arguments that a path supplies (the traced path from its graph, the run-time path from the tensors at hand), and the
:py:class:`Route` an operation takes."""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

VARIABLE = object()  # an argument computed at run time from something other than the input's size


class Route(NamedTuple):
    """How one operation is routed: through a child named after ``base``, made by ``make``, called on ``operands``
    (the path's own values: graph nodes or tensors, and constants); for a sum, the operands' ``signs`` and the
    earlier sums it takes the place of (``merged``). ``layout``, where the child's rule reads another layout than the
    operation's: ``(into, back)``, ``into(*operands)`` the operands the child is called on, ``back(result,
    *operands)`` its result as the operation's (reshapes only: their gradient moves relevance unchanged)."""

    base: str
    make: Callable[[], torch.nn.Module]
    operands: tuple
    signs: tuple = ()
    merged: tuple = ()
    layout: tuple[Callable, Callable] | None = None


class Facts:
    """What a path knows about the arguments of its operations; each path implements these."""

    def dependent(self, value) -> bool:
        """Whether ``value`` is a tensor whose values (not only its size) come from the module's inputs."""
        raise NotImplementedError

    def computed(self, value) -> bool:
        """Whether ``value`` is, or holds, something computed at run time (a tensor), not a constant."""
        raise NotImplementedError

    def gate(self, value) -> bool:
        """Whether ``value`` is a gate (:py:mod:`.vocabulary`)."""
        raise NotImplementedError

    def attention_weights(self, value) -> bool:
        """Whether ``value`` holds attention weights: a gate, or one mixed across heads by a linear child."""
        raise NotImplementedError

    def size_argument(self, value, source):
        """A further argument of a functional operation on ``source`` as the routed module takes it: a constant as
        it is, a size of ``source`` as an ``InputSize`` where the path can tell, else :py:data:`VARIABLE`."""
        raise NotImplementedError

    def sum_operands(self, value) -> tuple[tuple, tuple] | None:
        """``(operands, signs)`` of an earlier routed sum that ``value`` is and that nothing else uses (it merges
        into the sum that uses it: one many-way split), else None."""
        raise NotImplementedError

    def skip(self, operands: tuple) -> tuple[int, bool]:
        """Which operand of a sum is the skip, and whether it is an identity skip (the block's input itself)."""
        raise NotImplementedError
