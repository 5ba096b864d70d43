"""Record how much relevance enters and leaves chosen modules during one attribution (for the conservation
report and for locating where relevance appears or vanishes)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .rewriting import ResidualSum, Token, TokenConcat


def _per_sample_sum(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().flatten(1).sum(1)


@dataclass
class ModuleRelevance:
    """Relevance sums (one value per sample) at one module.

    Attributes
    ----------
    name : str
        The module's name in the model.
    output : torch.Tensor
        Relevance arriving at the module's output (entering it in the backward pass).
    input : torch.Tensor
        Relevance leaving through the module's input.
    skip : torch.Tensor or None
        For a residual block, the relevance its sum handed to the skip branch.
    """

    name: str
    output: torch.Tensor
    input: torch.Tensor
    skip: torch.Tensor | None = None

    @property
    def leak(self) -> torch.Tensor:
        """Relevance lost inside the module (negative: created)."""
        return self.output - self.input

    @property
    def skip_share(self) -> torch.Tensor | None:
        """Share of the block's relevance that went through the skip."""
        if self.skip is None:
            return None
        return self.skip / self.output.where(self.output != 0, torch.ones_like(self.output))


class RelevanceRecorder:
    """Hooks that record the relevance at the input and output of ``modules`` in the backward pass.

    Register it after the composite, so that it sees the canonized model (the sums inside blocks). Its input hooks
    go in front of all others, so they see the relevance the module's rules produced.

    Parameters
    ----------
    modules : dict of str to Module
        The modules to watch, by name.
    gradient_form : bool
        What reaches a tensor in the backward pass is a gradient whose product with the tensor is its relevance (a
        composite that computes in gradient-times-input form, as ``attnlrp`` and ``cp_lrp`` do): record that product.
    """

    def __init__(self, modules: dict[str, torch.nn.Module], gradient_form: bool = False) -> None:
        self.modules, self.gradient_form = modules, gradient_form
        self.sums: dict[tuple[str, str], list[torch.Tensor]] = {}
        self.handles: list = []

    def _store(self, name: str, where: str, tensor: torch.Tensor):
        factor = tensor.detach() if self.gradient_form else None  # kept only where the relevance needs it

        def hook(grad: torch.Tensor) -> None:
            relevance = grad if factor is None else grad * factor
            self.sums.setdefault((name, where), []).append(_per_sample_sum(relevance))
        return hook

    def register(self) -> "RelevanceRecorder":
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_pre_hook(self._input_hook(name), prepend=True))
            self.handles.append(module.register_forward_hook(self._output_hook(name)))
            inner = next((child for child in module.children() if isinstance(child, ResidualSum)), None)
            if inner is not None:
                self.handles.append(inner.register_forward_pre_hook(self._skip_hook(name), prepend=True))
        return self

    def _input_hook(self, name):
        def hook(module, args):
            # every tensor input with the batch's size: a block may take its shortcut as an argument
            watched = [index for index, arg in enumerate(args) if isinstance(arg, torch.Tensor) and arg.requires_grad
                       and arg.ndim > 0 and arg.shape[0] == args[0].shape[0]] if args else []
            if not watched:
                return None
            args = list(args)
            for index in watched:
                args[index] = args[index].clone()
                args[index].register_hook(self._store(name, f"input{index}", args[index]))
            return tuple(args)
        return hook

    def _output_hook(self, name):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(self._store(name, "output", output))
        return hook

    def _skip_hook(self, name):
        def hook(module, args):
            index = module.skip % len(args)  # the sum's operands: which one is the skip
            if not args[index].requires_grad:
                return None
            watched = args[index].clone()
            watched.register_hook(self._store(name, "skip", watched))
            return (*args[:index], watched, *args[index + 1:])
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def results(self) -> list[ModuleRelevance]:
        """One :py:class:`ModuleRelevance` per watched module that relevance reached, in model order; batches
        recorded one after another are concatenated."""
        def joined(name, where):
            parts = self.sums.get((name, where))
            return torch.cat(parts) if parts else None

        records = []
        for name in self.modules:
            output = joined(name, "output")
            inputs = [value for (owner, where), _ in self.sums.items() if owner == name and where.startswith("input")
                      for value in [joined(owner, where)] if output is not None and value.shape == output.shape]
            if output is not None and inputs:
                records.append(ModuleRelevance(name, output, sum(inputs), joined(name, "skip")))
        return records


class AbsorptionRecorder:
    """Finds where relevance ends on the model's own tokens: the constant operands of every
    :py:class:`~zennit_resnet_lrp.rewriting.modules.TokenConcat` (a class token, distillation or register tokens) and the input of
    every :py:class:`~zennit_resnet_lrp.rewriting.modules.Token`, made leaves
    during the forward pass so that the attribution can ask autograd for their relevance (:py:meth:`take`)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.modules = [module for module in model.modules() if isinstance(module, (TokenConcat, Token))]
        self.handles: list = []
        self.leaves: list[torch.Tensor] = []

    def register(self) -> "AbsorptionRecorder":
        self.handles = [module.register_forward_pre_hook(self._hook) for module in self.modules]
        return self

    def _hook(self, module, args):
        args = list(args)
        for index, constant in enumerate(getattr(module, "constant", (True,))):  # a Token: its one input
            if constant and isinstance(args[index], torch.Tensor) and torch.is_grad_enabled():
                # a leaf of its own: the parameter behind it may not require gradients, and autograd computes only
                # what is asked for
                args[index] = args[index].detach().requires_grad_()
                self.leaves.append(args[index])
        return tuple(args)

    def take(self) -> list[torch.Tensor]:
        """The token leaves of the forward pass since the last call."""
        leaves, self.leaves = self.leaves, []
        return leaves

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
