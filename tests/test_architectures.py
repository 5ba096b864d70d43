"""Every form a convolutional classifier takes that the ResNet rules did not cover, as a small hand-written model: the
default conserves on each (float64, to rounding), and the model is put back exactly."""
import pytest
import torch
import torch.nn.functional as F

import zennit_resnet_lrp as lrp
from helpers import make_inputs, randomize_batchnorm


class ConvNeXtBlock(torch.nn.Module):
    """7x7 depthwise convolution, layer norm channels-last after a permute, inverted bottleneck with GELU, layer
    scale by a parameter, residual addition."""

    def __init__(self, channels):
        super().__init__()
        self.dwconv = torch.nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = torch.nn.LayerNorm(channels)
        self.up, self.act, self.down = torch.nn.Linear(channels, 4 * channels), torch.nn.GELU(), \
            torch.nn.Linear(4 * channels, channels)
        self.gamma = torch.nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x):
        out = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        out = self.gamma * self.down(self.act(self.up(out)))
        return x + out.permute(0, 3, 1, 2)


class ThreeWaySum(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.a = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.b = torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 1), torch.nn.BatchNorm2d(channels))

    def forward(self, x):
        return F.relu(self.a(x) + self.b(x) + x)


class ScaledResidual(torch.nn.Module):
    """inception_resnet_v2's ``x * scale + shortcut`` and NFNet's ``out * alpha + shortcut`` with a layer scale."""

    def __init__(self, channels, scale=0.17):
        super().__init__()
        self.scale = scale
        self.branch = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.skip_gain = torch.nn.Parameter(torch.tensor(0.7))

    def forward(self, x):
        out = self.branch(F.relu(x)) * self.scale + x
        return out * self.skip_gain / 2.0 + x


class PoolMixer(torch.nn.Module):
    """PoolFormer: ``x + (pool(norm(x)) - norm(x))`` with a group norm, and a squared ReLU (StarReLU)."""

    def __init__(self, channels):
        super().__init__()
        self.norm = torch.nn.GroupNorm(1, channels)
        self.pool = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)

    def forward(self, x):
        normed = self.norm(x)
        return x + (self.pool(normed) - normed) + 0.5 * F.relu(x) ** 2


class StarBlock(torch.nn.Module):
    """StarNet: ``act(f1(x)) * f2(x)``, a product of two branches, neither a gate."""

    def __init__(self, channels):
        super().__init__()
        self.f1, self.f2 = torch.nn.Conv2d(channels, 2 * channels, 1), torch.nn.Conv2d(channels, 2 * channels, 1)
        self.g = torch.nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x):
        return x + self.g(F.relu6(self.f1(x)) * self.f2(x))


class ShortcutArgument(torch.nn.Module):
    """DLA: the shortcut arrives as a forward argument, ``out += shortcut``."""

    def __init__(self, channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, shortcut=None):
        out = self.conv(x)
        out += x if shortcut is None else shortcut
        return F.relu(out)


class DlaLike(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.project = torch.nn.Conv2d(channels, channels, 1)
        self.block = ShortcutArgument(channels)

    def forward(self, x):
        return self.block(F.relu(self.project(x)), x)


class FunctionalNorms(torch.nn.Module):
    """Layer norm and RMS norm written as functions, a module RMSNorm, a normalisation by the norm itself."""

    def __init__(self, channels):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(channels) + 0.5)
        self.rms = torch.nn.RMSNorm(channels)
        self.conv = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        out = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, None, 1e-6)
        out = self.rms(out).permute(0, 3, 1, 2)
        out = out / out.norm(dim=1, keepdim=True).clamp_min(1e-6)
        return x + self.conv(out)


class FixedTransform(torch.nn.Module):
    """A fixed linear transform held in a buffer and applied by ``F.linear`` (CSATv2's discrete cosine transform)."""

    def __init__(self, channels):
        super().__init__()
        self.register_buffer("basis", torch.linalg.qr(torch.randn(channels, channels))[0])
        self.conv = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x + self.conv(F.linear(x.permute(0, 2, 3, 1), self.basis).permute(0, 3, 1, 2))


class OwnMatrix(torch.nn.Module):
    """A product with a matrix of the block's own, ``x @ self.w`` (SwiftFormer's ``query @ self.w_g``)."""

    def __init__(self, channels):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(channels, channels))
        self.conv = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x + self.conv((x.permute(0, 2, 3, 1) @ self.w).permute(0, 3, 1, 2))


def classifier(*blocks, channels=8):
    return torch.nn.Sequential(torch.nn.Conv2d(3, channels, 3, padding=1), torch.nn.BatchNorm2d(channels),
                               torch.nn.ReLU(), *blocks, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(channels, 10))


ARCHITECTURES = {
    "permuted layer norm, layer scale": lambda: classifier(ConvNeXtBlock(8), ConvNeXtBlock(8)),
    "three-way sum": lambda: classifier(ThreeWaySum(8), ThreeWaySum(8)),
    "scaled residuals": lambda: classifier(ScaledResidual(8), ScaledResidual(8, 0.5)),
    "pool(x) - x, group norm, squared ReLU": lambda: classifier(PoolMixer(8), PoolMixer(8)),
    "product of branches": lambda: classifier(StarBlock(8), StarBlock(8)),
    "shortcut as an argument": lambda: classifier(DlaLike(8), DlaLike(8)),
    "functional norms": lambda: classifier(FunctionalNorms(8)),
    "F.linear with a buffer, x @ a parameter": lambda: classifier(FixedTransform(8), FixedTransform(8), OwnMatrix(8),
                                                                   OwnMatrix(8)),
}


def _build(name):
    torch.manual_seed(0)
    model = ARCHITECTURES[name]()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm)):
                module.weight.uniform_(0.5, 1.5)
                if getattr(module, "bias", None) is not None:
                    module.bias.normal_(0, 0.3)
    return randomize_batchnorm(model).double().eval()


def _state(model):
    return ({key: value.clone() for key, value in model.state_dict().items()},
            [(name, id(module)) for name, module in model.named_modules()])


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_default_conserves_and_restores(name):
    model = _build(name)
    state, modules = _state(model)
    plain = lrp.attribute(model, make_inputs(2, 16), lrp.FlowsSkip(), tolerance=None)
    result = lrp.attribute(model, make_inputs(2, 16), record_blocks=True)
    assert float(result.conservation_error.max()) <= 1e-12, name
    assert result.blocks and not result.untraced
    for block in result.blocks:
        assert float(((block.input - block.output) / result.start).abs().max()) <= 1e-12, block.name
    assert float((plain.total / plain.start).max()) <= 1 + 1e-9  # the paper's variant: nothing created either
    after, modules_after = _state(model)
    assert modules_after == modules and after.keys() == state.keys()
    assert all(torch.equal(after[key], value) for key, value in state.items())
    assert all("forward" not in module.__dict__ and not module._forward_pre_hooks for module in model.modules())


def test_nothing_of_the_first_call_is_baked_in():
    """A composite made once traces each module once; a second call with another batch and input size works and
    conserves as the first."""
    model = classifier(ConvNeXtBlock(8), StarBlock(8), DlaLike(8), PoolMixer(8)).double().eval()
    composite = lrp.make_composite()
    for count, size in ((2, 16), (3, 21), (1, 9)):
        result = lrp.attribute(model, make_inputs(count, size), composite)
        assert result.relevance.shape == (count, 3, size, size)
        assert float(result.conservation_error.max()) <= 1e-12


def test_routed_operations():
    """The tracer routes each operation through the module whose rule conserves it."""
    model = classifier(ThreeWaySum(8), ScaledResidual(8), PoolMixer(8), StarBlock(8), DlaLike(8))
    with lrp.FlowsSkipConservative().context(model):
        kinds = {name: type(module).__name__ for name, module in model.named_modules()}
        sums = {name: module for name, module in model.named_modules() if isinstance(module, lrp.ResidualSum)}
    three = [module for name, module in sums.items() if name.startswith("3.")]
    assert len(three) == 1 and three[0].signs is None  # a + b + x: one sum of three operands
    mixer = [module for name, module in sums.items() if name.startswith("5.")]
    assert sorted(m.signs or (1, 1, 1) for m in mixer) == [(1, 1, -1, 1)]  # x + (pool - normed) + 0.5 relu(x)^2
    assert sum(kind == "Scale" for kind in kinds.values()) >= 4  # x * scale, * skip_gain, / 2.0, 0.5 *
    assert "Product" in kinds.values() and "Elementwise" in kinds.values()
    argument = [module for name, module in sums.items() if name.startswith("7.")]
    # traced with the shortcut given and without: either way the block's own input (an argument) is the skip
    assert len(argument) == 2 and all(module.identity_skip for module in argument)


def test_a_linear_map_of_a_matrix_of_the_block_goes_through_a_linear_child_that_shares_it():
    """Each block's child computes with that block's own matrix (the rewrite is traced once for blocks of the same
    structure), the transpose of it for ``x @ W``."""
    model = _build("F.linear with a buffer, x @ a parameter")
    blocks = list(model[3:7])
    with lrp.make_composite().context(model):
        for block in blocks:
            linears = [module for module in block.modules() if isinstance(module, torch.nn.Linear)]
            matrix = block.basis if isinstance(block, FixedTransform) else block.w.t()
            assert len(linears) == 1 and torch.equal(linears[0].weight, matrix)
            assert linears[0].weight.data_ptr() == matrix.data_ptr() and not linears[0].weight.requires_grad
    assert not any(isinstance(module, torch.nn.Linear) for block in blocks for module in block.modules())


def test_weight_standardised_and_same_padded_convolutions():
    """timm's weight-standardised convolutions: z+ uses the weights their forward computes with; timm's "same"
    convolutions and max-pools pad at run time as the rules do (odd sizes included)."""
    timm = pytest.importorskip("timm.layers")
    from zennit_resnet_lrp.rules.maps import effective_weight, same_padding

    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    for conv in (timm.StdConv2d(4, 6, 3), timm.ScaledStdConv2d(4, 6, 3), timm.StdConv2dSame(4, 6, 3, stride=2),
                 timm.ScaledStdConv2dSame(4, 6, 3, stride=2), timm.Conv2dSame(4, 6, 3, stride=2)):
        conv = conv.double()
        with torch.no_grad():
            conv.weight.normal_()
            padding = same_padding(conv, x)
            direct = F.conv2d(F.pad(x, padding) if padding else x, effective_weight(conv), conv.bias, conv.stride,
                              conv.padding, conv.dilation, conv.groups)
            torch.testing.assert_close(direct, conv(x), rtol=1e-10, atol=1e-10, msg=type(conv).__name__)
    from timm.layers.pool2d_same import MaxPool2dSame

    model = torch.nn.Sequential(timm.Conv2dSame(3, 8, 3, stride=2), torch.nn.ReLU(), MaxPool2dSame(3, 2),
                                timm.StdConv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 10)).double().eval()
    for size in (15, 16):
        result = lrp.attribute(model, make_inputs(2, size))
        assert result.relevance.shape[-1] == size and float(result.conservation_error.max()) <= 1e-12
