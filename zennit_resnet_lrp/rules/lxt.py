"""AttnLRP and CP-LRP in the form LXT (the AttnLRP authors' library, "LRP eXplains Transformers") computes them:
gradient times input. Each tensor ``t`` carries ``g``, the relevance being ``t * g``; the gradient is every layer's
rule except where a rule here changes it, so that:

- a linear map with a bias (linear layers, convolutions, an added position embedding, a batch norm in eval mode) is
  LRP-0 with the bias absorbing its share: ``R_x = x * W^T (R / (W x + b))``; a sum ``a + b`` is the signed share
  ``a R / (a + b)``; the softmax is AttnLRP's rule ``x (R - s sum R)``; a scale passes relevance (``x c g = R``);
- :py:class:`IdentityRule`: an elementwise function passes relevance (``g_in = g f(x) / (x + 1e-10)``, LXT's
  stabiliser, unsigned);
- :py:class:`CentredNormRule`: a layer norm with its standard deviation held constant: centring and affine map by
  their gradient (the bias absorbs);
- :py:class:`UniformRule`: a product of ``n`` input-dependent factors, ``1 / n`` of the gradient through each (the
  uniform rule: ``q k^T`` and ``A v`` give each factor half; LXT divides the query's and key's gradient by 4 and the
  values' by 2, the same);
- :py:class:`ConstantFactors`: factors held constant (CP-LRP's attention weights, a gate);
- :py:class:`GradientRule`: the gradient as it is (the layers above whose rule it is), named so that tools see a rule;
- :py:func:`times_input` and :py:func:`over_output`: the conversions at the model's input (``R = x g``) and output
  (``g = R / y``), and at the model's own tokens (a class token's ``R = t g``).

Relevance is not conserved: biases absorb some, and the softmax and bilinear rules neither add up. These rules have
one path (the module's forward around an autograd function, or the plain gradient); the formulas are in
``docs/method.md``.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from zennit.core import Hook

from .core import ForwardOverride

IDENTITY_EPSILON = 1e-10  # LXT's stabiliser of the identity rule (lxt.efficient.rules.identity_rule_implicit_fn)


class _TimesInput(torch.autograd.Function):
    """The identity; its backward multiplies by the input: gradient to relevance."""

    @staticmethod
    def forward(ctx, input):  # noqa: A002 - autograd's signature
        ctx.save_for_backward(input)
        return input.clone()

    @staticmethod
    def backward(ctx, gradient):
        (input,) = ctx.saved_tensors
        return input * gradient


class _OverOutput(torch.autograd.Function):
    """The identity; its backward divides by the output (0 where the output is 0): relevance to gradient."""

    @staticmethod
    def forward(ctx, output):
        ctx.save_for_backward(output)
        return output.clone()

    @staticmethod
    def backward(ctx, relevance):
        (output,) = ctx.saved_tensors
        nonzero = output != 0
        return torch.where(nonzero, relevance / output.where(nonzero, torch.ones_like(output)), 0)


def times_input(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as it is; what reaches it in the backward pass is multiplied by it (``R = x g``)."""
    return _TimesInput.apply(tensor)


def over_output(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as it is; what reaches it in the backward pass is divided by it (``g = R / y``; 0 where ``y = 0``)."""
    return _OverOutput.apply(tensor)


class _Divide(torch.autograd.Function):
    """The identity; its backward divides by ``factor`` (LXT's ``divide_gradient``)."""

    @staticmethod
    def forward(ctx, input, factor):  # noqa: A002 - autograd's signature
        ctx.factor = factor
        return input.clone()

    @staticmethod
    def backward(ctx, gradient):
        return gradient / ctx.factor, None


class _Ratio(torch.autograd.Function):
    """``forward(x, *rest)`` without a graph; its backward is ``g f(x) / (x + epsilon)`` to ``x`` (LXT's
    ``identity_rule_implicit_fn``), nothing to the rest."""

    @staticmethod
    def forward(ctx, forward, epsilon, input, *rest):  # noqa: A002 - autograd's signature
        output = forward(input, *rest)
        ctx.save_for_backward(output / (input + epsilon))
        return output

    @staticmethod
    def backward(ctx, gradient):
        (ratio,) = ctx.saved_tensors
        return None, None, ratio * gradient, *(None,) * (len(ctx.needs_input_grad) - 3)


class _CentredScale(torch.autograd.Function):
    """A layer norm over the last ``len(shape)`` dimensions, fused; its backward holds the standard deviation
    constant: ``h = g w / std``, ``g_x = h - mean(h)`` (LXT's ``layer_norm_forward``: the std detached)."""

    @staticmethod
    def forward(ctx, input, shape, weight, bias, epsilon):  # noqa: A002 - autograd's signature
        output, _, inverse = torch.native_layer_norm(input, shape, weight, bias, epsilon)
        ctx.save_for_backward(inverse, weight)
        ctx.dims = tuple(range(-len(shape), 0))
        return output

    @staticmethod
    def backward(ctx, gradient):
        inverse, weight = ctx.saved_tensors
        scaled = gradient * weight if weight is not None else gradient
        scaled = scaled * inverse
        return scaled - scaled.mean(ctx.dims, keepdim=True), None, None, None, None


class _Override(ForwardOverride):
    """The module's forward replaced by its rule's :py:meth:`GradientFormRule.apply` while registered."""

    __slots__ = ()

    def _propagate(self, module, forward, inputs, kwargs):
        if not self.rule.active or not torch.is_grad_enabled() \
                or not any(getattr(x, "requires_grad", False) for x in inputs):
            return forward(*inputs, **kwargs)
        return self.rule.apply(module, forward, inputs, kwargs)


class GradientFormRule(Hook):
    """Base of the rules here: a module's forward run by :py:meth:`apply`, which builds the backward the rule wants
    (by autograd functions, or the gradient of a forward on detached inputs). No state is kept on the rule."""

    def apply(self, module: torch.nn.Module, forward, inputs: tuple, kwargs: dict):
        """The module's output, ``forward(*inputs, **kwargs)``, with the rule's backward."""
        return forward(*inputs, **kwargs)

    def marker(self, module: torch.nn.Module, args: tuple) -> None:
        """A forward pre-hook that does nothing: tools that look for a module's rule among its forward pre-hooks find
        this one (as the other rules' fast path does)."""
        return None

    def register(self, module: torch.nn.Module):
        return _Override(module, self)

    def copy(self) -> "GradientFormRule":
        """The rule itself: it keeps nothing per module."""
        return self


class GradientRule(GradientFormRule):
    """The gradient as it is: LRP-0 for linear maps (the bias absorbing), the signed share at sums, AttnLRP's rule at
    the softmax. Only its marker is registered: the module runs untouched."""

    def register(self, module: torch.nn.Module):
        return module.register_forward_pre_hook(self.marker)


class IdentityRule(GradientFormRule):
    """An elementwise function passes relevance: ``g_in = g f(x) / (x + epsilon)`` (AttnLRP's identity rule for
    activations, LXT's unsigned stabiliser). The first input is the function's; further ones get nothing.

    Parameters
    ----------
    epsilon : float
    """

    def __init__(self, epsilon: float = IDENTITY_EPSILON) -> None:
        super().__init__()
        self.epsilon = float(epsilon)

    def apply(self, module, forward, inputs, kwargs):
        forward = functools.partial(forward, **kwargs) if kwargs else forward
        if getattr(module, "inplace", False):  # the ratio needs the input as it was
            forward = functools.partial(_on_copy, forward)
        rest = tuple(x.detach() if isinstance(x, torch.Tensor) else x for x in inputs[1:])
        return _Ratio.apply(forward, self.epsilon, inputs[0], *rest)


def _on_copy(forward, input, *rest):  # noqa: A002 - the module's input
    return forward(input.clone(), *rest)


class CentredNormRule(IdentityRule):
    """A layer norm with its standard deviation held constant (AttnLRP's identity rule at the division, as LXT
    computes it): the centring and the affine map by their gradient, ``g_x = h - mean(h)``, ``h = g w / std``; the
    bias absorbs its share. For ``nn.LayerNorm`` (and subclasses that compute it as it does), timm's channels-first
    ``LayerNorm2d``, and layer norms written as ``F.layer_norm``; other normalisations pass relevance as
    :py:class:`IdentityRule` does."""

    def apply(self, module, forward, inputs, kwargs):
        arguments = _layer_norm_arguments(module, inputs, kwargs)
        if arguments is None:
            return super().apply(module, forward, inputs, kwargs)
        input, shape, weight, bias, epsilon = arguments  # noqa: A001
        if type(module).__name__ == "LayerNorm2d":  # timm's: channels first, normalised over the channels
            output = _CentredScale.apply(input.permute(0, 2, 3, 1), shape, weight, bias, epsilon)
            return output.permute(0, 3, 1, 2)
        return _CentredScale.apply(input, shape, weight, bias, epsilon)


def _layer_norm_arguments(module, inputs: tuple, kwargs: dict) -> tuple | None:
    """``(input, normalized_shape, weight, bias, eps)`` of a layer norm, or None for another normalisation."""
    if isinstance(module, torch.nn.LayerNorm) and (type(module).forward is torch.nn.LayerNorm.forward
                                                   or type(module).__name__ in ("LayerNorm", "LayerNorm2d")):
        return inputs[0], tuple(module.normalized_shape), _constant(module.weight), _constant(module.bias), module.eps
    function, arguments = getattr(module, "function", None), None
    if function is F.layer_norm and hasattr(module, "template"):  # a FunctionalNorm: its template, slots filled
        tensors = iter(inputs[1:])
        # where a tensor goes (rewriting's SLOT, told by its class: the rules import nothing from rewriting)
        arguments = [next(tensors) if type(item).__name__ == "_Slot" else item for item in module.template]
        arguments += [module.kwargs[key] for key in ("weight", "bias", "eps") if key in module.kwargs]
    elif kwargs.get("function") is F.layer_norm:  # a FunctionCall: the arguments come with the call
        arguments = [*kwargs.get("arguments", ()), *(kwargs.get("keywords") or {}).values()]
    if arguments is None:
        return None
    shape, weight, bias, epsilon = (list(arguments) + [None, None, 1e-5])[:4]
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return inputs[0], shape, _constant(weight), _constant(bias), float(epsilon)


def _constant(tensor):
    return tensor.detach() if isinstance(tensor, torch.Tensor) else tensor


class UniformRule(GradientFormRule):
    """A product of ``n`` input-dependent factors (``q k^T``, ``A v``, ``a * b``): the gradient through each divided
    by ``n``, so that each factor gets ``1 / n`` of what gradient times input would give it (AttnLRP's uniform
    rule; LXT's ``divide_gradient``)."""

    def apply(self, module, forward, inputs, kwargs):
        count = sum(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs)
        output = forward(*inputs, **kwargs)
        return _Divide.apply(output, count) if count > 1 else output


class ConstantFactors(GradientFormRule):
    """Some inputs held constant: the gradient reaches the others only (CP-LRP: the attention weights of ``A v``,
    so that the values get LRP-0 through ``v -> A v``; a gate, so that the gated features get all).

    Parameters
    ----------
    constant : tuple of int
        The positions of the inputs held constant.
    """

    def __init__(self, constant: tuple[int, ...] = (0,)) -> None:
        super().__init__()
        self.constant = tuple(constant)

    def apply(self, module, forward, inputs, kwargs):
        inputs = tuple(x.detach() if index in self.constant and isinstance(x, torch.Tensor) else x
                       for index, x in enumerate(inputs))
        return forward(*inputs, **kwargs)


class TokenRule(GradientFormRule):
    """The model's own tokens (a class token concatenated with the patches, or handed to a child) absorb ``t g``:
    their inputs that do not depend on the image, where asked for (made leaves that require a gradient), carry
    relevance, not gradient, back. ``constant`` is read off the module (all inputs where it has none)."""

    def apply(self, module, forward, inputs, kwargs):
        constant = getattr(module, "constant", (True,) * len(inputs))
        inputs = tuple(times_input(x) if flag and isinstance(x, torch.Tensor) and x.requires_grad else x
                       for x, flag in zip(inputs, constant))
        return forward(*inputs, **kwargs)
