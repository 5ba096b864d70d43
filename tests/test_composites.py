"""The four paper variants against the independent reference, and the composites' zennit compatibility."""
import pytest
import torch
from zennit.composites import COMPOSITES, EpsilonPlusFlat
from zennit.torchvision import ResNetCanonizer

import zennit_resnet_lrp as lrp
from helpers import make_inputs, make_model
from reference import Reference

VARIANTS = list(lrp.PAPER_VARIANTS)


def _compare(model, x, variant):
    expected, start, target = Reference(model, variant)(x)
    result = lrp.attribute(model, x, variant, tolerance=None)
    assert torch.equal(result.target, target)
    torch.testing.assert_close(result.start, start, rtol=1e-12, atol=0)
    torch.testing.assert_close(result.relevance, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_matches_reference_resnet18(variant, resnet18, inputs):
    _compare(resnet18, inputs, variant)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_matches_reference_resnet50(variant):
    _compare(make_model("resnet50", seed=1), make_inputs(2, 64, seed=1), variant)


def test_all_composites_registered_by_name():
    for name in [*VARIANTS, "flows_skip_conservative", "epsilon_plus_flat_split", "epsilon_gamma_box_split",
                 "epsilon_alpha2_beta1_split"]:
        assert name in COMPOSITES
        assert isinstance(COMPOSITES[name](), lrp.ResidualComposite)


@pytest.mark.parametrize("canonizers", [None, [], [ResNetCanonizer()]])
def test_composite_brings_its_residual_canonizer(canonizers):
    composite = lrp.FlowsSkip(canonizers=canonizers)
    kinds = [type(c) for c in composite.canonizers]
    assert kinds.count(lrp.ResidualCanonizer) == 1
    assert ResNetCanonizer not in kinds


def test_zennit_keywords_accepted(resnet18, inputs):
    composite = lrp.FlowsSkipConservative(layer_map=[], first_map=[], zero_params=["bias"], canonizers=[])
    result = lrp.attribute(resnet18, inputs, composite)
    assert float(result.conservation_error.max()) < 1e-6
    split = lrp.EpsilonPlusFlatSplit(epsilon=1e-6, stabilizer=1e-6, zero_params=["bias"], canonizers=[])
    assert lrp.attribute(resnet18, inputs, split, tolerance=None).relevance.shape == inputs.shape


def test_split_counterpart_differs_from_norm_only_at_sums(resnet18, inputs):
    """epsilon_plus_flat_split is zennit's own EpsilonPlusFlat, BN merged, with the ratio split put in front of its
    table: the same relevance to rounding; and with zennit's Norm at the sums it is different."""
    ours = lrp.attribute(resnet18, inputs, "epsilon_plus_flat_split", tolerance=None).relevance
    zennit_with_split = EpsilonPlusFlat(layer_map=[(lrp.ResidualSum, lrp.RelevanceSplit("ratio"))],
                                        canonizers=[lrp.ResidualCanonizer(merge_batchnorm=True)])
    expected = lrp.attribute(resnet18, inputs, zennit_with_split, tolerance=None).relevance
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12 * float(expected.abs().max()))
    zennit_norm = lrp.attribute(resnet18, inputs, EpsilonPlusFlat(canonizers=[ResNetCanonizer()]),
                                tolerance=None).relevance
    assert float((ours - zennit_norm).abs().max()) > 1e-3 * float(ours.abs().max())


def test_composite_on_model_without_blocks_warns_and_works():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).double()
    with pytest.warns(UserWarning, match="found no residual addition in Sequential"):
        result = lrp.attribute(model, make_inputs(2, 16))
    assert result.relevance.shape == (2, 3, 16, 16)


def test_paper_variants_leak_only_where_the_method_says(resnet18, inputs):
    """With a vanishing stabiliser, each variant loses exactly what reaches all-zero 2x2 windows of the max-pool
    stand-in and units whose positive pre-activation is zero, and nothing else."""
    for variant in VARIANTS:
        reference = Reference(resnet18, variant, eps=1e-12)
        _, start, _ = reference(inputs)
        result = lrp.attribute(resnet18, inputs, COMPOSITES[variant](epsilon=1e-12), tolerance=None)
        expected = float(start.sum()) - sum(reference.lost.values())
        assert reference.lost["max-pool stand-in"] > 0
        assert abs(float(result.total.sum()) - expected) <= 1e-9 * float(start.sum())


@pytest.mark.parametrize("variant", VARIANTS)
def test_paper_splits_conserve_with_conservative_rules(variant, resnet18, inputs):
    """The splitting itself conserves: with exact division, the conservative max-pool and the flat fallback, every
    variant's input relevance equals the start."""
    composite = COMPOSITES[variant](epsilon=0.0, maxpool="proportional", unsupported="flat")
    result = lrp.attribute(resnet18, inputs, composite)
    assert float(result.conservation_error.max()) <= 1e-10


@pytest.mark.parametrize("method", ["flows_skip_conservative", *VARIANTS])
def test_fast_path_equals_zennit_hook_path(method, resnet18, inputs):
    """Rules run as autograd functions (fast, default) give the relevance of the same rules run through zennit's
    hooks, block sums and all."""
    fast = lrp.attribute(resnet18, inputs, COMPOSITES[method](), tolerance=None, record_blocks=True)
    hooked = lrp.attribute(resnet18, inputs, COMPOSITES[method](fast=False), tolerance=None, record_blocks=True)
    torch.testing.assert_close(fast.relevance, hooked.relevance, rtol=1e-5, atol=1e-5 * float(hooked.relevance.abs().max()))
    for a, b in zip(fast.blocks, hooked.blocks):
        torch.testing.assert_close(a.skip, b.skip, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("method", ["flows_skip_conservative", "flows_skip"])
def test_channels_last_inputs_give_the_same_relevance(method):
    """Channels-last inputs (faster convolutions on the CPU) give the relevance of contiguous ones, laid out like
    the input, and the default still conserves."""
    model = make_model("resnet18", dtype=torch.float32)
    plain = make_inputs(dtype=torch.float32)
    last = plain.contiguous(memory_format=torch.channels_last)
    expected = lrp.attribute(model, plain, method, tolerance=None)
    result = lrp.attribute(model, last, method, tolerance=None)
    assert result.relevance.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(result.relevance, expected.relevance, rtol=1e-4,
                               atol=1e-5 * float(expected.relevance.abs().max()))
    if method == "flows_skip_conservative":
        assert float(result.conservation_error.max()) <= 1e-5


def test_zennit_attributor_on_our_composite_gives_what_attribute_gives():
    """XCiT's Fourier position encoding is computed from parameters and sizes alone: the sum it joins hands it
    nothing. That holds because the composite itself freezes the parameters while registered, so zennit's own
    attributor on it (parameters requiring gradients, as a user's model has them) gives what ``attribute`` gives."""
    timm = pytest.importorskip("timm")
    from zennit.attribution import Gradient

    torch.manual_seed(0)
    model = timm.create_model("xcit_nano_12_p16_224", pretrained=False, num_classes=10, img_size=32).double().eval()
    assert all(parameter.requires_grad for parameter in model.parameters())
    x = make_inputs(2, 32)
    ours = lrp.attribute(model, x, start_with="logit")
    seed = torch.nn.functional.one_hot(ours.target, 10).double() * ours.start[:, None]
    with Gradient(model, lrp.make_composite()) as attributor:
        _, relevance = attributor(x, seed)
    torch.testing.assert_close(relevance, ours.relevance, rtol=1e-10, atol=1e-14)
    assert float(ours.conservation_error.max()) <= lrp.DEFAULT_TOLERANCE
    assert all(parameter.requires_grad for parameter in model.parameters())
