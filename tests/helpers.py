"""Small deterministic builders the tests share: ResNets with randomized batch-norm statistics, seeded inputs."""
from __future__ import annotations

import torch
import torchvision


@torch.no_grad()
def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every batch norm random statistics and affine parameters, with clearly non-zero biases."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            count = module.num_features
            module.running_mean.copy_(torch.randn(count, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(count, generator=generator) * 1.5 + 0.5)
            module.weight.copy_(torch.rand(count, generator=generator) + 0.5)
            module.bias.copy_(torch.randn(count, generator=generator) * 0.3)
    return model


def make_model(name: str = "resnet18", seed: int = 0, dtype=torch.float64, num_classes: int = 10) -> torch.nn.Module:
    """A torchvision model with seeded random weights and randomized batch norms, in eval mode."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(num_classes=num_classes)
    return randomize_batchnorm(model, seed).to(dtype).eval()


def make_inputs(count: int = 2, size: int = 64, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, size, size, generator=generator).to(dtype)
