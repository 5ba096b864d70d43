"""The traced path and the run-time path decide alike: every hand-written architecture of the tests and a set of timm
modules, routed once by tracing and once while they run (tracing forced off), give the same relevance."""
import pytest
import torch

import zennit_resnet_lrp as lrp
from helpers import make_inputs
from test_architectures import ARCHITECTURES, _build
from test_attention import FORMS, _model

TOLERANCE = 1e-10


def _both_ways(model, inputs):
    """The default's relevance with every module traced, and with every module routed while it runs."""
    results = []
    for runtime_only in (False, True):
        composite = lrp.FlowsSkipConservative(canonizers=[lrp.ResidualCanonizer(runtime_only=runtime_only)])
        results.append(lrp.attribute(model, inputs, composite, tolerance=None))
    return results


def _assert_agree(traced, routed):
    torch.testing.assert_close(routed.relevance, traced.relevance, rtol=TOLERANCE, atol=TOLERANCE * float(
        traced.relevance.abs().max()))
    if traced.absorbed is not None:
        torch.testing.assert_close(routed.absorbed, traced.absorbed, rtol=TOLERANCE, atol=1e-14)
    assert float(routed.conservation_error.max()) <= lrp.DEFAULT_TOLERANCE


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_architectures_agree(name):
    _assert_agree(*_both_ways(_build(name), make_inputs(2, 16)))


@pytest.mark.parametrize("form", FORMS)
def test_attention_forms_agree(form):
    _assert_agree(*_both_ways(_model(form), make_inputs(2, 16)))


# name -> (input size, whether the model takes img_size): residual sums, gates (squeeze-excitation, GhostNet v2's
# attention), layer scale, attention in several forms, tokens, pools in functional form, an LSTM, untraceable blocks
TIMM = {
    "resnet10t": (32, False), "efficientnet_b0": (32, False), "convnext_atto": (32, False),
    "mobilevitv2_050": (64, False), "vit_tiny_patch16_224": (32, True), "efficientformerv2_s0": (64, True),
    "coat_tiny": (32, True), "ghostnetv2_100": (64, False), "poolformerv2_s12": (32, False),
    "convit_tiny": (32, True), "efficientvit_b0": (64, False), "sequencer2d_s": (32, False),
    "cait_xxs24_224": (32, True),  # talking heads: attention weights mixed after the softmax, then permuted
}


# the quick suite runs the lighter half; CI runs all (pytest -m slow)
SLOW = ("sequencer2d_s", "coat_tiny", "cait_xxs24_224", "efficientformerv2_s0", "ghostnetv2_100", "efficientnet_b0", "mobilevitv2_050")


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name
                                  for name in TIMM])
def test_timm_modules_agree(name):
    timm = pytest.importorskip("timm")
    size, sized = TIMM[name]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **({"img_size": size} if sized else {}))
    _assert_agree(*_both_ways(model.double().eval(), make_inputs(2, size)))
