"""The layer types the composites give a rule, beyond zennit's tables: normalisation layers and activations of torch,
torchvision and timm (timm's only where timm is in use: its classes are read from the imported module, never
imported here)."""
from __future__ import annotations

import re
import sys

import torch

from .modules import Elementwise, FunctionCall, FunctionalNorm

# zennit's Activation without MultiheadAttention (not an activation), with Mish and elementwise functions
ACTIVATIONS = (
    torch.nn.ELU, torch.nn.Hardshrink, torch.nn.Hardsigmoid, torch.nn.Hardtanh, torch.nn.Hardswish, torch.nn.LeakyReLU,
    torch.nn.LogSigmoid, torch.nn.PReLU, torch.nn.ReLU, torch.nn.ReLU6, torch.nn.RReLU, torch.nn.SELU, torch.nn.CELU,
    torch.nn.GELU, torch.nn.Sigmoid, torch.nn.SiLU, torch.nn.Mish, torch.nn.Softplus, torch.nn.Softshrink,
    torch.nn.Softsign, torch.nn.Tanh, torch.nn.Tanhshrink, torch.nn.Threshold, Elementwise, FunctionCall,
)
# normalisation layers of torch (each a per-sample, per-group affine map once its statistics are held constant)
NORMALIZATIONS = (
    torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.LocalResponseNorm, torch.nn.modules.instancenorm._InstanceNorm,
    *((torch.nn.RMSNorm,) if hasattr(torch.nn, "RMSNorm") else ()), FunctionalNorm,
)
# timm's normalisation and activation layers that are not subclasses of torch's, by class name
_TIMM_NORMALIZATION = re.compile(r"^(EvoNorm|FilterResponseNorm|FrozenBatchNorm|RmsNorm|SimpleNorm"
                                 r"|GlobalResponseNorm$)")
_TIMM_ACTIVATION = re.compile(r"^(Swish|Mish|Sigmoid|Tanh|HardSwish|HardSigmoid|HardMish|GELU|GELUTanh|QuickGELU"
                              r"|PReLU)$")


def _loaded_classes(module_name: str, pattern: re.Pattern) -> tuple[type, ...]:
    """The ``torch.nn.Module`` classes of an already imported module whose names match ``pattern``."""
    module = sys.modules.get(module_name)
    if module is None:
        return ()
    return tuple(value for name, value in vars(module).items() if pattern.match(name) and isinstance(value, type)
                 and issubclass(value, torch.nn.Module))


def normalization_types() -> tuple[type, ...]:
    """Normalisation layers: torch's, torchvision's frozen batch norm, and timm's where timm is imported."""
    frozen = _loaded_classes("torchvision.ops.misc", re.compile(r"^FrozenBatchNorm2d$"))
    timm = _loaded_classes("timm.layers", _TIMM_NORMALIZATION) + _loaded_classes("timm.layers.grn", _TIMM_NORMALIZATION)
    return NORMALIZATIONS + frozen + timm


def activation_types() -> tuple[type, ...]:
    """Activations: torch's, and timm's own classes where timm is imported."""
    return ACTIVATIONS + _loaded_classes("timm.layers", _TIMM_ACTIVATION)
