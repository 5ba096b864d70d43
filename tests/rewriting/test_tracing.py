"""Residual additions, gates and functional operations found by tracing, on ResNets beyond torchvision's classes:
timm's, RegNet, hand-written CIFAR and pre-activation ResNets. Random weights, random batch-norm statistics,
float64, 64x64 inputs."""
import pytest
import torch

import zennit_resnet_lrp as lrp
from helpers import LambdaLayer, build, make_inputs, make_model

TOLERANCE = 1e-5


# (name, residual blocks); the resnet50-sized ones are slow
FAMILIES = [
    ("cifar_resnet20", 9), ("preact_resnet", 3), ("resnet18", 8), ("seresnext26d_32x4d", 8), ("ecaresnet26t", 8),
    ("skresnet18", 8), ("regnety_002", 13), ("torchvision/regnet_y_400mf", 16),
    *[pytest.param(name, count, marks=pytest.mark.slow) for name, count in (
        ("resnet50", 16), ("resnet50d", 16), ("resnext50_32x4d", 16), ("resnetv2_50", 16), ("res2net50_26w_4s", 16),
    )],
]


@pytest.mark.parametrize("name, blocks", FAMILIES)
def test_default_conserves_at_input_and_every_block(name, blocks):
    model = build(name)
    report = lrp.check_conservation(model, make_inputs(2, 64), tolerance=TOLERANCE)
    result = report.attribution
    assert report.passed, report.format_table()
    assert len(result.blocks) == blocks and not result.untraced
    for block in result.blocks:
        assert float(((block.input - block.output) / result.start).abs().max()) <= TOLERANCE, block.name


@pytest.mark.parametrize("name", ["cifar_resnet20", "preact_resnet", "seresnext26d_32x4d", "regnety_002",
                                  pytest.param("resnetv2_50", marks=pytest.mark.slow)])
def test_paper_variants_run_and_nothing_doubles(name):
    model, inputs = build(name), make_inputs(2, 64)
    for variant in lrp.PAPER_VARIANTS:
        result = lrp.attribute(model, inputs, variant, tolerance=None)
        ratio = result.total / result.start
        assert bool(torch.isfinite(result.relevance).all()) and float(ratio.max()) <= 1 + 1e-9, variant
        if variant == "flows_skip":  # the reference's leaks only: a few percent
            assert float(ratio.min()) >= 0.85, ratio


@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_tracing_torchvision_blocks_equals_the_direct_path(name):
    model, inputs = make_model(name), make_inputs(2, 64)
    for method in [lrp.DEFAULT_METHOD, *lrp.PAPER_VARIANTS]:
        direct = lrp.attribute(model, inputs, method, tolerance=None).relevance
        traced_composite = type(lrp.make_composite(method))(canonizers=[lrp.ResidualCanonizer(direct=False)])
        traced = lrp.attribute(model, inputs, traced_composite, tolerance=None).relevance
        torch.testing.assert_close(traced, direct, rtol=1e-12, atol=1e-12 * float(direct.abs().max()))


def _routed(model, composite=None):
    """The modules the canonizer added, while the composite is registered."""
    composite = composite or lrp.FlowsSkipConservative()
    with composite.context(model):
        return {name: module for name, module in model.named_modules()
                if isinstance(module, (lrp.ResidualSum, lrp.GatedProduct, lrp.FunctionalPool, torch.nn.ReLU))}


def test_identity_and_padding_shortcuts_told_apart():
    model = build("cifar_resnet20")
    sums = {name: module for name, module in _routed(model).items() if isinstance(module, lrp.ResidualSum)}
    identity = {name.rsplit(".", 1)[0] for name, module in sums.items() if module.identity_skip}
    # the first block of stages 2 and 3 pads and subsamples; every other block adds its input itself
    assert set(f"layers.{i}" for i in range(9)) - identity == {"layers.3", "layers.6"}
    assert len(sums) == 9


def test_functional_operations_routed_as_their_modules():
    """The CIFAR ResNet with functional ReLUs and average pool gives the relevance of the same network written with
    modules (nn.ReLU, nn.AvgPool2d), which the composites know without tracing."""
    functional = build("cifar_resnet20")
    routed = _routed(functional)
    assert any(isinstance(m, lrp.FunctionalPool) for m in routed.values())
    assert sum(isinstance(m, torch.nn.ReLU) for m in routed.values()) == 1 + 2 * 9

    class ModuleForm(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.relu, self.pool = net, torch.nn.ReLU(), torch.nn.AvgPool2d(16)

        def forward(self, x):
            out = self.relu(self.net.bn1(self.net.conv1(x)))
            for block in self.net.layers:
                residual = self.relu(block.bn1(block.conv1(out)))
                residual = block.bn2(block.conv2(residual))
                out = self.relu(block.residual_sum.add(residual, block.shortcut(out)))
            return self.net.linear(self.pool(out).flatten(1))

    inputs = make_inputs(2, 64)
    expected = lrp.attribute(functional, inputs, "flows_skip", tolerance=None).relevance
    for index, block in enumerate(functional.layers):
        block.residual_sum = lrp.ResidualSum(identity_skip=index not in (3, 6))
    by_hand = lrp.attribute(ModuleForm(functional), inputs, "flows_skip", tolerance=None).relevance
    torch.testing.assert_close(expected, by_hand, rtol=1e-12, atol=1e-14)


def test_gates_give_the_gate_no_relevance():
    """Squeeze-excitation: the product is routed, and the gate's branch (SE's convolutions) receives nothing (the fast
    path does not walk it; the hook path below hands it zeros, with the same relevance at the input)."""
    model = build("seresnext26d_32x4d")
    assert sum(isinstance(m, lrp.GatedProduct) for m in _routed(model).values()) == 8
    inputs = make_inputs(1, 64)
    names = ["layer1.0.se.fc1", "layer1.0.se.fc2", "layer1.0.conv3"]
    with lrp.FlowsSkipConservative().context(model):
        recorder = lrp.RelevanceRecorder({name: model.get_submodule(name) for name in names}).register()
        x = inputs.clone().requires_grad_()
        output = model(x)
        torch.autograd.grad(output, x, torch.eye(10, dtype=x.dtype)[[3]])
        recorder.remove()
    records = {record.name: record for record in recorder.results()}
    for name in ("layer1.0.se.fc1", "layer1.0.se.fc2"):  # the gate is detached: its branch is not even walked
        assert name not in records or float(records[name].output.abs().max()) == 0
    assert float(records["layer1.0.conv3"].output.abs().max()) > 0


def test_hook_path_equals_fast_path_with_gates_and_functional_pools():
    model, inputs = build("seresnext26d_32x4d"), make_inputs(2, 64)
    fast = lrp.attribute(model, inputs, lrp.FlowsSkipConservative(), tolerance=None).relevance
    hooked = lrp.attribute(model, inputs, lrp.FlowsSkipConservative(fast=False), tolerance=None).relevance
    torch.testing.assert_close(hooked, fast, rtol=1e-10, atol=1e-12 * float(fast.abs().max()))


@pytest.mark.parametrize("name", ["cifar_resnet20", "seresnext26d_32x4d"])
def test_model_restored_exactly(name):
    model = build(name)
    modules = dict(model.named_modules())
    state = {key: value.clone() for key, value in model.state_dict().items()}
    lrp.attribute(model, make_inputs(1, 64), "epsilon_plus_flat_split", tolerance=None)
    lrp.attribute(model, make_inputs(1, 64))
    assert dict(model.named_modules()).keys() == modules.keys()
    assert all(model.get_submodule(key) is module for key, module in modules.items() if key)
    assert all("forward" not in module.__dict__ for module in model.modules())
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


def test_tracing_is_cached_but_follows_changed_children():
    model = build("cifar_resnet20")
    first = _routed(model)
    model.layers[0].shortcut = LambdaLayer(lambda x: x)  # a new child: the block is traced again
    second = _routed(model)
    assert first.keys() == second.keys()
    assert not second["layers.0.residual_sum"].identity_skip  # the skip now goes through a module of its own
    model.layers[0].shortcut = torch.nn.Sequential()  # a new child of an earlier type: traced again too
    assert _routed(model)["layers.0.residual_sum"].identity_skip


class _DecoderBlock(torch.nn.Module):
    """segmentation_models_pytorch's Linknet decoder block in small: a skip added where it is given and has
    channels, a condition torch.fx cannot trace (the form without the skip traces)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x, skip=None):
        x = torch.relu(self.conv(x))
        if skip is not None and skip.shape[1] != 0:
            x = x + skip
        return x


class _Decoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block, self.head = torch.nn.Conv2d(3, 4, 1), _DecoderBlock(), torch.nn.Conv2d(4, 2, 1)

    def forward(self, x):
        features = torch.relu(self.stem(x))
        return self.head(self.block(features, features))


def test_a_call_form_that_does_not_trace_is_routed_while_it_runs():
    """Traced without the skip and called with one, the block's addition ran unrouted (the skip got the whole
    relevance again: 2x the start); the block is routed while it runs instead."""
    torch.manual_seed(0)
    model = _Decoder().double().eval()
    inputs = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = lrp.attribute(model, inputs, target=lrp.Region(0), tolerance=None)
    torch.testing.assert_close(result.relevance.sum(), result.start.sum(), rtol=1e-10, atol=0)
    assert any("skip given" in reason for _, _, reason in result.untraced)


class CachedBias(torch.nn.Module):
    """LeViT's attention bias in short: in eval mode a bias made from a parameter is cached in a plain dict keyed by
    the input's device (tracing keys it by a proxy), and added to a residual branch."""

    def __init__(self, channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.bias = torch.nn.Parameter(torch.randn(channels, 1, 1))
        self.bias_cache = {}
        self.calls = []

    def cached_bias(self, device):
        key = str(device)
        if key not in self.bias_cache:
            self.bias_cache[key] = self.bias * 2
        return self.bias_cache[key]

    def forward(self, x):
        self.calls.append(len(self.calls))
        return x + self.conv(x) + self.cached_bias(x.device)


def test_tracing_leaves_a_forward_s_cache_as_it_was_and_attributes_again():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), CachedBias(4),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10))
    model = model.double().eval()
    block = model[2]
    state = {key: value.clone() for key, value in model.state_dict().items()}
    cache, calls = block.bias_cache, block.calls
    composite = lrp.make_composite()
    for used in (composite, composite, lrp.make_composite()):  # a second trace read the first's proxy: KeyError
        result = lrp.attribute(model, make_inputs(1, 8), used)
        assert float(result.conservation_error.max()) <= 1e-10
        assert block.bias_cache is cache and block.bias_cache == {} and block.calls is calls
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())


class _ResponseNormalised(torch.nn.Module):
    """ConvNeXt V2's global response normalisation after a convolution: ``x + gamma * x * N(x) + beta`` with
    ``N(x) = ||x|| / mean(||x||)`` over the map (channels last), a statistic of the features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.Linear(6, 2)
        self.gamma, self.beta = torch.nn.Parameter(torch.randn(6)), torch.nn.Parameter(torch.randn(6))

    def forward(self, x):
        x = self.conv(x).permute(0, 2, 3, 1)
        norms = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        x = self.gamma * (x * (norms / (norms.mean(dim=-1, keepdim=True) + 1e-6))) + self.beta + x
        return self.head(x.mean((1, 2)))


@pytest.mark.parametrize("runtime_only", [False, True])
def test_a_norm_of_the_features_is_held_constant_in_a_product(runtime_only):
    """The normalisation statistic gets no relevance (it would lose it: 9% on Hugging Face's ConvNeXt V2), on both
    paths."""
    torch.manual_seed(0)
    model = _ResponseNormalised().double().eval()
    method = lrp.FlowsSkipConservative(canonizers=[lrp.ResidualCanonizer(runtime_only=runtime_only)])
    result = lrp.attribute(model, make_inputs(2, 8), method, tolerance=None)
    assert float(result.conservation_error.max()) < 1e-12
