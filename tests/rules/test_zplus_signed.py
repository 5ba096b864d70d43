"""z+ on signed inputs from the module's own output, ``(W a + |W| |a|) / 2``, against the two-halves form
``a+ W+ + a- W-`` (:py:meth:`ZPlus.proportional`), including layers built so that the two terms cancel."""
import pytest
import torch

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.rules.core import KeptOutput
from zennit_resnet_lrp.rules.zplus import DROP, FLAT, ZPlus, computes_product

pytestmark = pytest.mark.filterwarnings("ignore:found no residual addition")

# relative to the largest relevance: rounding of float64 sums of a few hundred terms
FLOAT64 = 1e-12
FLOAT32 = 1e-5


def _both_forms(rule: ZPlus, module: torch.nn.Module, x: torch.Tensor, seed: int = 1):
    """(from the output, two halves, start relevance) for ``module`` on ``x``."""
    with torch.no_grad():
        output = module(x)
    relevance = torch.rand(output.shape, generator=torch.Generator().manual_seed(seed), dtype=output.dtype)
    new = rule.relevance(module, (x,), relevance, output=output)
    old = rule.proportional(module, x, relevance)
    return new, old, relevance


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


LAYERS = {
    "linear": (lambda: torch.nn.Linear(48, 24), (6, 48)),
    "linear over tokens": (lambda: torch.nn.Linear(32, 40), (2, 5, 32)),
    "conv1d": (lambda: torch.nn.Conv1d(6, 5, 3, padding=2, dilation=2), (2, 6, 17)),
    "conv2d strided": (lambda: torch.nn.Conv2d(8, 6, 3, stride=2, padding=1), (2, 8, 11, 9)),
    "depthwise": (lambda: torch.nn.Conv2d(8, 8, 7, padding=3, groups=8), (2, 8, 10, 10)),
    "conv3d": (lambda: torch.nn.Conv3d(3, 4, (3, 3, 3), padding=1, bias=False), (1, 3, 4, 6, 6)),
}


@pytest.mark.parametrize("unsupported", [DROP, FLAT])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_signed_zplus_from_output_equals_two_halves(name, unsupported):
    torch.manual_seed(0)
    build, shape = LAYERS[name]
    module = build().double()
    x = torch.randn(shape, dtype=torch.float64)
    new, old, _ = _both_forms(ZPlus(epsilon=0.0, unsupported=unsupported), module, x)
    assert _relative(new, old) < FLOAT64


def test_same_padded_timm_convolution_equals_two_halves():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    module = timm.layers.Conv2dSame(4, 5, 3, stride=2).double()
    assert computes_product(module)
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    new, old, _ = _both_forms(ZPlus(epsilon=0.0), module, x)
    assert _relative(new, old) < FLOAT64


def _cancelling_linear(dtype) -> tuple[torch.nn.Linear, torch.Tensor]:
    """Units whose positive part is 1e-4 or less of their negative part (and some with none at all), large biases of
    either sign (each channel its own threshold): ``W a`` and ``|W| |a|`` cancel to a few digits."""
    generator = torch.Generator().manual_seed(0)
    module = torch.nn.Linear(256, 64).to(dtype)
    with torch.no_grad():
        module.weight.copy_(torch.rand(64, 256, generator=generator))
        module.weight[:32, :3] = torch.rand(32, 3, generator=generator) * 1e-4  # tiny positive contributions
        module.weight[32:, :3] = 0  # none: z is exactly 0
        module.bias.copy_(100.0 * torch.linspace(-1, 1, 64)[torch.randperm(64, generator=generator)])
    x = -10 * torch.rand(5, 256, generator=generator, dtype=dtype)
    x[:, :3] = torch.rand(5, 3, generator=generator, dtype=dtype)
    return module, x


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, FLOAT64), (torch.float32, FLOAT32)])
@pytest.mark.parametrize("unsupported, epsilon", [(DROP, 0.0), (FLAT, 0.0), (FLAT, 1e-5)])
def test_cancelling_units_get_the_two_halves_value(dtype, tolerance, unsupported, epsilon):
    module, x = _cancelling_linear(dtype)
    new, old, relevance = _both_forms(ZPlus(epsilon=epsilon, unsupported=unsupported), module, x)
    assert _relative(new, old) < tolerance
    assert abs(float(new.sum() - old.sum())) < tolerance * float(relevance.sum())


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_units_small_against_a_large_bias_get_the_two_halves_value(sign):
    """``W a`` is read off ``W a + b``: in float32 a bias of 1e4 rounds it by about 1e-3, as much as ``z`` of units
    with small inputs; the bias's part of the threshold (per channel, either sign) recomputes those units."""
    generator = torch.Generator().manual_seed(4)
    module = torch.nn.Linear(16, 8)
    with torch.no_grad():
        module.weight.copy_(torch.randn(8, 16, generator=generator))
        module.bias.copy_(sign * 1e4 * (1 + torch.rand(8, generator=generator)))
        module.bias[::2] *= -1
    x = 1e-2 * torch.randn(6, 16, generator=generator)
    new, old, relevance = _both_forms(ZPlus(epsilon=0.0, unsupported=FLAT), module, x)
    assert _relative(new, old) < FLOAT32
    assert abs(float(new.sum() - old.sum())) < FLOAT32 * float(relevance.sum())


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, FLOAT64), (torch.float32, FLOAT32)])
@pytest.mark.parametrize("layer", ["linear", "1x1 convolution"])
def test_two_halves_computed_only_for_the_entries_holding_cancelling_units(monkeypatch, layer, dtype, tolerance):
    """A batch where two of seven entries hold cancelling units: the two halves are computed for those two only,
    and every entry gets the two-halves value."""
    module, cancelling = _cancelling_linear(dtype)
    plain = torch.rand(5, 256, generator=torch.Generator().manual_seed(5), dtype=dtype)  # non-negative: none cancels
    x = torch.cat([plain[:2], cancelling[:1], plain[2:], cancelling[1:2]])
    if layer != "linear":
        convolution = torch.nn.Conv2d(256, 64, 1).to(dtype)
        with torch.no_grad():
            convolution.weight.copy_(module.weight[:, :, None, None])
            convolution.bias.copy_(module.bias)
        module, x = convolution, x[:, :, None, None].expand(-1, -1, 2, 3).contiguous()
    rule = ZPlus(epsilon=0.0, unsupported=FLAT)
    with torch.no_grad():
        output = module(x)
    relevance = torch.rand(output.shape, generator=torch.Generator().manual_seed(6), dtype=dtype)
    seen = []
    maps = ZPlus.maps
    monkeypatch.setattr(ZPlus, "maps", lambda self, m, a: seen.append(a.shape[0]) or maps(self, m, a))
    new = rule.relevance(module, (x,), relevance, output=output)
    assert seen == [2]  # the two entries with cancelling units
    monkeypatch.setattr(ZPlus, "maps", maps)
    old = rule.proportional(module, x, relevance)
    assert _relative(new, old) < tolerance
    assert abs(float(new.sum() - old.sum())) < tolerance * float(relevance.sum())


def test_cancelling_units_would_lose_relevance_without_the_two_halves(monkeypatch):
    """The layer above is a real test of the fallback: computed from the output alone, its relevance is off."""
    module, x = _cancelling_linear(torch.float64)
    monkeypatch.setattr(ZPlus, "cancellation", 1000.0)  # a tolerance of 0: no unit recomputed
    new, old, _ = _both_forms(ZPlus(epsilon=0.0, unsupported=FLAT), module, x)
    assert _relative(new, old) > 100 * FLOAT64


def test_attribution_reuses_the_output_of_layers_with_signed_inputs(monkeypatch):
    """On a model whose linear layers see signed inputs the fast path hands them their output, and the maps equal
    those of the two-halves form."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.GELU(),
                                torch.nn.Flatten(), torch.nn.Linear(32, 3)).double().eval()
    x = torch.randn(4, 2, 12, dtype=torch.float64)  # signals (N, C, L): the layers act on L
    composite = lrp.make_composite("flows_skip_conservative")
    reused = lrp.attribute(model, x, composite, target=0)
    calls = []
    original = ZPlus.signed_from_output
    monkeypatch.setattr(ZPlus, "signed_from_output", lambda self, *args: calls.append(1) or original(self, *args))
    lrp.attribute(model, x, composite, target=0)
    assert len(calls) >= 2  # the layers after Tanh and GELU
    monkeypatch.setattr(ZPlus, "keeps_output", lambda self, module, inputs: False)
    two_halves = lrp.attribute(model, x, composite, target=0)
    assert _relative(reused.relevance, two_halves.relevance) < FLOAT64


def test_output_modified_in_place_is_not_used():
    output = torch.randn(3)
    kept = KeptOutput(output)
    assert kept.unchanged() is not None
    output.relu_()
    assert kept.unchanged() is None


def test_layer_whose_output_changes_in_place_computes_both_halves(monkeypatch):
    """The second layer's output is rectified in place before the relevance pass: it is not used (the first layer's
    is), and the maps still equal the two-halves form's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8),
                                torch.nn.ReLU(inplace=True), torch.nn.Flatten(), torch.nn.Linear(16, 2)).double().eval()
    x = torch.randn(3, 2, 8, dtype=torch.float64)
    calls = []
    original = ZPlus.signed_from_output
    monkeypatch.setattr(ZPlus, "signed_from_output", lambda self, *args: calls.append(1) or original(self, *args))
    result = lrp.attribute(model, x, target=1)
    assert len(calls) == 1
    monkeypatch.setattr(ZPlus, "keeps_output", lambda self, module, inputs: False)
    assert _relative(result.relevance, lrp.attribute(model, x, target=1).relevance) < FLOAT64


def test_only_modules_computing_their_own_product_reuse_the_output():
    linear = torch.nn.Linear(3, 3)
    assert computes_product(linear)
    linear.forward = lambda x: 2 * torch.nn.functional.linear(x, linear.weight, linear.bias)  # someone else's forward
    assert not computes_product(linear)
    assert not computes_product(torch.nn.ConvTranspose2d(3, 3, 2))
    assert not computes_product(torch.nn.Conv2d(3, 3, 3, padding="same"))


def test_a_linear_layers_output_is_handed_on_without_a_copy_and_may_change_in_place():
    """F.linear with a bias returns a view of its product; the fast path hands that memory on as a tensor of its own
    (no copy of the output's size is made), which the in-place ReLU after it may modify, and relevance still flows."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Copies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.clone.default:
                self.sizes.append(args[0].numel())
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(inplace=True), torch.nn.Flatten(),
                                torch.nn.Linear(15, 2)).double().eval()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    with Copies() as copies:
        result = lrp.attribute(model, x, target=0)
    assert 2 * 3 * 5 not in copies.sizes
    assert _relative(result.relevance.sum(), result.start.sum()) < FLOAT64
