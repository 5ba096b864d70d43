"""Unfold and fold: their rules against sums written out entry by entry, and an outlook-attention block (VOLO's:
unfold the values, attend within each window, fold back) in a classifier."""
import math

import pytest
import torch
import torch.nn.functional as F

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.rewriting import Fold
from zennit_resnet_lrp.rules import CopiesBack, FoldSplit
from helpers import make_inputs

GEOMETRY = {"kernel_size": 3, "dilation": 1, "padding": 1, "stride": 2}


def _sources(size, pad_value):
    """For each column entry of a (1, 1, h, w) image unfolded with GEOMETRY, the flat index of the pixel it lands on,
    or ``pad_value`` where it lands on the padding (``"edge"``: the nearest pixel)."""
    height, width = size
    index = torch.arange(height * width, dtype=torch.float64).reshape(1, 1, height, width)
    pad = GEOMETRY["padding"]
    if pad_value == "edge":
        padded = F.pad(index, (pad,) * 4, mode="replicate")
    else:
        padded = F.pad(index, (pad,) * 4, value=pad_value)
    geometry = {**GEOMETRY, "padding": 0}
    return F.unfold(padded, **geometry)[0].long()  # (k*k, windows)


def test_copies_back_returns_each_copy_to_its_pixel_and_padding_copies_to_the_edge():
    size, channels = (5, 6), 2
    module = torch.nn.Unfold(**GEOMETRY)
    x = torch.randn(1, channels, *size, dtype=torch.float64)
    relevance = torch.randn_like(module(x))
    result = CopiesBack().relevance(module, (x,), relevance)
    sources = _sources(size, "edge")
    expected = torch.zeros(channels, size[0] * size[1], dtype=torch.float64)
    columns = relevance[0].reshape(channels, *sources.shape)
    for channel in range(channels):
        for entry, window in zip(*[axis.flatten() for axis in torch.meshgrid(
                torch.arange(sources.shape[0]), torch.arange(sources.shape[1]), indexing="ij")]):
            expected[channel, sources[entry, window]] += columns[channel, entry, window]
    torch.testing.assert_close(result, expected.reshape(1, channels, *size))
    torch.testing.assert_close(result.sum(), relevance.sum())


@pytest.mark.parametrize("mode", ["ratio", "symmetric"])
def test_fold_split_shares_each_pixel_over_the_entries_on_it(mode):
    size, channels = (5, 6), 2
    module = Fold(**GEOMETRY)
    windows = math.ceil(size[0] / 2) * math.ceil(size[1] / 2)
    x = torch.randn(1, channels * 9, windows, dtype=torch.float64)
    x[0, :9, 0] = 0  # one window of the first channel all zero: an even split where nothing lands but zeros
    relevance = torch.randn_like(module(x, size))
    result = FoldSplit(mode).relevance(module, (x,), relevance)
    sources = _sources(size, -1)
    expected = torch.zeros_like(x)
    for channel in range(channels):
        columns = x[0, channel * 9:(channel + 1) * 9]
        for pixel in range(size[0] * size[1]):
            on = sources == pixel
            share = columns.abs() * on
            share = share / share.sum() if mode == "ratio" and share.sum() > 0 else on / on.sum()
            expected[0, channel * 9:(channel + 1) * 9] += share * relevance[0, channel].flatten()[pixel]
    torch.testing.assert_close(result, expected)
    torch.testing.assert_close(result.sum(), relevance.sum())


class Outlook(torch.nn.Module):
    """VOLO's outlook attention in short: values unfolded into 3x3 windows, attention within each window from a
    linear map of the input, the result folded back to the input's size (read off the input)."""

    def __init__(self, channels):
        super().__init__()
        self.v = torch.nn.Conv2d(channels, channels, 1)
        self.attn = torch.nn.Conv2d(channels, 81, 1)
        self.unfold = torch.nn.Unfold(3, padding=1)

    def forward(self, x):
        batch, channels, height, width = x.shape
        v = self.unfold(self.v(x)).reshape(batch, channels, 9, height * width).permute(0, 3, 2, 1)
        attn = self.attn(x).permute(0, 2, 3, 1).reshape(batch, height * width, 9, 9).softmax(-1)
        out = (attn @ v).permute(0, 3, 2, 1).reshape(batch, channels * 9, height * width)
        return x + F.fold(out, output_size=(height, width), kernel_size=3, padding=1)


def test_outlook_attention_conserves_at_two_sizes_on_both_paths_and_restores():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), Outlook(4), Outlook(4),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10))
    model = model.double().eval()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    composite = lrp.make_composite()
    for count, size in ((2, 8), (1, 11)):
        result = lrp.attribute(model, make_inputs(count, size), composite)
        assert float(result.conservation_error.max()) <= 1e-12
    hooks = lrp.attribute(model, make_inputs(1, 11), lrp.FlowsSkipConservative(fast=False))  # zennit's hook path
    torch.testing.assert_close(hooks.relevance, result.relevance)
    with composite.context(model):
        kinds = [type(module).__name__ for module in model.modules()]
    assert kinds.count("Fold") == 2 and kinds.count("AttentionProduct") == 2
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
    assert all("forward" not in module.__dict__ for module in model.modules())
    assert [type(module).__name__ for module in model.modules()].count("Fold") == 0


def test_fold_split_moves_relevance_of_pixels_no_window_covers_to_the_nearest_covered():
    # 2x2 windows at stride 2 on a 3x5 map cover rows 0-1 and columns 0-3; at stride 3, column 2 lies between windows
    for stride, size, rows, cols in ((2, (3, 5), [0, 1, 1], [0, 1, 2, 3, 3]), (3, (2, 5), [0, 1], [0, 1, 1, 3, 4])):
        module = Fold(kernel_size=2, stride=stride)
        windows = ((size[0] - 2) // stride + 1) * ((size[1] - 2) // stride + 1)
        x = torch.randn(2, 3 * 4, windows, dtype=torch.float64)
        relevance = torch.randn_like(module(x, size))
        moved = torch.zeros_like(relevance)
        for row, target_row in enumerate(rows):
            for col, target_col in enumerate(cols):
                moved[..., target_row, target_col] += relevance[..., row, col]
        for mode in ("ratio", "symmetric"):
            result = FoldSplit(mode).relevance(module, (x,), relevance)
            torch.testing.assert_close(result, FoldSplit(mode).relevance(module, (x,), moved))
            torch.testing.assert_close(result.sum((1, 2)), relevance.sum((1, 2, 3)), rtol=0, atol=1e-12)


class PatchRoundTrip(torch.nn.Module):
    """MobileViTV2's global block in short: the map unfolded into 2x2 patches at stride 2 (a map of odd width loses
    its last column), a linear map per patch position, folded back to the map's size (zeros where nothing lands)."""

    def __init__(self, channels):
        super().__init__()
        self.mix = torch.nn.Linear(channels, channels)
        self.project = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        batch, channels, height, width = x.shape
        patches = F.unfold(x, kernel_size=2, stride=2).reshape(batch, channels, 4, -1)
        patches = self.mix(patches.transpose(1, 3)).transpose(1, 3).reshape(batch, channels * 4, -1)
        return self.project(F.fold(patches, (height, width), kernel_size=2, stride=2))


def test_patch_round_trip_over_a_map_not_a_multiple_of_the_patch_conserves_and_restores():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), PatchRoundTrip(4),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10))
    model = model.double().eval()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    inputs = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = lrp.attribute(model, inputs, lrp.make_composite())
    assert float(result.conservation_error.max()) <= 1e-10
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
