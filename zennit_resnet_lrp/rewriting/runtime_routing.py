"""The run-time path: the operations of a forward that ``torch.fx`` cannot trace (it branches on a tensor's value or
size, assigns into a list of tensors, ...) routed while it runs, through explicit modules that rules cover.

A :py:class:`TorchFunctionMode` sees every torch function the module's own forward calls (not those inside its
children, which are traced or routed on their own), puts each into ``torch.fx``'s words
(:py:func:`~.vocabulary.as_traced`) and asks the classifier the traced path asks (:py:func:`~.operations.classify`),
answering its questions from the tensors at hand (:py:class:`_Router`): which depend on the module's input (its
arguments, and everything computed from them here or by its children), which are gates, which hold attention weights,
which are the outputs of sums routed before. The module is given one child of each kind a route can make beforehand
(its prototype, which the composite gives its rule); a route whose module is configured otherwise (an einsum
equation, a sum's signs, a pool's size) runs a module made for it with its prototype's rule
(:py:func:`run_with_rule_of`). ``F.linear`` and ``x @ W`` with a linear child's weight or a matrix of the module's own
go through a linear child, as on the traced path.

Where it differs from tracing: a sum merges the earlier sums among its operands that nothing has used so far, even
one used later too (the relevance reaching that later use still goes through its own sum, so both conserve); the
skip of a sum is the forward's own argument where one is an operand, not the operand reached through the least
computation (the same under every split but ``latest`` and ``simple``, whose identity skip gets nothing); a tensor
counts as the model's own (a token, where a child is handed it beside input-dependent ones) when it is a parameter or
buffer or computed from those alone in this forward; zennit's hook path, which keeps one input set per module, does
not run the rules of modules called more than once in a forward.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode

from .forward import plain_attributes
from .functional_routes import ACTIVATION_FUNCTIONS
from .graph_analysis import ChildNames, is_gate_module
from .modules import (
    Attention, AttentionProduct, Elementwise, Fold, FunctionalNorm, FunctionalPool, GatedProduct, MatrixProduct,
    Pad, Product, ResidualSum, Scale, SumOver, Token, linear_child,
)
from .operations import classify, matrix_operands
from .routes import VARIABLE, Facts, Route
from .vocabulary import IN_PLACE, PASSIVE_CHILDREN, as_traced, keeps_gate, makes_gate, reshapes_only

Tensor = torch.Tensor

# one prototype of each kind of module a route makes (kind -> how to make one): the composite gives each its rule
PROTOTYPES: dict[type, Callable[[], torch.nn.Module]] = {
    **{kind: kind for kind in (ResidualSum, GatedProduct, Product, Scale, AttentionProduct, MatrixProduct, Attention,
                               Token, Pad, torch.nn.Softmax, *ACTIVATION_FUNCTIONS.values())},
    SumOver: lambda: SumOver(-1), Elementwise: lambda: Elementwise(torch.abs),
    FunctionalNorm: lambda: FunctionalNorm(F.layer_norm, (), {}), FunctionalPool: lambda: FunctionalPool(torch.mean),
    Fold: lambda: Fold(1),
}
# routes whose rules read their operands back in the backward pass: code that cannot be traced often writes into
# its tensors later (``attn[..., 1:] = ...``), which would change what the rule reads
_READ_BACK = {"residual_sum", "gated_product", "product", "attention_product", "matrix_product", "attention"}
_MIXING_MODULES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)


def install(module: torch.nn.Module, names: ChildNames | None = None, forward: Callable | None = None) -> list[str]:
    """Give ``module`` the prototypes and the linear children over its own matrices, and a forward that routes its
    own operations while it runs; return the names added (to remove later). ``forward(module, *args, **kwargs)``:
    what runs instead of the class's forward (a breakdown of a fused one: :py:mod:`.breakdowns`)."""
    names = names or ChildNames(module)
    children = {kind: names.new(f"runtime_{kind.__name__.lower()}", make) for kind, make in PROTOTYPES.items()}
    own = {}  # id of a matrix of the module's own -> (plain, transposed) children's names
    for attribute, tensor in [*module._parameters.items(), *module._buffers.items()]:
        if tensor is not None and tensor.ndim == 2:
            own[id(tensor)] = (names.new(f"runtime_linear_{attribute}", lambda: None),
                               names.new(f"runtime_linear_{attribute}_t", lambda: None))
    added = []
    try:
        for kind, name in children.items():
            module.add_module(name, PROTOTYPES[kind]())
            added.append(name)
        for attribute, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if id(tensor) in own:
                for name, matrix in zip(own[id(tensor)], (tensor, tensor.t())):
                    module.add_module(name, linear_child(matrix.detach()))
                    added.append(name)
    except Exception:  # a name the module's own __setattr__ or add_module refuses: nothing left behind
        for name in added:
            module._modules.pop(name, None)
        raise
    module.__dict__["forward"] = RoutedForward(module, children, own, forward or type(module).forward)
    return added


def run_with_rule_of(prototype: torch.nn.Module, module: torch.nn.Module, *operands):
    """``module(*operands)`` with the rule registered on ``prototype``, a module of the same kind: the fast path's
    override runs it so (:py:meth:`~zennit_resnet_lrp.rules.core.ForwardOverride.run_as`); without one (no rule, or
    zennit's hooks) the module runs as it is."""
    run_as = getattr(prototype.__dict__.get("forward"), "run_as", None)
    return run_as(module, *operands) if run_as is not None else module(*operands)


class RoutedForward:
    """The module's own forward, run under a :py:class:`_Router`; the instance is the module's forward. It knows the
    module's prototypes by kind, its linear children by their weight, and remembers which of the modules the
    forward calls are gates (deciding that may trace them)."""

    __slots__ = ("module", "children", "own", "gate_modules", "function", "linears", "routing")

    def __init__(self, module: torch.nn.Module, children: dict[type, str], own: dict[int, tuple[str, str]],
                 function: Callable) -> None:
        self.module, self.children, self.own, self.function = module, children, own, function
        self.gate_modules: dict[int, bool] = {}
        self.linears: dict[int, str] | None = None  # id of a linear child's weight -> its name, made at first use
        self.routing: set[int] | None = None  # ids of the children this routing added, made at first use

    def routes_through(self, module: torch.nn.Module) -> bool:
        """Whether ``module`` is one of the children this routing added (a prototype, a linear child)."""
        if self.routing is None:
            names = [*self.children.values(), *(name for pair in self.own.values() for name in pair)]
            self.routing = {id(self.module.get_submodule(name)) for name in names}
        return id(module) in self.routing

    def is_gate(self, module: torch.nn.Module) -> bool:
        if id(module) not in self.gate_modules:
            self.gate_modules[id(module)] = is_gate_module(module)
        return self.gate_modules[id(module)]

    def linear_child(self, weight: Tensor) -> str | None:
        """The name of the module's linear child (at any depth) whose weight ``weight`` is."""
        if self.linears is None:
            self.linears = {id(child.weight): name for name, child in self.module.named_modules()
                            if isinstance(child, torch.nn.Linear) and not name.startswith("runtime_linear_")}
        return self.linears.get(id(weight))

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


class _Router(TorchFunctionMode, Facts):
    """Routes the operations of one call of the module's own forward (depth 0: not inside a child), answering the
    classifier's questions from what it has seen in this call. Tensors are held by id (and kept, so that ids stay
    unique for the call)."""

    def __init__(self, forward: RoutedForward, inputs: tuple) -> None:
        super().__init__()
        self.forward, self.module, self.depth = forward, forward.module, 0
        self.inputs = {id(t) for t in _tensors(inputs)}
        self.dependent_tensors: dict[int, Tensor] = {id(t): t for t in _tensors(inputs)}
        self.gates: dict[int, Tensor] = {}
        self.weights: dict[int, Tensor] = {}  # attention weights mixed across heads by a linear child
        self.sums: dict[int, tuple[tuple, tuple]] = {}  # output of a routed sum -> (operands, signs)
        self.uses: dict[int, int] = {}  # output of a routed sum -> how often it was an argument so far
        self.running = False  # while a routing child runs: its output is marked by the operation it stands for
        # tensors of the model's own (parameters, buffers) and those computed from them alone: handed to a child
        # beside input-dependent ones, they are tokens (a class token given to CaiT's class-attention blocks)
        self.model_tensors = {id(t) for t in (*self.module.parameters(), *self.module.buffers())}
        self.own: dict[int, Tensor] = {}

    # -- the classifier's questions --

    def dependent(self, value) -> bool:
        return isinstance(value, Tensor) and id(value) in self.dependent_tensors

    def computed(self, value) -> bool:
        return bool(_tensors(value))

    def gate(self, value) -> bool:
        return isinstance(value, Tensor) and id(value) in self.gates

    def attention_weights(self, value) -> bool:
        return isinstance(value, Tensor) and (id(value) in self.gates or id(value) in self.weights)

    def size_argument(self, value, source):
        return VARIABLE if self.computed(value) else value

    def sum_operands(self, value) -> tuple[tuple, tuple] | None:
        """As the traced path merges a sum that feeds only the sum using it: here, that nothing else has used so
        far (a use later in the forward is not known yet; relevance reaching it still goes through its own sum)."""
        if not isinstance(value, Tensor) or self.uses.get(id(value), 0) > 1:
            return None
        return self.sums.get(id(value))

    def skip(self, operands: tuple) -> tuple[int, bool]:
        own = [index for index, operand in enumerate(operands) if id(operand) in self.inputs]
        return (own[0], True) if own else (len(operands) - 1, False)

    # -- what the forward calls --

    def enter(self, module, args):
        marked = None
        if not self.depth and not self.running and not self.forward.routes_through(module):
            self._count_uses(args)
            marked = self._tokens_for_child(args)
        self.depth += 1
        return marked

    def _tokens_for_child(self, args: tuple) -> tuple | None:
        """A child called with tensors of the model's own beside input-dependent ones: those through a ``Token``, as
        the traced path marks them (the arguments as they are, None, where there are none)."""
        if not any(self.dependent(t) for t in _tensors(args)) or not any(self._is_own(t) for t in _tensors(args)):
            return None
        token = self.module.get_submodule(self.forward.children[Token])

        def through_token(value):
            if isinstance(value, (tuple, list)):
                return type(value)(through_token(item) for item in value)
            if isinstance(value, Tensor) and self._is_own(value):
                self.running = True
                try:
                    return token(value)
                finally:
                    self.running = False
            return value

        return through_token(args)

    def _is_own(self, value) -> bool:
        return isinstance(value, Tensor) and value.is_floating_point() and not self.dependent(value) and (
            id(value) in self.model_tensors or id(value) in self.own)

    def _count_uses(self, value) -> None:
        for tensor in _tensors(value):
            if id(tensor) in self.sums:
                self.uses[id(tensor)] = self.uses.get(id(tensor), 0) + 1

    def leave(self, module, args, kwargs, output) -> None:
        self.depth -= 1
        if self.depth or self.running or not _tensors(output) or not any(self.dependent(t) for t in _tensors((args, kwargs))):
            return
        given = [t for t in _tensors((args, kwargs)) if self.dependent(t)]
        passive = type(module).__name__ in PASSIVE_CHILDREN
        gate = passive and all(self.gate(t) for t in given) or self.forward.is_gate(module)
        weights = (passive or isinstance(module, _MIXING_MODULES)) and all(self.attention_weights(t) for t in given)
        self._mark(output, gate=gate, weights=weights)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # inside a child, or inside a custom autograd function's forward (autograd is off there): that function's own
        # backward carries relevance through it, as its author wrote it (named in the attribution's warnings)
        if self.depth or not torch.is_grad_enabled():
            return func(*args, **kwargs)
        op, target, traced_args = as_traced(func, tuple(args))
        self._count_uses((args, kwargs))
        result = self._route(op, target, traced_args, kwargs)
        if result is None:
            result = func(*args, **kwargs)
        given = _tensors((args, kwargs))
        if any(self.dependent(t) for t in given):
            moved = reshapes_only(op, target) and bool(traced_args) and self.attention_weights(traced_args[0])
            self._mark(result, gate=self._keeps_gate(op, target, traced_args), weights=moved)
        elif any(id(t) in self.model_tensors or id(t) in self.own for t in given):
            self.own.update((id(t), t) for t in _tensors(result))
        return result

    def _keeps_gate(self, op: str, target, args: tuple) -> bool:
        if makes_gate(op, target):
            return True
        if not keeps_gate(op, target):
            return False
        operands = [t for t in _tensors(args[:1] if reshapes_only(op, target) else args) if self.dependent(t)]
        return bool(operands) and all(self.gate(t) for t in operands)

    def _mark(self, value, gate: bool, weights: bool = False) -> None:
        for tensor in _tensors(value):
            self.dependent_tensors[id(tensor)] = tensor
            if gate:
                self.gates[id(tensor)] = tensor
            if weights:
                self.weights[id(tensor)] = tensor

    # -- routing --

    def _route(self, op: str, target, args: tuple, kwargs: dict):
        """The operation's result through a routing child, or None where it keeps its own gradient."""
        if _in_place(target) and args and self.dependent(args[0]):
            return self._in_place(op, target, args, kwargs)
        route = classify(op, target, args, kwargs, self)
        if route is not None:
            return self._run(route)
        if op == "call_function" and target is F.linear:
            return self._linear(*args, **kwargs)
        equation, operands = matrix_operands(op, target, args, kwargs)
        if operands is not None and equation is None:
            return self._own_matrix_product(*operands)
        return None

    def _run(self, route: Route):
        """A route's module called on its operands: the prototype where it is configured as the prototype is, else
        a module made for the route with the prototype's rule."""
        operands = route.operands
        if route.base in _READ_BACK:
            operands = tuple(o.clone() if isinstance(o, Tensor) else o for o in operands)
        if route.base == "tokens":
            return self._tokens(route)
        made = route.make()
        prototype = self.module.get_submodule(self.forward.children[type(made)])
        made.train(prototype.training)
        if route.layout is not None:
            operands = route.layout[0](*operands)
        self.running = True
        try:
            if _configured_alike(made, prototype):
                result = prototype(*operands)
            else:
                result = run_with_rule_of(prototype, made, *operands)
        finally:
            self.running = False
        if route.layout is not None:
            result = route.layout[1](result, *route.operands)
        if route.base == "residual_sum":
            self.sums[id(result)] = (route.operands, route.signs or (1,) * len(route.operands))
        return result

    def _in_place(self, op: str, target, args: tuple, kwargs: dict):
        """``target += other`` (and the like) routed: the routed result on a copy of ``target`` written into it, so
        that every reference to ``target`` sees the result and its gradient runs through the routing child."""
        tensor = args[0]
        copy = tensor.clone()
        self._mark(copy, gate=self.gate(tensor))
        if id(tensor) in self.inputs:
            self.inputs.add(id(copy))
        if id(tensor) in self.sums:  # a sum added to in place merges as the sum it is
            self.sums[id(copy)] = self.sums[id(tensor)]
        route = classify(op, target, (copy, *args[1:]), kwargs, self)
        if route is None:
            return None
        routed = self._run(route)
        if id(routed) in self.sums:  # moved to ``tensor``: ``routed`` is freed, and a later tensor may take its id
            self.sums[id(tensor)] = self.sums.pop(id(routed))
        return tensor.copy_(routed)

    def _tokens(self, route: Route):
        """A concatenation of input-dependent tensors with the model's own: the latter through a ``Token``, which
        reports the relevance they take."""
        made = route.make()
        token = self.module.get_submodule(self.forward.children[Token])
        marked = [token(o) if constant else o for o, constant in zip(route.operands, made.constant)]
        return torch.cat(marked, made.dim)

    def _linear(self, input, weight, bias=None):  # noqa: A002 - F.linear's names
        """``F.linear`` with the weight of a linear child (its bias swapped for the one given), or with a matrix of
        the module's own (through the linear child made over it)."""
        if not self.dependent(input):
            return None
        name = self.forward.linear_child(weight)
        if name is None and id(weight) in self.forward.own:
            name = self.forward.own[id(weight)][0]
        if name is None:
            return None
        child = self.module.get_submodule(name)
        output = child(input)
        if child.bias is not None and bias is not child.bias:
            output = output - child.bias
        if bias is not None and bias is not child.bias:
            output = output + bias
        return output

    def _own_matrix_product(self, first, second):
        """``x @ W`` with ``W`` a matrix of the module's own: its transpose's linear child on ``x``."""
        if not self.dependent(first) or self.dependent(second) or id(second) not in self.forward.own:
            return None
        return self.module.get_submodule(self.forward.own[id(second)][1])(first)


def _in_place(target) -> bool:
    try:
        return target in IN_PLACE
    except TypeError:  # an unhashable target
        return False


def _configured_alike(made: torch.nn.Module, prototype: torch.nn.Module) -> bool:
    """Whether a module made for a route is configured as the prototype is (then the prototype itself runs)."""
    try:
        return bool(plain_attributes(made) == plain_attributes(prototype))
    except (RuntimeError, TypeError, ValueError):  # attributes that do not compare (tensors)
        return False
