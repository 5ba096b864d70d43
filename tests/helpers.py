"""Small deterministic builders the tests share: ResNets with randomized batch-norm statistics, seeded inputs."""
from __future__ import annotations

import struct
import zlib

import pytest
import torch
import torch.nn.functional as F
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


class LambdaLayer(torch.nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


class CifarBlock(torch.nn.Module):
    """The CIFAR ResNet block of research code: functional ReLUs, ``+=``, zero-padding ("option A") shortcuts."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.conv2 = torch.nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.shortcut = torch.nn.Sequential()
        if stride != 1 or inplanes != planes:
            pad = planes // 4
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class CifarResNet20(torch.nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(16)
        blocks, inplanes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for index in range(3):
                blocks.append(CifarBlock(inplanes, planes, stride if index == 0 else 1))
                inplanes = planes
        self.layers = torch.nn.Sequential(*blocks)
        self.linear = torch.nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


class PreActBlock(torch.nn.Module):
    """Pre-activation: batch norm and ReLU before each convolution, the projection taken from the activated input."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.bn1 = torch.nn.BatchNorm2d(inplanes)
        self.conv1 = torch.nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.conv2 = torch.nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or inplanes != planes:
            self.shortcut = torch.nn.Conv2d(inplanes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(torch.nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.layers = torch.nn.Sequential(PreActBlock(16, 16), PreActBlock(16, 32, 2), PreActBlock(32, 32))
        self.bn = torch.nn.BatchNorm2d(32)
        self.linear = torch.nn.Linear(32, num_classes)

    def forward(self, x):
        out = self.layers(self.conv1(x))
        out = F.relu(self.bn(out)).mean((2, 3))
        return self.linear(out)


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """A ResNet of another family with seeded random weights and randomized batch norms, float64, eval mode:
    ``cifar_resnet20``, ``preact_resnet``, ``torchvision/<name>`` or a timm name; 10 classes."""
    torch.manual_seed(seed)
    if name == "cifar_resnet20":
        model = CifarResNet20()
    elif name == "preact_resnet":
        model = PreActResNet()
    elif name.startswith("torchvision/"):
        model = torchvision.models.get_model(name.split("/", 1)[1], num_classes=10)
    else:
        timm = pytest.importorskip("timm")  # skips this test alone where timm is missing
        model = timm.create_model(name, pretrained=False, num_classes=10)
    return randomize_batchnorm(model, seed).double().eval()


def flat_png(path, width, height):
    """A black 1-bit PNG of any size, compressed row by row (a 14000x14000 one: 0.1 MB, in 50 ms)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    compressor, row = zlib.compressobj(1), bytes(1 + -(-width // 8))
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    """A command line's failure as the brief asks: exit ``code``, no traceback, an ``error:`` line holding each of
    ``fragments``."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors, result.output
    for fragment in fragments:
        assert any(fragment in line for line in errors), result.output
