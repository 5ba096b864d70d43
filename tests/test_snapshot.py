"""After attribution with any composite the model is exactly as it was: objects, values, flags, no hooks."""
import pytest
import torch

import zennit_resnet_lrp as lrp
from helpers import make_inputs, make_model

OURS = list(lrp.OUR_COMPOSITES)
ZENNITS = ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon_plus"]


def _state(model):
    return {
        "params": [(name, id(p)) for name, p in model.named_parameters()],
        "buffers": [(name, id(b)) for name, b in model.named_buffers()],
        "modules": [(name, id(m)) for name, m in model.named_modules()],
        "state": {key: value.clone() for key, value in model.state_dict().items()},
        "dtypes": {key: value.dtype for key, value in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "dicts": [sorted(m.__dict__) for m in model.modules()],
    }


def _assert_unchanged(model, before, x, output):
    after = _state(model)
    for key in ("params", "buffers", "modules", "dtypes", "training", "requires_grad", "dicts"):
        assert after[key] == before[key], key
    assert list(after["state"]) == list(before["state"])
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key  # bit-identical
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
        assert "forward" not in module.__dict__
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model.eval()(x), output)


@pytest.fixture
def model():
    # train mode on purpose: attribute must use eval and put the flag back
    return make_model("resnet18", seed=5).train()


@pytest.mark.parametrize("method", OURS + ZENNITS)
def test_model_restored_after_attribution(model, method):
    x = make_inputs(2, 32, seed=5)
    before = _state(model)
    with torch.no_grad():
        output = model.eval()(x)
    model.train()
    before = _state(model)
    lrp.attribute(model, x, method, tolerance=None)
    _assert_unchanged(model, before, x, output)


@pytest.mark.parametrize("method", ["flows_skip_conservative", "epsilon_plus_flat_split"])
def test_model_restored_when_attribution_fails_midway(model, method, monkeypatch):
    x = make_inputs(2, 32, seed=5)
    with torch.no_grad():
        output = model.eval()(x)
    model.train()
    before = _state(model)

    def broken(self, *args):
        raise RuntimeError("boom")

    monkeypatch.setattr(lrp.RelevanceSplit, "relevance", broken)
    with pytest.raises(RuntimeError, match="boom"):
        lrp.attribute(model, x, method)
    _assert_unchanged(model, before, x, output)


def test_composite_used_directly_restores(model):
    """A composite used as in zennit (context manager), also with BN merging, restores by one remove()."""
    x = make_inputs(1, 32).requires_grad_()
    model.eval()
    with torch.no_grad():
        output = model(x)
    before = _state(model)
    for composite in (lrp.FlowsSkip(), lrp.EpsilonGammaBoxSplit(), lrp.EpsilonAlpha2Beta1Split()):
        with composite.context(model) as modified:
            modified(x).sum().backward()
        x.grad = None
        model.zero_grad(set_to_none=True)  # backward() above was the caller's: its parameter gradients too
        _assert_unchanged(model, before, x.detach(), output)


def test_composite_removed_after_the_evaluating_context_still_leaves_the_model_intact(model):
    """Inside ``evaluating`` our composites skip their own snapshot; removed only after the context restored the
    model, their remove() must neither fail nor leave anything behind."""
    from zennit_resnet_lrp.snapshot import evaluating

    x = make_inputs(1, 32)
    model.eval()
    with torch.no_grad():
        output = model(x)
    before = _state(model)
    for composite in (lrp.FlowsSkipConservative(), lrp.EpsilonPlusFlatSplit()):
        with evaluating(model):
            composite.register(model)
            assert any("forward" in module.__dict__ for module in model.modules())
        composite.remove()
        _assert_unchanged(model, before, x, output)


def test_merge_batchnorm_keeps_outputs_and_restores(model):
    model.eval()
    x = make_inputs(2, 32)
    with torch.no_grad():
        expected = model(x)
    before = _state(model)
    handles = lrp.ResidualCanonizer(merge_batchnorm=True).apply(model)
    try:
        merged = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.eps == 0.0]
        assert len(merged) == 20  # every BN of resnet18 follows a convolution
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)
    finally:
        for handle in handles:
            handle.remove()
    _assert_unchanged(model, before, x, expected)
