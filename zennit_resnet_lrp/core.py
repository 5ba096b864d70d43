"""How a rule runs: as an autograd function around the module's forward (the fast path) or through zennit's hooks,
and the transposes of the linear maps the rules redistribute through.

The rules themselves (:py:mod:`zennit_resnet_lrp.rules`) only say how relevance maps from a module's output to its
input; this module decides when that code runs.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from zennit.core import Hook

Transpose = Callable[[torch.Tensor], torch.Tensor]


class RelevanceRule(Hook):
    """Base of the rules here: map the relevance of a module's output to its input (:py:meth:`relevance`).

    Registered on a module, a rule takes over the module's backward pass in one of two ways:

    - ``fast = True`` (default): the module's forward runs inside an autograd function whose backward is the
      rule. The module's own graph is never built or walked, so attribution costs the forward pass plus the rule.
    - ``fast = False``: zennit's hook mechanism (an identity before the module whose gradient the rule replaces),
      kept as the reference path.

    One instance serves as a template; zennit registers copies. The fast path keeps no per-module state on the
    rule (the autograd context holds it), so there a "copy" is the template itself: registering allocates next to
    nothing, which keeps Python's garbage collector out of the way.

    Parameters
    ----------
    fast : bool
        Run as an autograd function around the module's forward (True) or through zennit's hooks (False).
    """

    # False for rules that do not read the module's input (the autograd function then keeps none)
    needs_input = True

    def __init__(self, fast: bool = True) -> None:
        super().__init__()
        self.fast = fast

    def forward(self, module, input, output):  # noqa: A002 - zennit's signature (three names: no kwargs)
        self.stored_tensors["input"] = input[0].detach()

    def backward(self, module, grad_input, grad_output):
        return (self.relevance(module, self.stored_tensors["input"], grad_output[0]),)

    def relevance(self, module: torch.nn.Module, input: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        """Return the relevance of ``input`` given the ``relevance`` of the module's output."""
        raise NotImplementedError

    def relevance_of_inputs(self, module: torch.nn.Module, inputs: tuple, relevance: torch.Tensor) -> tuple:
        """The relevance of each of the module's inputs (one for most modules)."""
        return (self.relevance(module, inputs[0], relevance),)

    def kept_inputs(self, inputs: tuple) -> tuple:
        """What the fast path keeps of the module's inputs for :py:meth:`relevance_of_inputs` (None for an input the
        rule does not read): all of them, or none where ``needs_input`` is False."""
        return inputs if self.needs_input else ()

    def marker(self, module: torch.nn.Module, args: tuple) -> None:
        """A forward pre-hook that does nothing. The fast path registers it, bound to the rule, so that tools which
        look for a module's rule among its forward pre-hooks (zennit's own, and its tests) find this one."""
        return None

    def register(self, module: torch.nn.Module):
        if not self.fast:
            return super().register(module)
        return ForwardOverride(module, self)

    def copy(self) -> "RelevanceRule":
        if self.fast:
            return self
        clone = copy.copy(self)
        Hook.__init__(clone)
        return clone


class _Propagate(torch.autograd.Function):
    """The module's forward without a graph; the rule as its backward."""

    @staticmethod
    def forward(ctx, rule, module, forward, *inputs):
        ctx.rule, ctx.module = rule, module
        ctx.save_for_backward(*rule.kept_inputs(inputs))
        return forward(*inputs)

    @staticmethod
    def backward(ctx, relevance):
        inputs = ctx.saved_tensors or (None,)
        return (None, None, None, *ctx.rule.relevance_of_inputs(ctx.module, inputs, relevance))


class ForwardOverride:
    """Routes a module's forward through :py:class:`_Propagate` while registered; ``remove()`` undoes it.

    The instance itself is the module's forward (one small object per module, no closure); the rule's
    :py:meth:`~RelevanceRule.marker` sits among the module's forward pre-hooks, as zennit's hooks do."""

    __slots__ = ("module", "rule", "previous", "marker")

    def __init__(self, module: torch.nn.Module, rule: RelevanceRule) -> None:
        self.module, self.rule = module, rule
        self.previous = module.__dict__.get("forward")
        module.__dict__["forward"] = self  # what nn.Module.__setattr__ would do for a plain attribute
        self.marker = module.register_forward_pre_hook(rule.marker)

    def original_forward(self, *inputs, **kwargs):
        """The forward the module had before this override: an instance forward (a canonizer's) or the class's."""
        if self.previous is not None:
            return self.previous(*inputs, **kwargs)
        return type(self.module).forward(self.module, *inputs, **kwargs)

    def __call__(self, *inputs, **kwargs):
        if kwargs or not self.rule.active or not torch.is_grad_enabled() \
                or not any(getattr(x, "requires_grad", False) for x in inputs):
            return self.original_forward(*inputs, **kwargs)
        return _Propagate.apply(self.rule, self.module, self.original_forward, *inputs)

    def remove(self) -> None:
        module = self.module
        if module is None:
            return
        if self.previous is None:
            module.__dict__.pop("forward", None)
        else:
            module.__dict__["forward"] = self.previous
        self.marker.remove()
        self.module = None


def layout(tensor: torch.Tensor | None) -> torch.memory_format:
    """``torch.channels_last`` for a 4-D tensor laid out channels-last (and not also plainly contiguous), else
    ``torch.contiguous_format``: the layout to give weights that meet ``tensor`` in a convolution (the convolution
    would otherwise convert them on every call)."""
    if (tensor is not None and tensor.ndim == 4 and not tensor.is_contiguous()
            and tensor.is_contiguous(memory_format=torch.channels_last)):
        return torch.channels_last
    return torch.contiguous_format


def convolution_transpose(input, weight, stride, padding, dilation, groups) -> Transpose:
    """The transpose of the convolution of ``input`` with ``weight``: its input gradient alone (no weight gradient,
    no autograd graph)."""

    def transpose(vector):
        return torch.ops.aten.convolution_backward(
            vector, input, weight, None, stride, padding, dilation, False, [0] * len(stride), groups,
            [True, False, False],
        )[0]

    return transpose


def linearised(function: Callable[[torch.Tensor], torch.Tensor], input: torch.Tensor) -> tuple:
    """Return ``function(input)`` and a function that applies its transpose (vector-Jacobian product), by autograd:
    for maps whose transpose has no closed form here."""
    with torch.enable_grad():
        point = input.detach().requires_grad_()
        output = function(point)

    def transpose(vector):
        (result,) = torch.autograd.grad(output, point, vector, retain_graph=True)
        return result

    return output.detach(), transpose


def weighted_map(module: torch.nn.Module, input: torch.Tensor, weight: torch.Tensor) -> tuple:
    """``(f(input), transpose of f)`` for the convolution or linear layer ``module`` with ``weight`` in place of its
    own and no bias; the transpose in closed form where there is one."""
    with torch.no_grad():
        if isinstance(module, torch.nn.Linear):
            return torch.nn.functional.linear(input, weight), lambda vector: vector @ weight
        if module.padding_mode == "zeros" and not isinstance(module.padding, str):
            output = module._conv_forward(input, weight, None)
            return output, convolution_transpose(input, weight, module.stride, module.padding, module.dilation,
                                                  module.groups)
    return linearised(lambda x: module._conv_forward(x, weight, None), input)
