"""Rules on tiny modules, against formulas computed by hand."""
import pytest
import torch

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.rewriting import ResidualSum


def _propagate(rule, module, x, relevance):
    """The rule's relevance for a module of one input, or of several given as a stack on the last dimension."""
    hook = rule.copy()
    if isinstance(module, ResidualSum):
        return torch.stack(hook.propagate(module, x.unbind(-1), (relevance.shape,) * x.shape[-1], relevance), -1)
    return hook.relevance(module, (x,), relevance)


def test_split_ratio_symmetric_identity_and_zero_over_zero():
    stacked = torch.tensor([[3.0, 1.0], [-1.0, 3.0], [0.0, 0.0]]).double()  # operands [h_m, h_s]
    relevance = torch.tensor([4.0, 8.0, 2.0]).double()
    identity, projection = ResidualSum(identity_skip=True), ResidualSum(identity_skip=False)
    ratio = _propagate(lrp.RelevanceSplit("ratio"), identity, stacked, relevance)
    torch.testing.assert_close(ratio, torch.tensor([[3.0, 1.0], [2.0, 6.0], [1.0, 1.0]]).double())
    half = _propagate(lrp.RelevanceSplit("symmetric"), projection, stacked, relevance)
    torch.testing.assert_close(half, torch.tensor([[2.0, 2.0], [4.0, 4.0], [1.0, 1.0]]).double())
    no_identity = _propagate(lrp.RelevanceSplit("ratio", split_identity=False), identity, stacked, relevance)
    torch.testing.assert_close(no_identity[:, 1], torch.zeros(3).double())
    projected = _propagate(lrp.RelevanceSplit("ratio", split_identity=False), projection, stacked, relevance)
    torch.testing.assert_close(projected, ratio)
    with pytest.raises(ValueError, match="unknown split mode"):
        lrp.RelevanceSplit("thirds")


def test_zplus_linear_matches_formula():
    linear = torch.nn.Linear(3, 2).double()
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 2.0]]))
        linear.bias.fill_(5.0)  # ignored
    a = torch.tensor([[1.0, 2.0, 4.0]]).double()
    relevance = torch.tensor([[1.0, 3.0]]).double()
    eps = 1e-5
    z = torch.tensor([1 * 1 + 4 * 0.5, 2 * 1 + 4 * 2]).double() + eps  # W+ only, no bias
    expected = a * ((relevance / z) @ linear.weight.clamp(min=0))
    torch.testing.assert_close(_propagate(lrp.ZPlus(eps), linear, a, relevance), expected)


def test_flat_input_zplus_ignores_pixels():
    conv = torch.nn.Conv2d(1, 1, 2, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, -1.0], [3.0, 0.0]]]]))
    relevance = torch.ones(1, 1, 1, 1).double()
    one = _propagate(lrp.FlatInputZPlus(0.0), conv, torch.randn(1, 1, 2, 2).double(), relevance)
    torch.testing.assert_close(one, torch.tensor([[[[0.25, 0.0], [0.75, 0.0]]]]).double())


def test_zplus_flat_fallback_conserves_dead_units():
    conv = torch.nn.Conv2d(2, 2, 1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, -1.0]])[:, :, None, None])
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).double().T.reshape(1, 2, 2, 1)  # first position all zero
    relevance = torch.tensor([[[[1.0], [1.0]], [[2.0], [2.0]]]]).double()  # unit 2 has W+ = 0
    dropped = _propagate(lrp.ZPlus(0.0, unsupported="drop"), conv, a, relevance)
    spread = _propagate(lrp.ZPlus(0.0, unsupported="flat"), conv, a, relevance)
    assert float(dropped.sum()) == pytest.approx(1.0)  # only unit 1 at position 2 had z+ > 0
    assert float(spread.sum()) == pytest.approx(6.0)
    # unit 1 at the dead position goes 1:2 by W+, unit 2 (W+ = 0) evenly
    torch.testing.assert_close(spread[0, :, 0, 0], torch.tensor([1 / 3 + 1.0, 2 / 3 + 1.0]).double())


def test_zplus_signed_input_uses_both_halves():
    linear = torch.nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[2.0, -1.0]]))
    a = torch.tensor([[1.0, -3.0]]).double()  # contributions 2 (a+ W+) and 3 (a- W-)
    result = _propagate(lrp.ZPlus(0.0), linear, a, torch.tensor([[5.0]]).double())
    torch.testing.assert_close(result, torch.tensor([[2.0, 3.0]]).double())


def test_maxpool_rules():
    pool = torch.nn.MaxPool2d(3, 2, 1)
    a = torch.zeros(1, 1, 4, 4).double()
    a[0, 0, 0, 0], a[0, 0, 1, 1] = 1.0, 3.0
    relevance = torch.ones(1, 1, 2, 2).double()
    for rule in (lrp.MaxPoolProportional(0.0, "flat"), lrp.MaxPoolWinnerTakesAll()):
        assert float(_propagate(rule, pool, a, relevance).sum()) == pytest.approx(4.0)
    winner = _propagate(lrp.MaxPoolWinnerTakesAll(), pool, a, relevance)
    assert float(winner[0, 0, 1, 1]) == pytest.approx(4.0)  # the max of every window
    # the stand-in's 2x2 windows: only the top-left one holds non-zeros, the other three outputs' relevance is lost
    stand_in = _propagate(lrp.MaxPoolAverageStandIn(1e-5), pool, a, relevance)
    assert float(stand_in.sum()) == pytest.approx(1.0, rel=1e-4)


def test_average_pool_proportional():
    pool = torch.nn.AdaptiveAvgPool2d(1)
    a = torch.tensor([[[[1.0, 3.0]]]]).double()
    result = _propagate(lrp.PoolProportional(0.0), pool, a, torch.tensor([[[[8.0]]]]).double())
    torch.testing.assert_close(result, torch.tensor([[[[2.0, 6.0]]]]).double())


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsampling_proportional(mode):
    """Upsampling is linear in its input: each input gets what it contributes to every output it reaches."""
    upsample = torch.nn.Upsample(scale_factor=2, mode=mode)
    a = torch.tensor([[[[1.0, 3.0]]]]).double()
    relevance = torch.arange(1.0, 9.0).double().reshape(1, 1, 2, 4)
    result = _propagate(lrp.PoolProportional(0.0), upsample, a, relevance)
    outputs = upsample(a)
    matrix = torch.stack([upsample(torch.eye(2).double()[i].reshape(1, 1, 1, 2)).flatten() for i in range(2)])
    expected = a.flatten() * (matrix @ (relevance.flatten() / outputs.flatten()))
    torch.testing.assert_close(result.flatten(), expected)
    assert float(result.sum()) == pytest.approx(float(relevance.sum()))


def test_zplus_on_a_transposed_convolution_matches_its_formula():
    """An upsampling transposed convolution (stride 2, output padding) as the dense linear map it is: z+ with ``W+``
    read off the map of the clamped weights, ``a+ W+ + a- W-`` on a signed input."""
    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1).double()
    a = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    relevance = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    result = _propagate(lrp.ZPlus(0.0), layer, a, relevance)

    def dense(weight):  # row i: what input i contributes to every output
        return torch.stack([torch.nn.functional.conv_transpose2d(torch.eye(18).double()[i].reshape(1, 2, 3, 3), weight,
                                                                 None, 2, 1, 1).flatten() for i in range(18)])

    plus, minus = dense(layer.weight.detach().clamp(min=0)), dense(layer.weight.detach().clamp(max=0))
    positive, negative = a.flatten().clamp(min=0), a.flatten().clamp(max=0)
    z = positive @ plus + negative @ minus
    supported = z > 0  # elsewhere no input contributes: that relevance is dropped (unsupported="drop")
    scaled = torch.where(supported, relevance.flatten() / z.where(supported, 1.0), 0.0)
    expected = positive * (plus @ scaled) + negative * (minus @ scaled)
    torch.testing.assert_close(result.flatten(), expected)
    assert float(result.sum()) == pytest.approx(float((relevance.flatten() * supported).sum()))


def test_padding_gives_its_relevance_to_the_edge_it_extends():
    """Each padded position's relevance to the input element nearest to it (clamped indices), the rest in place:
    nothing lost, where cropping (zero padding's gradient) would drop the border's relevance."""
    pad = torch.nn.ZeroPad2d((1, 0, 2, 1))  # left, right, top, bottom
    x = torch.rand(2, 3, 3, 4, dtype=torch.float64)
    relevance = torch.rand(2, 3, 6, 5, dtype=torch.float64)
    result = _propagate(lrp.PaddingToEdge(), pad, x, relevance)
    expected = torch.zeros_like(x)
    for h in range(6):
        for w in range(5):
            expected[..., min(max(h - 2, 0), 2), min(max(w - 1, 0), 3)] += relevance[..., h, w]
    torch.testing.assert_close(result, expected)
    torch.testing.assert_close(result.sum((1, 2, 3)), relevance.sum((1, 2, 3)))
    shift = torch.nn.ZeroPad2d((-1, 1, -1, 1))  # NASNet's: crop the first row and column, pad the last
    result = _propagate(lrp.PaddingToEdge(), shift, x, relevance[..., :3, :4])
    expected = torch.zeros_like(x)
    for h in range(3):
        for w in range(4):
            expected[..., min(h + 1, 2), min(w + 1, 3)] += relevance[..., h, w]
    torch.testing.assert_close(result, expected)


def test_rule_copies_are_independent_on_the_hook_path_and_shared_on_the_fast_path():
    """zennit's hooks store the module's input on the rule, so each module needs its own copy; the fast path keeps
    that state in the autograd context, so one stateless instance serves every module."""
    hooked = lrp.ZPlus(1e-3, "flat", fast=False)
    clone = hooked.copy()
    assert (clone.epsilon, clone.unsupported, clone.fast) == (1e-3, "flat", False)
    assert clone is not hooked and clone.stored_tensors is not hooked.stored_tensors
    rule = lrp.ZPlus(1e-3, "flat")
    assert rule.copy() is rule
    conv_a, conv_b = torch.nn.Conv2d(2, 2, 3), torch.nn.Conv2d(2, 2, 3)
    handles = [rule.copy().register(conv_a), rule.copy().register(conv_b)]
    x = torch.rand(1, 2, 5, 5, requires_grad=True)
    relevance_a = torch.autograd.grad(conv_a(x), x, torch.ones(1, 2, 3, 3))[0]
    relevance_b = torch.autograd.grad(conv_b(x), x, torch.ones(1, 2, 3, 3))[0]
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(relevance_a, _propagate(rule, conv_a, x.detach(), torch.ones(1, 2, 3, 3)))
    torch.testing.assert_close(relevance_b, _propagate(rule, conv_b, x.detach(), torch.ones(1, 2, 3, 3)))
    assert "forward" not in conv_a.__dict__ and "forward" not in conv_b.__dict__


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_maxpool_proportional_matches_average_pool_formula(ceil_mode, channels_last):
    """``R_i = a_i sum_k [i in window k] (1/n) R_k / avgpool(a)_k`` over the max-pool's own windows (zero padding
    counted), computed here with avg_pool2d and autograd."""
    generator = torch.Generator().manual_seed(0)
    pool = torch.nn.MaxPool2d(3, 2, 1, ceil_mode=ceil_mode)
    a = torch.rand(2, 4, 10, 10, generator=generator).double()
    if channels_last:
        a = a.contiguous(memory_format=torch.channels_last)
    relevance = torch.rand(2, 4, *pool(a).shape[2:], generator=generator).double()
    point = a.clone().requires_grad_()
    average = torch.nn.functional.avg_pool2d(point, 3, 2, 1, ceil_mode, count_include_pad=True)
    (expected,) = torch.autograd.grad(average, point, relevance / average.detach())
    result = _propagate(lrp.MaxPoolProportional(0.0, "flat"), pool, a, relevance)
    torch.testing.assert_close(result, expected * a)
    assert float(result.sum()) == pytest.approx(float(relevance.sum()), rel=1e-12)


@pytest.mark.parametrize("epsilon", [0.0, 1e-5])
def test_unit_with_positive_but_negligible_z_gets_the_flat_share_alone(epsilon):
    """A unit whose positive pre-activation is above 0 but below the floor ``tiny`` goes the flat way, and only that
    way: its relevance arrives at the input once, not once by its proportional share and once more flat."""
    linear = torch.nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 3.0]]))
    tiny = torch.finfo(torch.float64).tiny ** 0.5
    a = torch.tensor([[tiny / 4, 0.0]], dtype=torch.float64)  # unit 1: z = tiny / 4; unit 2: z = tiny / 4
    relevance = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    result = _propagate(lrp.ZPlus(epsilon, unsupported="flat"), linear, a, relevance)
    # flat: unit 1 spreads 1 by W+ (1:1), unit 2 spreads 2 by W+ (1:3)
    torch.testing.assert_close(result, torch.tensor([[0.5 + 0.5, 0.5 + 1.5]], dtype=torch.float64))
    assert float(result.sum()) == pytest.approx(3.0, rel=1e-12)


def test_uniform_split_scale_and_norms_against_their_formulas():
    """A product of two branches: ``R / 2`` each; a scale by a parameter: ``R`` to the scaled tensor, none to the
    factor; a layer norm (channels-last), group norm and RMS norm: ``R`` through, elementwise; a sum over a
    dimension: ``|x_i| / sum_j |x_j| R`` per slice."""
    generator = torch.Generator().manual_seed(3)
    a, b = (torch.randn(2, 3, 4, generator=generator, dtype=torch.float64) for _ in range(2))
    relevance = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    first, second = lrp.UniformSplit().relevance(lrp.Product(), (a, b), relevance)
    torch.testing.assert_close(first, relevance / 2)
    torch.testing.assert_close(first + second, relevance, rtol=0, atol=0)
    gamma = torch.rand(4, generator=generator, dtype=torch.float64)
    scaled, factor = lrp.PassThrough().propagate(lrp.Scale(), (a, gamma), (a.shape, gamma.shape), relevance)
    assert torch.equal(scaled, relevance) and torch.equal(factor, torch.zeros(4, dtype=torch.float64))
    composite = lrp.FlowsSkipConservative()
    for norm in (torch.nn.LayerNorm(4), torch.nn.GroupNorm(1, 3), torch.nn.RMSNorm(4)):
        rule = composite.module_map({}, "norm", norm)
        assert isinstance(rule, lrp.PassThrough), type(norm)
    stacked = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64)
    summed_relevance = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    split = lrp.ReductionSplit().relevance(lrp.SumOver(1), (stacked,), summed_relevance)
    expected = stacked.abs() / stacked.abs().sum(1, keepdim=True) * summed_relevance[:, None]
    torch.testing.assert_close(split, expected)
    torch.testing.assert_close(split.sum(1), summed_relevance)


@pytest.mark.parametrize("pool, shape", [(torch.nn.MaxPool1d(2), (2, 3, 8)), (torch.nn.MaxPool3d(2), (2, 3, 4, 4, 6))])
def test_maxpool_proportional_on_signals_and_clips_splits_each_window_by_its_values(pool, shape):
    """Windows that tile the input (kernel = stride): each input gets its window's relevance in proportion to its
    value, computed here by reshaping the windows out."""
    a = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    relevance = torch.rand(pool(a).shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    result = lrp.MaxPoolProportional(epsilon=0.0).relevance(pool, (a,), relevance)
    dims = a.ndim - 2
    windows = a.reshape(*a.shape[:2], *[size for axis in range(dims) for size in (a.shape[2 + axis] // 2, 2)])
    sums = windows.sum(dim=tuple(3 + 2 * axis for axis in range(dims)), keepdim=True)
    spread = relevance.reshape(sums.shape)
    torch.testing.assert_close(result, (windows / sums * spread).reshape(a.shape))


def test_maxpool_proportional_on_a_clip_smaller_than_its_padded_kernel():
    """S3D's last max-pools (3x3x3, padding 1) on a 2x7x7 clip: avg_pool3d refuses a clip smaller than the kernel
    before padding, so the rule pads first; conserving."""
    pool = torch.nn.MaxPool3d(3, stride=1, padding=[1, 1, 1])  # a list, as MViT's pools give it
    a = torch.rand(1, 2, 2, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    relevance = torch.rand(pool(a).shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    result = lrp.MaxPoolProportional(epsilon=0.0).relevance(pool, (a,), relevance)
    torch.testing.assert_close(result.sum(), relevance.sum())


@pytest.mark.parametrize("pool, shape", [(torch.nn.MaxPool1d(2), (3, 8)), (torch.nn.MaxPool2d(3, 2, 1), (3, 7, 9)),
                                         (torch.nn.MaxPool3d(2, padding=1), (3, 4, 4, 6))])
def test_maxpool_proportional_on_an_unbatched_input_equals_it_batched(pool, shape):
    """A pool given one sample without a batch dimension pools as many dimensions as it has (a 2-D pool's
    (C, H, W) is not a 1-D pool's (N, C, L)): the same relevance as the sample batched."""
    a = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    relevance = torch.rand(pool(a).shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rule = lrp.MaxPoolProportional(epsilon=0.0)
    torch.testing.assert_close(rule.relevance(pool, (a,), relevance),
                               rule.relevance(pool, (a[None],), relevance[None])[0], rtol=1e-12, atol=1e-14)
