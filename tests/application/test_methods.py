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
