"""Evaluation methods leave the model as they found it, its gradients included."""
import pytest
import torch

from zennit_resnet_lrp.application.methods import METHODS
from zennit_resnet_lrp.application.models import load_model


@pytest.mark.parametrize("name", ["gradcam", "integrated_gradients", "gradient", "flows_skip"])
def test_method_keeps_the_callers_gradients_and_state(name):
    model = load_model("demo-mnist").model.train()
    marked = next(model.parameters())
    marked.grad = torch.full_like(marked, 3.0)  # a caller's gradient, mid-training
    state = {key: value.clone() for key, value in model.state_dict().items()}
    inputs = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    maps = METHODS[name](model, inputs, torch.tensor([1, 7]), None)
    assert maps.shape == (2, 28, 28)
    assert torch.equal(marked.grad, torch.full_like(marked, 3.0))
    assert all(p.grad is None for p in list(model.parameters())[1:])
    assert model.training
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


CAPTUM = ["captum_lrp", "captum_lrp_positive", "captum_integrated_gradients", "captum_integrated_gradients_positive",
          "captum_guided_backprop", "captum_guided_backprop_positive", "captum_gradient_x_input"]


@pytest.mark.parametrize("model_name", ["resnet18", "demo-mnist"])
def test_captum_methods_equal_captums_own_call(model_name):
    """Each captum_* method is captum's own attribution with its defaults, image by image as the paper's evaluation
    called it, per channel (clipped at 0 for the -positive forms)."""
    captum = pytest.importorskip("captum.attr")
    from helpers import make_inputs, make_model

    if model_name == "resnet18":
        model, inputs = make_model("resnet18"), make_inputs(2, 32)
    else:
        model = load_model("demo-mnist").model.double()
        inputs = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    targets = torch.tensor([3, 7])
    calls = {"lrp": captum.LRP, "integrated_gradients": captum.IntegratedGradients,
             "guided_backprop": captum.GuidedBackprop, "gradient_x_input": captum.InputXGradient}
    for name in CAPTUM:
        kind = name[len("captum_"):].removesuffix("_positive")
        ours = METHODS[name](model, inputs, targets)
        expected = torch.cat([calls[kind](model).attribute(inputs[i:i + 1].clone().requires_grad_(),
                                                           target=int(targets[i])).detach() for i in range(2)])
        if name.endswith("_positive"):
            expected = expected.clamp(min=0)
        assert ours.shape == inputs.shape, name
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max()), msg=name)
