"""The residual canonizer: which blocks it finds, outputs unchanged, sums in place, one remove() undoes it."""
import types

import pytest
import torch
from torchvision.models.resnet import BasicBlock, Bottleneck

import zennit_resnet_lrp as lrp
from helpers import make_inputs, make_model, randomize_batchnorm
from zennit_resnet_lrp.rewriting.breakdowns import BREAKDOWNS


class TwoBlockNet(torch.nn.Module):
    """A custom model assembled from torchvision's blocks."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = torch.nn.ModuleDict({
            "plain": BasicBlock(8, 8),
            "wide": Bottleneck(8, 4, downsample=torch.nn.Sequential(
                torch.nn.Conv2d(8, 16, 1, bias=False), torch.nn.BatchNorm2d(16))),
        })
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        x = self.blocks["wide"](self.blocks["plain"](torch.relu(self.stem(x))))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("build, rewritten", [
    (lambda: make_model("resnet18"), 0),
    (lambda: randomize_batchnorm(TwoBlockNet()).double().eval(), 1),  # its forward's torch.relu and mean, traced
])
def test_canonized_outputs_equal_and_sums_in_place(build, rewritten):
    model = build()
    x = make_inputs(2, 32)
    with torch.no_grad():
        expected = model(x)
    blocks = lrp.residual_blocks(model)
    handles = lrp.ResidualCanonizer().apply(model)
    try:
        assert len(handles) == len(blocks) + rewritten and blocks
        for _, block in blocks:
            assert isinstance(block.residual_sum, lrp.ResidualSum)
            assert block.residual_sum.identity_skip == (block.downsample is None)
        with torch.no_grad():
            assert torch.equal(model(x), expected)
    finally:
        for handle in handles:
            handle.remove()
    assert not any(isinstance(m, (lrp.ResidualSum, lrp.FunctionalPool)) for m in model.modules())
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_finds_blocks_in_every_family():
    counts = {"resnet18": 8, "resnet34": 16, "resnet50": 16, "resnext50_32x4d": 16, "wide_resnet50_2": 16}
    for name, count in counts.items():
        assert len(lrp.residual_blocks(make_model(name, dtype=torch.float32))) == count, name


def test_zennit_composites_get_their_norm_rule_at_our_sums():
    """zennit's composites map their stacked ``Sum`` to ``Norm``; by name they get the same rule at our sums, whose
    operands come separately: equal to zennit's Norm on the stacked operands."""
    from zennit.composites import EpsilonPlusFlat
    from zennit.layer import Sum
    from zennit.rules import Norm

    composite = lrp.make_composite("epsilon_plus_flat")
    rule = composite.module_map({}, "sum", lrp.ResidualSum())
    assert isinstance(rule, lrp.RelevanceSplit) and rule.mode == "signed"
    assert isinstance(EpsilonPlusFlat().module_map({}, "sum", Sum()), Norm)
    generator = torch.Generator().manual_seed(0)
    residual, skip = (torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64) for _ in range(2))
    relevance = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)

    stacked = torch.stack([residual, skip], dim=-1).requires_grad_()
    norm_module, norm = Sum(), Norm()
    handle = norm.register(norm_module)
    (expected,) = torch.autograd.grad(norm_module(stacked), stacked, relevance)
    handle.remove()
    ours = rule.relevance(lrp.ResidualSum(), (residual, skip), relevance)
    torch.testing.assert_close(torch.stack(ours, dim=-1), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["preact_resnet", "torchvision/resnet18"])
def test_batchnorm_merged_along_the_data_flow_keeps_the_function(name):
    """The *_split composites merge a batch norm into the linear layer that feeds it; in a pre-activation block the
    batch norm after a convolution in module order normalises a sum: merging it there changed the output by 73%."""
    from helpers import build

    model, inputs = build(name), make_inputs(2, 32)
    with torch.no_grad():
        expected = model(inputs)
    pairs = lrp.batchnorm_pairs(model)
    if name == "preact_resnet":
        assert pairs == [(model.layers[0].conv1, model.layers[0].bn2), (model.layers[1].conv1, model.layers[1].bn2),
                         (model.layers[2].conv1, model.layers[2].bn2)]
    else:
        assert len(pairs) == 20  # every convolution but the downsampling ones' partners: 17 + 3 projections
    for method in ("epsilon_plus_flat_split", "epsilon_gamma_box_split", "epsilon_alpha2_beta1_split"):
        composite = lrp.make_composite(method)
        with composite.context(model), torch.no_grad():
            merged = model(inputs)
        torch.testing.assert_close(merged, expected, rtol=1e-12, atol=1e-12 * float(expected.abs().max()))


def _glu_breakdown() -> types.SimpleNamespace:
    """A breakdown of ``nn.GLU`` through a ``GatedProduct`` child, as a user would write one (docs/howto-breakdown.md)."""
    def decompose(module, name):
        module.add_module("gated", lrp.GatedProduct())

        def forward(x):
            features, gate = x.chunk(2, module.dim)
            return module.gated(features, gate.sigmoid())
        module.__dict__["forward"] = forward
        return ["gated"]
    return types.SimpleNamespace(NOTE="written out by the test", decompose=decompose,
                                 matches=lambda module: isinstance(module, torch.nn.GLU))


def test_breakdowns_parameter_is_the_table_asked():
    """``breakdowns`` replaces the package's table: a breakdown added there writes its module out (the same output,
    through the child, reported with its note, kept by ``copy()``, undone by ``remove()``); an empty table leaves
    the package's own fused modules whole."""
    modules = torch.nn.ModuleDict({"glu": torch.nn.GLU(), "attention": torch.nn.MultiheadAttention(4, 2)})
    x = torch.randn(3, 8)
    expected = modules["glu"](x)
    canonizer = lrp.ResidualCanonizer(breakdowns=(*BREAKDOWNS, _glu_breakdown())).copy()
    handles = canonizer.apply(modules)
    try:
        calls = []
        modules["glu"].gated.register_forward_hook(lambda *args: calls.append(1))
        torch.testing.assert_close(modules["glu"](x), expected)
        assert calls and hasattr(modules["attention"], "attention")  # the package's own still apply
        assert ("glu", "GLU", "written out by the test") in canonizer.untraced
    finally:
        for handle in handles:
            handle.remove()
    assert not hasattr(modules["glu"], "gated") and "forward" not in modules["glu"].__dict__
    assert lrp.ResidualCanonizer(breakdowns=()).apply(modules) == []
    assert not hasattr(modules["attention"], "attention")
