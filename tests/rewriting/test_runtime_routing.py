"""Modules torch.fx cannot trace, routed while they run: each block below is written twice, once traceable and once
with a branch on a tensor's value (which tracing cannot follow); the relevance of the untraceable one, routed at run
time, must equal the traced one's in every variant, and the model must come back exactly as it was."""
import pytest
import torch
import torch.nn.functional as F

import zennit_resnet_lrp as lrp
from torch.nn.modules import module as torch_module

TOLERANCE = 1e-12


def _untraceable(x: torch.Tensor) -> bool:
    return bool(x.sum() > float("-inf"))  # always True, but a tensor's value: torch.fx cannot trace the branch


class Residual(torch.nn.Module):
    """``x + body(x)`` in place, with a projection skip in a second operand and a scaled branch."""

    def __init__(self, untraceable: bool) -> None:
        super().__init__()
        self.untraceable = untraceable
        self.body = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU())
        self.projection = torch.nn.Conv2d(4, 4, 1)
        self.gamma = torch.nn.Parameter(torch.rand(4, 1, 1) + 0.5)

    def forward(self, x):
        if self.untraceable and not _untraceable(x):
            return x
        out = self.body(x) * self.gamma
        out += x
        return out - F.relu(self.projection(x)) * 0.5


class Gated(torch.nn.Module):
    """Squeeze-excitation and a product of two branches, with blocks held in a list (grandchildren)."""

    def __init__(self, untraceable: bool) -> None:
        super().__init__()
        self.untraceable = untraceable
        self.squeeze = torch.nn.Conv2d(4, 4, 1)
        self.branches = torch.nn.ModuleList([torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(2)])

    def forward(self, x):
        if self.untraceable and not _untraceable(x):
            return x
        gate = torch.sigmoid(self.squeeze(x.mean((2, 3), keepdim=True)))
        first, second = (branch(x) for branch in self.branches)
        return x * gate + F.gelu(first) * second


class TokenAttention(torch.nn.Module):
    """A class token concatenated to the patches, softmax attention over them, a functional linear layer with a
    child's weight, and a write into a tensor a sum has read (``attn[..., 1:] = ...``)."""

    def __init__(self, untraceable: bool) -> None:
        super().__init__()
        self.untraceable = untraceable
        self.token = torch.nn.Parameter(torch.randn(1, 1, 4))
        self.qkv = torch.nn.Linear(4, 12)
        self.proj = torch.nn.Linear(4, 4)
        self.norm = torch.nn.LayerNorm(4)

    def forward(self, x):
        if self.untraceable and not _untraceable(x):
            return x
        tokens = x.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.token.expand(x.shape[0], -1, -1), tokens], 1)
        q, k, v = F.linear(self.norm(tokens), self.qkv.weight, self.qkv.bias).chunk(3, -1)
        logits = q @ k.transpose(-2, -1)
        bias = torch.zeros_like(logits)
        logits = logits + bias
        if self.untraceable:
            bias[..., 1:] = 1.0  # written after the sum read it: the routed sum must not see this
        attention = logits.softmax(-1)
        tokens = tokens + self.proj(attention @ v)
        return tokens[:, 1:].transpose(1, 2).reshape(x.shape)


def _layout(model: torch.nn.Module) -> list:
    """What routing may change: modules, their attributes, hooks (the module's and the global ones)."""
    return [(name, id(m), sorted(m.__dict__), len(m._forward_hooks), len(m._forward_pre_hooks))
            for name, m in model.named_modules()] + [len(torch_module._global_forward_hooks),
                                                     len(torch_module._global_forward_pre_hooks)]


def _model(block: type, untraceable: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), block(untraceable), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).double().eval()


# a three-way sum (Residual's) is split pairwise at run time: the same under the ratio split, not under the rule of
# simple and latest that an identity skip among several operands gets nothing
CASES = [(block, method) for block in (Residual, Gated, TokenAttention)
         for method in ("flows_skip_conservative", "flows_skip", "simple", "latest")
         if block is not Residual or method not in ("simple", "latest")]


@pytest.mark.parametrize("block, method", CASES)
def test_routed_while_running_equals_traced(block, method):
    routed, traced = _model(block, True), _model(block, False)
    inputs = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)).double()
    before = _layout(routed)
    expected = routed(inputs)
    result = lrp.attribute(routed, inputs, method, tolerance=None)
    reference = lrp.attribute(traced, inputs, method, tolerance=None)
    assert [kind for _, kind, _ in result.untraced] == [block.__name__] and not reference.untraced
    assert "routed while it runs" in result.untraced[0][2]
    torch.testing.assert_close(result.relevance, reference.relevance, rtol=0, atol=TOLERANCE)
    if method == "flows_skip_conservative":
        total = result.total + (result.absorbed if result.absorbed is not None else 0)
        assert float(((total - result.start) / result.start).abs().max()) <= 1e-12
    assert torch.equal(routed(inputs), expected) and _layout(routed) == before


def test_second_call_with_other_batch_and_size():
    model = _model(TokenAttention, True)
    composite = lrp.make_composite()
    for count, size in ((2, 8), (3, 6)):
        inputs = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(count)).double()
        result = lrp.attribute(model, inputs, composite)
        assert result.relevance.shape == inputs.shape
        total = result.total + result.absorbed
        assert float(((total - result.start) / result.start).abs().max()) <= 1e-12


def test_nothing_routed_outside_an_attribution():
    model = _model(Gated, True)
    inputs = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)).double()
    composite = lrp.make_composite()
    with composite.context(model) as modified:
        assert "forward" in modified[2].__dict__ and any(name.startswith("runtime_") for name in modified[2]._modules)
        with torch.no_grad():
            torch.testing.assert_close(modified(inputs), _model(Gated, False)(inputs), rtol=0, atol=0)
    assert "forward" not in model[2].__dict__ and not any(name.startswith("runtime_") for name in model[2]._modules)
