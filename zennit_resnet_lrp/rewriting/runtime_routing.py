"""Route the operations of a forward that ``torch.fx`` cannot trace (it branches on a tensor's value or size, assigns
into a list of tensors, ...) while it runs, through explicit modules that rules cover.

A :py:class:`TorchFunctionMode` sees every torch function the module's own forward calls (not those inside its
children, which are traced or routed on their own) and decides from the values at hand what tracing decides from the
graph: which tensors depend on the module's input (its arguments, and everything computed from them here or by its
children), which are gates (a sigmoid's or softmax's output, possibly reshaped, scaled, summed or divided). It then
calls one of a fixed set of children made beforehand, one per kind of operation, each called as often as needed:

- a sum or difference of input-dependent tensors: a :py:class:`ResidualSum` (an identity skip where an operand is the
  forward's own argument); a product: :py:class:`GatedProduct`, :py:class:`Product` or :py:class:`Scale`, as tracing
  decides; a quotient by anything: a :py:class:`Scale`;
- a matrix product of two input-dependent tensors (:py:class:`AttentionProduct` where the first is a gate,
  :py:class:`MatrixProduct` otherwise) and fused attention (:py:class:`Attention`);
- a concatenation of input-dependent tensors with tensors of the model's own: the latter through a :py:class:`Token`;
- ``F.linear`` with a linear child's own weight and bias: that child; activations, normalisations and elementwise
  functions: a :py:class:`FunctionCall`.

What tracing does and this does not: a sum of several operands is split pair by pair (the same under the ratio split;
under ``simple`` and ``latest``, whose identity skip gets nothing, not the same as one many-way split); einsum
equations, sums over a dimension and functional pools keep their gradient (the pools' is the uniform split, which
conserves; a sum over a dimension does not).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode

from .functional_routes import ACTIVATION_FUNCTIONS, ACTIVATION_METHODS, ELEMENTWISE_FUNCTIONS, ELEMENTWISE_METHODS, \
    NORM_FUNCTIONS
from .graph_analysis import DROPOUTS, GATE_FUNCTIONS, GATE_METHODS, SHAPE_FUNCTIONS, SHAPE_METHODS, ChildNames, \
    is_gate_module
from .modules import (
    Attention, AttentionProduct, FunctionCall, GatedProduct, MatrixProduct, Product, ResidualSum, Scale, Token,
)

Tensor = torch.Tensor

# the children a routed module gets: kind -> factory
KINDS: dict[str, Callable[[], torch.nn.Module]] = {
    "sum": lambda: ResidualSum(identity_skip=False), "identity_sum": lambda: ResidualSum(identity_skip=True),
    "difference": lambda: ResidualSum(identity_skip=False, skip=0, signs=(1, -1)),
    "gated_product": GatedProduct, "product": Product, "scale": Scale, "divide": lambda: Scale(divide=True),
    "attention_product": AttentionProduct, "matrix_product": MatrixProduct, "attention": Attention,
    "token": Token, "function": FunctionCall,
}
_ADD = {torch.add, Tensor.add, Tensor.__add__, Tensor.__iadd__}
_SUB = {torch.sub, Tensor.sub, Tensor.__sub__, Tensor.__isub__}
_MUL = {torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__, Tensor.__imul__}
_DIV = {torch.div, Tensor.div, Tensor.__truediv__, Tensor.__itruediv__}
_MATMUL = {torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.bmm, Tensor.bmm}
_CAT = {torch.cat, torch.concat}
# in place (``x += y`` arrives as ``x.add_(y)``) -> the same out of place
_IN_PLACE = {Tensor.add_: Tensor.add, Tensor.sub_: Tensor.sub, Tensor.mul_: Tensor.mul, Tensor.div_: Tensor.div}
# kinds whose rules read their inputs back in the backward pass
_READ_BACK = {"sum", "identity_sum", "difference", "gated_product", "product", "attention_product", "matrix_product",
              "attention"}
_METHODS = {name: getattr(Tensor, name) for name in {*ACTIVATION_METHODS, *ELEMENTWISE_METHODS}
            if hasattr(Tensor, name)}
_FUNCTIONS = {*ACTIVATION_FUNCTIONS, *ELEMENTWISE_FUNCTIONS, *NORM_FUNCTIONS, *_METHODS.values(), Tensor.__pow__}
_GATES = {*GATE_FUNCTIONS, *(getattr(Tensor, name) for name in GATE_METHODS)}
# functions whose output is a gate when their input is one: reshapes, dropout, scaling, sums of gates
_KEEP_GATE = {*SHAPE_FUNCTIONS, *(getattr(Tensor, name) for name in SHAPE_METHODS), *DROPOUTS, Tensor.__getitem__,
              Tensor.float, Tensor.double, *_MUL, *_DIV, *_ADD}


def install(module: torch.nn.Module, names: ChildNames | None = None, forward: Callable | None = None) -> list[str]:
    """Give ``module`` the routing children and a forward that routes its own operations while it runs; return the
    names added (to remove later). ``forward(module, *args, **kwargs)``: what runs instead of the class's forward
    (a decomposition of a fused one: :py:mod:`~zennit_resnet_lrp.recurrent`)."""
    names = names or ChildNames(module)
    children = {kind: names.new(f"runtime_{kind}", make) for kind, make in KINDS.items()}
    try:
        for kind, name in children.items():
            module.add_module(name, KINDS[kind]())
    except Exception:  # a name the module's own __setattr__ or add_module refuses: nothing left behind
        for name in children.values():
            module._modules.pop(name, None)
        raise
    module.__dict__["forward"] = RoutedForward(module, children, forward or type(module).forward)
    return list(children.values())


class RoutedForward:
    """The module's own forward, run under a :py:class:`_Router`; the instance is the module's forward. It remembers
    which of the modules the forward calls are gates (deciding that may trace them)."""

    __slots__ = ("module", "children", "gate_modules", "function")

    def __init__(self, module: torch.nn.Module, children: dict[str, str], function: Callable) -> None:
        self.module, self.children, self.function = module, children, function
        self.gate_modules: dict[int, bool] = {}

    def is_gate(self, module: torch.nn.Module) -> bool:
        if id(module) not in self.gate_modules:
            self.gate_modules[id(module)] = is_gate_module(module)
        return self.gate_modules[id(module)]

    def __call__(self, *args, **kwargs):
        router = _Router(self, (*args, *kwargs.values()))
        # every module call, at any depth (children, their children, modules held in lists): the router routes only
        # what the module's own code computes
        handles = [register_module_forward_pre_hook(router.enter),
                   register_module_forward_hook(router.leave, with_kwargs=True, always_call=True)]
        try:
            with router:
                return self.function(self.module, *args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()


def _tensors(value) -> list[Tensor]:
    """The tensors in an argument or result (lists, tuples and dicts looked into)."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


class _Router(TorchFunctionMode):
    """Routes the operations of one call of the module's own forward (depth 0: not inside a child)."""

    def __init__(self, forward: RoutedForward, inputs: tuple) -> None:
        super().__init__()
        self.forward, self.module, self.children, self.depth = forward, forward.module, forward.children, 0
        self.inputs = {id(t) for t in _tensors(inputs)}
        # id -> tensor (held, so that ids stay unique for the call)
        self.dependent: dict[int, Tensor] = {id(t): t for t in _tensors(inputs)}
        self.gates: dict[int, Tensor] = {}

    def enter(self, module, args) -> None:
        self.depth += 1

    def leave(self, module, args, kwargs, output) -> None:
        self.depth -= 1
        if self.depth == 0 and self._any_dependent((args, kwargs)):
            self._mark(output, gate=self.forward.is_gate(module))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # inside a child, or inside a custom autograd function's forward (autograd is off there): that function's own
        # backward carries relevance through it, as its author wrote it (named in the attribution's warnings)
        if self.depth or not torch.is_grad_enabled():
            return func(*args, **kwargs)
        routed = self._route(func, args, kwargs)
        result = func(*args, **kwargs) if routed is None else routed
        if self._any_dependent((args, kwargs)):
            self._mark(result, gate=func in _GATES or func in _KEEP_GATE and self._gate_operands(func, args))
        return result

    def _any_dependent(self, value) -> bool:
        return any(id(t) in self.dependent for t in _tensors(value))

    def _mark(self, value, gate: bool) -> None:
        for tensor in _tensors(value):
            self.dependent[id(tensor)] = tensor
            if gate:
                self.gates[id(tensor)] = tensor

    def _is(self, value) -> bool:
        return isinstance(value, Tensor) and id(value) in self.dependent

    def _gate_operands(self, func, args) -> bool:
        """Whether an operation that keeps gates has gates for all its input-dependent operands."""
        operands = [t for t in _tensors(args) if id(t) in self.dependent]
        return bool(operands) and all(id(t) in self.gates for t in operands)

    def _call(self, kind: str, *operands, **kwargs):
        """The routing child of ``kind`` on ``operands``, copied first for the kinds whose rules read them back: code
        that cannot be traced often writes into its tensors later (``attn[..., 1:] = ...``), which would change what
        the rule reads."""
        if kind in _READ_BACK:
            operands = tuple(o.clone() if isinstance(o, Tensor) else o for o in operands)
        return self.module.get_submodule(self.children[kind])(*operands, **kwargs)

    def _route(self, func, args, kwargs):
        """The operation's result through a routing child, or None where it keeps its own gradient."""
        if func in _ADD or func in _SUB or func in _MUL or func in _DIV:
            return None if kwargs or len(args) != 2 else self._binary(func, *args)
        if func in _IN_PLACE and not kwargs and len(args) == 2 and self._is(args[0]):
            return self._in_place(_IN_PLACE[func], *args)
        if func in _MATMUL and len(args) == 2 and not kwargs and self._is(args[0]) and self._is(args[1]):
            if id(args[0]) in self.gates:
                return self._call("attention_product", *args)
            return self._call("matrix_product", *args)
        if func is F.scaled_dot_product_attention and len(args) >= 3 and all(self._is(a) for a in args[:3]):
            return self._call("attention", *args, **kwargs)
        if func in _CAT:
            return self._tokens(func, args, kwargs)
        if func is F.linear:
            return self._linear(*args, **kwargs)
        if func in _FUNCTIONS and args and self._is(args[0]) and not self._any_dependent((args[1:], kwargs)):
            keywords = {key: value for key, value in kwargs.items() if key != "inplace"}
            function = func if func not in (F.relu_, torch.relu_) else F.relu
            return self._call("function", args[0], function=function, arguments=tuple(args[1:]), keywords=keywords)
        return None

    def _binary(self, func, first, second):
        dependent = self._is(first), self._is(second)
        if func in _ADD or func in _SUB:
            if not all(dependent):
                return None
            if func in _SUB:
                return self._call("difference", first, second)
            if id(first) in self.inputs:  # the forward's own argument: an identity skip, given last
                return self._call("identity_sum", second, first)
            return self._call("identity_sum" if id(second) in self.inputs else "sum", first, second)
        if func in _DIV:
            return self._call("divide", first, second) if dependent[0] else None
        if all(dependent):
            gates = id(first) in self.gates, id(second) in self.gates
            if gates[0] != gates[1]:
                features, gate = (second, first) if gates[0] else (first, second)
                return self._call("gated_product", features, gate)
            return self._call("product", first, second)
        if not any(dependent):
            return None
        scaled, factor = (first, second) if dependent[0] else (second, first)
        return self._call("scale", scaled, factor)

    def _in_place(self, func, target: Tensor, other):
        """``target += other`` (and the like) routed: the routed result of a copy of ``target`` written into it, so
        that every reference to ``target`` sees the result and its gradient runs through the routing child."""
        copy = target.clone()
        self.dependent[id(copy)] = copy
        if id(target) in self.gates:
            self.gates[id(copy)] = copy
        if id(target) in self.inputs:
            self.inputs.add(id(copy))
        routed = self._binary(func, copy, other)
        if routed is None:
            return None
        return target.copy_(routed)

    def _tokens(self, func, args, kwargs):
        """A concatenation of input-dependent tensors with the model's own: the latter through a ``Token``."""
        operands = args[0] if args else kwargs.get("tensors")
        if not isinstance(operands, (list, tuple)) or not all(isinstance(o, Tensor) for o in operands):
            return None
        own = [not self._is(o) for o in operands]
        if all(own) or not any(own):
            return None
        marked = [self._call("token", o) if is_own else o for o, is_own in zip(operands, own)]
        rest = {key: value for key, value in kwargs.items() if key != "tensors"}
        return func(marked, *args[1:], **rest)

    def _linear(self, input, weight, bias=None):  # noqa: A002 - F.linear's names
        """``F.linear`` with the weight of a linear child: the child (its bias swapped for the one given)."""
        if not self._is(input):
            return None
        child = next((m for m in self.module.modules() if isinstance(m, torch.nn.Linear) and m.weight is weight), None)
        if child is None:
            return None
        output = child(input)
        if child.bias is not None and bias is not child.bias:
            output = output - child.bias
        if bias is not None and bias is not child.bias:
            output = output + bias
        return output
