"""How a rule runs: one declaration (``keeps`` and ``relevance``) gives the fast path and zennit's hook path, for
modules of one input or several."""
import pytest
import torch

import zennit_resnet_lrp as lrp


class Product(torch.nn.Module):
    def forward(self, a, b):
        return a * b


class Halves(lrp.RelevanceRule):
    """The docstring's example: ``a * b``, half of the relevance to each factor."""

    keeps = ()

    def relevance(self, module, inputs, relevance):
        return relevance / 2, relevance / 2


class SecondOnly(lrp.RelevanceRule):
    """Keeps the second input alone and gives the first ``R * b``, the second nothing."""

    keeps = (1,)

    def relevance(self, module, inputs, relevance):
        assert inputs[0] is None and inputs[1] is not None
        return relevance * inputs[1], None


def _relevance(rule, module, *inputs):
    inputs = [x.clone().requires_grad_() for x in inputs]
    handle = rule.copy().register(module)
    try:
        output = module(*inputs)
        return torch.autograd.grad(output, inputs, torch.ones_like(output) * 3)
    finally:
        handle.remove()


@pytest.mark.parametrize("fast", [True, False])
def test_one_declaration_runs_on_both_paths(fast):
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, generator=generator), torch.randn(2, 3, generator=generator)
    module = Product()
    first, second = _relevance(Halves(fast=fast), module, a, b)
    torch.testing.assert_close(first, torch.full((2, 3), 1.5))
    torch.testing.assert_close(second, torch.full((2, 3), 1.5))
    first, second = _relevance(SecondOnly(fast=fast), module, a, b)
    torch.testing.assert_close(first, 3 * b)
    torch.testing.assert_close(second, torch.zeros(2, 3))  # no relevance: zeros of the input's shape
    assert "forward" not in module.__dict__ and not module._forward_pre_hooks and not module._forward_hooks


@pytest.mark.parametrize("fast", [True, False])
def test_broadcast_operands_get_their_relevance_summed(fast):
    """An operand broadcast in the forward (a gate of shape (N, C, 1, 1)) gets the relevance of all its copies."""
    features, scale = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 1, 1)
    _, second = _relevance(Halves(fast=fast), Product(), features, scale)
    torch.testing.assert_close(second, torch.full((2, 3, 1, 1), 1.5 * 16))


def test_the_rule_is_marked_among_the_forward_pre_hooks():
    """zennit's tools look for a module's rule among its forward pre-hooks; the fast path puts a marker there."""
    module, rule = Product(), Halves()
    handle = rule.register(module)
    assert [hook.__self__ for hook in module._forward_pre_hooks.values()] == [rule]
    handle.remove()
    assert not module._forward_pre_hooks


@pytest.mark.parametrize("rule", [None, lrp.RelevanceSplit(), lrp.RelevanceSplit(fast=False), lrp.PassThrough()])
def test_residual_sum_has_one_calling_convention(rule):
    """Whatever rule is registered on it (or none), a ResidualSum takes its operands as separate tensors."""
    module = lrp.ResidualSum(skip=1, signs=(1, -1, 1))
    handle = rule.copy().register(module) if rule is not None else None
    a, b, c = (torch.rand(2, 3, requires_grad=True) for _ in range(3))
    torch.testing.assert_close(module(a, b, c), a - b + c)
    assert not any(key in module.__dict__ for key in ("separate_branches",))
    if handle is not None:
        handle.remove()


@pytest.mark.parametrize("fast", [True, False])
def test_split_of_many_operands(fast):
    """Ratio: ``R_i = |h_i| / sum_j |h_j| R``; symmetric: ``R / n``; without identity splitting the identity skip
    gets nothing and the others share by ratio."""
    generator = torch.Generator().manual_seed(1)
    operands = [torch.randn(2, 5, generator=generator, dtype=torch.float64) for _ in range(3)]
    relevance = torch.ones(2, 5, dtype=torch.float64)
    magnitudes = torch.stack([x.abs() for x in operands])

    def split(rule, module):
        inputs = [x.clone().requires_grad_() for x in operands]
        handle = rule.copy().register(module)
        output = module(*inputs)
        result = torch.autograd.grad(output, inputs, relevance)
        handle.remove()
        return torch.stack(result)

    ratio = split(lrp.RelevanceSplit("ratio", fast=fast), lrp.ResidualSum())
    torch.testing.assert_close(ratio, magnitudes / magnitudes.sum(0), rtol=1e-12, atol=1e-15)
    half = split(lrp.RelevanceSplit("symmetric", fast=fast), lrp.ResidualSum())
    torch.testing.assert_close(half, torch.full_like(half, 1 / 3))
    latest = split(lrp.RelevanceSplit("ratio", split_identity=False, fast=fast), lrp.ResidualSum(skip=0))
    torch.testing.assert_close(latest[0], torch.zeros(2, 5, dtype=torch.float64))
    torch.testing.assert_close(latest[1:], magnitudes[1:] / magnitudes[1:].sum(0), rtol=1e-12, atol=1e-15)
