"""The residual canonizer: which blocks it finds, outputs unchanged, sums in place, one remove() undoes it."""
import pytest
import torch
from torchvision.models.resnet import BasicBlock, Bottleneck

import zennit_resnet_lrp as lrp
from helpers import make_inputs, make_model, randomize_batchnorm


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


def test_zennit_sum_rule_applies_to_residual_sum():
    """ResidualSum is a zennit Sum: zennit's composites map it to Norm."""
    from zennit.composites import EpsilonPlusFlat
    from zennit.rules import Norm

    composite = EpsilonPlusFlat()
    assert isinstance(composite.module_map({}, "sum", lrp.ResidualSum()), Norm)
