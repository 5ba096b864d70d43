"""How a rule runs: as an autograd function around the module's forward (the fast path) or through zennit's hooks.

The rules themselves (:py:mod:`zennit_resnet_lrp.rules`) only declare which inputs they keep and how relevance
maps from a module's output to its inputs; this module runs that declaration either way.
"""
from __future__ import annotations

import copy
import functools

import torch
from zennit.core import Hook


class RelevanceRule(Hook):
    """Base of every rule here. A rule is declared once, by two things:

    - :py:attr:`keeps`: which of the module's inputs its relevance needs (indices; None: all, ``()``: none);
    - :py:meth:`relevance`: the relevance of each of the module's inputs, given those inputs (None where not kept;
      kept inputs that are not tensors, such as widths given with the call, as they are) and the relevance of the
      module's output.

    A rule may also name :py:attr:`silent` inputs, those it never gives relevance (the fast path then detaches them).

    Both ways of running it are derived from that declaration here, for modules of one input or several:

    - ``fast = True`` (default): the module's forward runs inside an autograd function whose backward is the
      rule (:py:class:`ForwardOverride`). The module's own graph is never built or walked, so attribution costs the
      forward pass plus the rule, and the rule keeps no per-module state (the autograd context holds it).
    - ``fast = False``: zennit's hooks (an identity before the module whose gradient the rule replaces), the
      reference path.

    A rule for a new layer type, both paths included::

        class Halves(RelevanceRule):
            \"\"\"``a * b``: half of the relevance to each factor.\"\"\"

            keeps = ()  # reads no input

            def relevance(self, module, inputs, relevance):
                return relevance / 2, relevance / 2

    Parameters
    ----------
    fast : bool
        Run as an autograd function around the module's forward (True) or through zennit's hooks (False).
    """

    keeps: tuple[int, ...] | None = None
    # inputs the rule never gives relevance (its ``relevance`` returns None for them): the fast path detaches them,
    # so that nothing computed only for them (an attention's logits and softmax, a gate's branch) is kept for or
    # walked by the relevance pass. The hook path hands them zeros: the same relevance everywhere else
    silent: tuple[int, ...] = ()
    # whether an input that cannot carry relevance (one that does not require a gradient: computed from sizes only,
    # say) is read as zeros, so that a split hands it nothing and the others all
    constants_as_zero: bool = False

    def __init__(self, fast: bool = True) -> None:
        super().__init__()
        self.fast = fast

    def relevance(self, module: torch.nn.Module, inputs: tuple, relevance: torch.Tensor):
        """The relevance of each input of ``module`` (a tensor for a module of one input, else a tuple; None gives an
        input no relevance), given its ``inputs`` (None where :py:attr:`keeps` leaves one out) and the ``relevance``
        of its output. A rule whose :py:meth:`keeps_output` says so gets the module's output as ``output=`` too."""
        raise NotImplementedError

    def fresh_output(self, module: torch.nn.Module) -> bool:
        """Whether ``module``'s output is memory its forward allocated (not a view of an input, a parameter or a
        buffer), even where it is a view (``F.linear`` with a bias views its product): the fast path then hands it on
        without a copy."""
        return False

    def keeps_output(self, module: torch.nn.Module, inputs: tuple) -> bool:
        """Whether :py:meth:`relevance` reads the module's output for these ``inputs`` (asked as the forward runs):
        a rule may reuse what the forward computed anyway. The output reaches it only if nothing modified it in
        place since (else ``output`` is None and the rule computes without it)."""
        return False

    # -- the machinery: what each path keeps, and the rule's result made to fit the inputs --

    def kept(self, inputs: tuple) -> tuple:
        """What is kept of ``inputs`` for :py:meth:`relevance`: the inputs :py:attr:`keeps` names, None for the
        others (zeros for those that carry no relevance, where :py:attr:`constants_as_zero`)."""
        kept = tuple(x if self.keeps is None or index in self.keeps else None for index, x in enumerate(inputs))
        if self.constants_as_zero and any(isinstance(x, torch.Tensor) and not x.requires_grad for x in kept):
            kept = tuple(torch.zeros_like(x) if isinstance(x, torch.Tensor) and not x.requires_grad else x
                         for x in kept)
        return kept

    def propagate(self, module: torch.nn.Module, kept: tuple, shapes: tuple, relevance: torch.Tensor,
                  output: torch.Tensor | None = None) -> tuple:
        """:py:meth:`relevance` as one tensor per input: an input's relevance summed to its shape where it was
        broadcast, zeros where the rule gives it none (zennit's hooks on that branch expect a tensor), None for an
        input that is not a tensor (``shapes`` holds None there). ``output``: the module's, where
        :py:meth:`keeps_output` asked for it and it is unchanged."""
        result = (self.relevance(module, kept, relevance) if output is None
                  else self.relevance(module, kept, relevance, output=output))
        if not isinstance(result, tuple):
            result = (result,)
        result = result + (None,) * (len(shapes) - len(result))  # inputs the rule does not name get none
        fitted = []
        for value, shape in zip(result, shapes):
            if shape is None:
                fitted.append(None)
            elif value is None:
                fitted.append(relevance.new_zeros(shape))
            else:
                fitted.append(value if value.shape == shape else value.sum_to_size(shape))
        return tuple(fitted)

    # -- the hook path: zennit's Hook, storing the kept inputs per module --

    def pre_forward(self, module, input, *kwargs):  # noqa: A002 - zennit's signatures: (module, input) in 0.5,
        # (module, args, kwargs) in 1.0, which tells them apart by the number of parameters (three here: 1.0's)
        """zennit's, on the tensors among the inputs (a routed scale's factor may be a number, which zennit 0.5 would
        clone; zennit 1.0 leaves numbers alone itself)."""
        positions = [index for index, x in enumerate(input) if isinstance(x, torch.Tensor)]
        if kwargs or len(positions) == len(input):
            return super().pre_forward(module, input, *kwargs)
        wrapped = super().pre_forward(module, tuple(input[index] for index in positions))
        result = list(input)
        for index, tensor in zip(positions, wrapped if isinstance(wrapped, tuple) else (wrapped,)):
            result[index] = tensor
        return tuple(result)

    def forward(self, module, input, output):  # noqa: A002 - zennit's signature (three names: no kwargs)
        self.stored_tensors["inputs"] = tuple(x.detach() if isinstance(x, torch.Tensor) else x
                                              for x in self.kept(input))
        self.stored_tensors["shapes"] = _shapes(input)
        self.stored_tensors["output"] = KeptOutput.of(output) if self.keeps_output(module, input) else None

    def backward(self, module, grad_input, grad_output):
        shapes = self.stored_tensors["shapes"]
        kept_output = self.stored_tensors.get("output")
        result = self.propagate(module, self.stored_tensors["inputs"], shapes, grad_output[0],
                                kept_output.unchanged() if kept_output is not None else None)
        return tuple(value for value, shape in zip(result, shapes) if shape is not None)  # as pre_forward wrapped

    # -- the fast path, and how zennit finds the rule --

    def marker(self, module: torch.nn.Module, args: tuple) -> None:
        """A forward pre-hook that does nothing. The fast path registers it, bound to the rule, so that tools which
        look for a module's rule among its forward pre-hooks (zennit's own, and its tests) find this one."""
        return None

    def register(self, module: torch.nn.Module):
        if not self.fast:
            return super().register(module)
        return ForwardOverride(module, self)

    def copy(self) -> "RelevanceRule":
        """The instance to register on one module: the hook path stores tensors per module, so it needs its own
        copy; the fast path keeps nothing on the rule, so one instance serves every module (registering then
        allocates next to nothing, which keeps Python's garbage collector out of the way)."""
        if self.fast:
            return self
        clone = copy.copy(self)
        Hook.__init__(clone)
        return clone


class KeptOutput:
    """A module's output kept for its rule, without its graph (a detached view: the output's graph would hold the
    node that holds it, a reference cycle), and the version it had: in-place operations later in the forward (an
    in-place activation) change it, and then it is not what the module computed."""

    __slots__ = ("tensor", "version")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor, self.version = tensor.detach(), tensor._version  # a detached view shares the version counter

    @classmethod
    def of(cls, output) -> "KeptOutput | None":
        return cls(output) if isinstance(output, torch.Tensor) else None

    def unchanged(self) -> torch.Tensor | None:
        """The output if nothing modified it in place since it was kept, else None."""
        return self.tensor if self.tensor._version == self.version else None


def _over_own_memory(view: torch.Tensor) -> torch.Tensor:
    """A tensor over the memory of ``view``, not a view: for a view of memory nothing else holds, no copy."""
    if view.layout != torch.strided:
        return view.clone()
    return torch.empty(0, dtype=view.dtype, device=view.device).set_(
        view.untyped_storage(), view.storage_offset(), view.size(), view.stride())


def _shapes(inputs: tuple) -> tuple:
    return tuple(x.shape if isinstance(x, torch.Tensor) else None for x in inputs)


class _Propagate(torch.autograd.Function):
    """The module's forward without a graph; the rule as its backward."""

    @staticmethod
    def forward(ctx, rule, module, forward, *inputs):
        ctx.rule, ctx.module, ctx.shapes = rule, module, _shapes(inputs)
        kept = rule.kept(inputs)
        ctx.positions = [index for index, x in enumerate(kept) if isinstance(x, torch.Tensor)]
        ctx.save_for_backward(*(kept[index] for index in ctx.positions))
        # kept inputs that are not tensors (a padding's widths given with the call) are kept as they are
        ctx.constants = {index: x for index, x in enumerate(kept) if x is not None and not isinstance(x, torch.Tensor)}
        output = forward(*inputs)
        # a view (a reshape's output) would be a view made in a custom function, which later in-place operations may
        # not modify: copied, or where it views memory of the forward's own, re-made over that memory. An input
        # returned as it is (an in-place activation's) is not copied: a copy per activation costs a quarter more
        # memory on a ResNet, and nothing writes into those in place
        if isinstance(output, torch.Tensor) and output._base is not None:
            output = _over_own_memory(output) if rule.fresh_output(module) else output.clone()
        ctx.output = KeptOutput.of(output) if rule.keeps_output(module, inputs) else None
        return output

    @staticmethod
    def backward(ctx, relevance):
        kept = [ctx.constants.get(index) for index in range(len(ctx.shapes))]
        for index, tensor in zip(ctx.positions, ctx.saved_tensors):
            kept[index] = tensor
        # no relevance made for inputs autograd does not want it for (detached silent ones, constants)
        shapes = tuple(shape if wanted else None for shape, wanted in zip(ctx.shapes, ctx.needs_input_grad[3:]))
        output = ctx.output.unchanged() if ctx.output is not None else None
        ctx.output = None  # released with the relevance pass, as the saved inputs are
        return (None, None, None, *ctx.rule.propagate(ctx.module, tuple(kept), shapes, relevance, output))


class ForwardOverride:
    """Routes a module's forward through :py:class:`_Propagate` while registered; ``remove()`` undoes it.

    The instance itself is the module's forward (one small object per module, no closure); the rule's
    :py:meth:`~RelevanceRule.marker` sits among the module's forward pre-hooks, as zennit's hooks do. Keyword
    arguments reach the forward as they are (the rule gives them no relevance)."""

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
        return self._propagate(self.module, self.original_forward, inputs, kwargs)

    def run_as(self, module: torch.nn.Module, *inputs, **kwargs):
        """``module(*inputs)`` with this override's rule, ``module`` being one of the same kind as the one the rule is
        registered on, configured otherwise (an einsum's equation, a sum's signs): the run-time path makes such
        modules for the operations it sees, and the rule reads its configuration off the module it is given."""
        return self._propagate(module, functools.partial(type(module).forward, module), inputs, kwargs)

    def _propagate(self, module: torch.nn.Module, forward, inputs: tuple, kwargs: dict):
        if not self.rule.active or not torch.is_grad_enabled() \
                or not any(getattr(x, "requires_grad", False) for x in inputs):
            return forward(*inputs, **kwargs)
        if self.rule.silent:
            inputs = tuple(x.detach() if index in self.rule.silent and isinstance(x, torch.Tensor) else x
                           for index, x in enumerate(inputs))
        forward = functools.partial(forward, **kwargs) if kwargs else forward
        return _Propagate.apply(self.rule, module, forward, *inputs)

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


def runs_class_forward(module: torch.nn.Module) -> bool:
    """Whether ``module`` computes with its class's own forward (through this package's override or not), not with an
    instance forward a canonizer or user put in its place: only then is its output known to be what its class
    computes."""
    forward = vars(module).get("forward")
    return forward is None or (isinstance(forward, ForwardOverride) and forward.previous is None)
