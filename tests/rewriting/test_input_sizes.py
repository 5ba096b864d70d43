"""Inputs of other sizes than a model's own: windows padded to fit (``F.pad`` inside a forward, then cropped), halo
attention's padded keys, relative position tables and position embeddings resampled at run time, and the values
multiplied by the attention weights from the left (``v @ attn^T``). The default conserves on each, in float64, and
leaves the model's parameters and buffers as they were."""
import pytest
import torch
import torch.nn.functional as F

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.rewriting.modules import Pad, from_padding_layout, padding_layout

TOLERANCE = 1e-5


def _inputs(height: int, width: int) -> torch.Tensor:
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _conserves(model: torch.nn.Module, inputs: torch.Tensor, runtime_only: bool | None = None) -> None:
    """The default's conservation error at most TOLERANCE, and the model's state bit-identical afterwards."""
    state = {key: value.clone() for key, value in model.state_dict().items()}
    method = lrp.DEFAULT_METHOD if runtime_only is None else lrp.FlowsSkipConservative(
        canonizers=[lrp.ResidualCanonizer(runtime_only=runtime_only)])
    result = lrp.attribute(model, inputs, method, tolerance=None)
    assert float(result.conservation_error.max()) <= TOLERANCE
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[key], value) for key, value in state.items())


# -- the mechanisms, on hand-written modules --

class PaddedWindows(torch.nn.Module):
    """Channels-last tokens padded with zeros to whole windows (as timm's window attention pads them), normed and
    projected (the padded tokens' values are the projection's bias: a unit z+ spreads flat), attention within each
    window, the padding cropped off."""

    def __init__(self, width: int = 8, window: int = 4) -> None:
        super().__init__()
        self.window = window
        self.embed = torch.nn.Conv2d(3, width, 3, padding=1)
        self.norm = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.head = torch.nn.Linear(width, 5)

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)
        batch, height, width, channels = x.shape
        window = self.window
        bottom, right = (window - height % window) % window, (window - width % window) % window
        x = F.pad(x, (0, 0, 0, right, 0, bottom))
        rows, columns = (height + bottom) // window, (width + right) // window
        x = x.view(batch, rows, window, columns, window, channels).transpose(2, 3).reshape(-1, window ** 2, channels)
        q, k, v = self.qkv(self.norm(x)).chunk(3, -1)
        x = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        x = x.view(batch, rows, columns, window, window, channels).transpose(2, 3)
        x = x.reshape(batch, rows * window, columns * window, channels)[:, :height, :width]
        return self.head(x.mean((1, 2)))


class ValuesFirst(torch.nn.Module):
    """Attention written with the values on the left, ``v @ attn^T`` (EfficientViT's and SHViT's form)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.embed = torch.nn.Conv2d(3, width, 3, padding=1)
        self.qkv = torch.nn.Conv2d(width, 3 * width, 1)
        self.head = torch.nn.Linear(width, 5)

    def forward(self, x):
        q, k, v = self.qkv(self.embed(x)).flatten(2).chunk(3, 1)  # (batch, channels, tokens)
        attention = (q.transpose(-2, -1) @ k).softmax(-1)
        return self.head((v @ attention.transpose(-2, -1)).mean(-1))


def _seeded(module_class, *args) -> torch.nn.Module:
    torch.manual_seed(0)
    return module_class(*args).double().eval()


@pytest.mark.parametrize("widths, shape", [((0, 0, 0, 3, 0, 1), (2, 5, 6, 4)), ((1, 2, 0, 1), (2, 3, 5, 6)),
                                           ((0, 0, 0, 0, 2, 1, 0, 0), (2, 3, 4, 5)), ((-1, 1, -1, 1), (1, 2, 4, 4))])
def test_padding_in_the_rules_layout_computes_what_f_pad_computes(widths, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    moved, kept = padding_layout(x, widths)
    assert moved.ndim == len(kept) // 2 + 2  # the layout the padding rule reads
    torch.testing.assert_close(from_padding_layout(Pad()(moved, kept), x, widths), F.pad(x, widths), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:found no residual addition")
@pytest.mark.parametrize("runtime_only", [False, True], ids=["traced", "runtime"])
def test_windows_padded_to_fit_and_cropped_conserve(runtime_only):
    _conserves(_seeded(PaddedWindows), _inputs(6, 7), runtime_only)


@pytest.mark.filterwarnings("ignore:found no residual addition")
@pytest.mark.parametrize("runtime_only", [False, True], ids=["traced", "runtime"])
def test_values_times_transposed_attention_weights_conserve(runtime_only):
    _conserves(_seeded(ValuesFirst), _inputs(5, 6), runtime_only)


def test_halo_attention_conserves():
    """Halo attention pads the keys and values with zeros and unfolds overlapping windows from them. Here every value
    is at most 0 (non-negative features, non-positive weights), so z+ at the attention spreads all relevance by the
    weights, the padded values' share included: the padding rule must hand it to the edge."""
    halo_attn = pytest.importorskip("timm.layers.halo_attn")

    class Halo(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU())
            self.attn = halo_attn.HaloAttn(16, 16, num_heads=2, block_size=4, halo_size=1)
            self.head = torch.nn.Linear(16, 5)

        def forward(self, x):
            return self.head(self.attn(self.embed(x)).mean((2, 3)))

    model = _seeded(Halo)
    with torch.no_grad():
        model.attn.kv.weight.abs_().neg_()
    _conserves(model, _inputs(8, 8))


# -- the timm families, at a second size (and their own where cheap) --

@torch.no_grad()
def _timm_model(name: str, **kwargs) -> torch.nn.Module:
    """Seeded random weights; batch norms with random statistics; every parameter that is one constant at
    initialisation (a zero-initialised projection, as EfficientViT's, the head, layer scales) given random values,
    since a branch whose output is zero gets no relevance and would hide a leak."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) * 1.5 + 0.5)
    for parameter in model.parameters():
        if parameter.numel() and bool(parameter.min() == parameter.max()):
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.double().eval()


_SMALL_SAM = {"embed_dim": 64, "depth": 2, "num_heads": 2, "global_attn_indexes": (1,), "neck_chans": 32}
# (name, options, height, width): windows padded to fit (TinyViT, DaViT, Twins, Hiera, SAM's ViT, EfficientViT at
# 96: 6 is no multiple of its 4-token window), SAM's relative position tables and position embedding resampled from
# 224's, the values times the attention weights (EfficientViT, SHViT), halo attention's padded keys (HaloNet)
CASES = [
    ("efficientvit_m0", {}, 64, 64), ("efficientvit_m0", {}, 64, 96), ("efficientvit_m0", {}, 224, 224),
    ("shvit_s1", {}, 64, 64), ("shvit_s1", {}, 224, 224),
    ("tiny_vit_5m_224", {}, 64, 64), ("tiny_vit_5m_224", {}, 64, 96),
    ("sam2_hiera_tiny", {}, 64, 64),
    ("samvit_base_patch16_224", _SMALL_SAM, 64, 64), ("samvit_base_patch16_224", _SMALL_SAM, 64, 96),
    ("samvit_base_patch16_224", _SMALL_SAM, 224, 224),
    ("twins_svt_small", {}, 64, 64),
    ("davit_tiny", {}, 64, 64),
    ("halonet_h1", {}, 256, 256),
]
SLOW = {("davit_tiny", 64), ("sam2_hiera_tiny", 64), ("halonet_h1", 256)}


@pytest.mark.parametrize("name, options, height, width", [
    pytest.param(*case, marks=pytest.mark.slow) if (case[0], case[2]) in SLOW else case for case in CASES],
    ids=[f"{name}-{height}x{width}" for name, _, height, width in CASES])
def test_timm_family_conserves_at_size(name, options, height, width):
    _conserves(_timm_model(name, **options), _inputs(height, width))

