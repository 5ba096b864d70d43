"""torchvision's shifted window attention over two and three window dimensions (Swin, Swin3D) and Swin's patch
merging through explicit modules: the same output, exact conservation, the model exactly as it was afterwards."""
import pytest
import torch
from torchvision.models import swin_transformer as swin
from torchvision.models.video import swin_transformer as swin3d

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.rewriting.breakdowns import windows
from helpers import make_inputs


def _state(model):
    return {key: value.clone() for key, value in model.state_dict().items()}


def _tiny_swin3d(seed: int = 0) -> torch.nn.Module:
    """Two stages of two blocks (the second of each shifted), 2x2x2 windows, a patch merging between them."""
    torch.manual_seed(seed)
    return swin3d.SwinTransformer3d([2, 4, 4], 8, [2, 2], [2, 2], [2, 2, 2], num_classes=5).double().eval()


@pytest.mark.parametrize("clip", [(2, 3, 8, 16, 16), (1, 3, 6, 20, 12)])
def test_swin3d_window_attention_decomposed_and_conserving(clip):
    """``ShiftedWindowAttention3d`` written out: the same output, and the default conserves to rounding; at
    (6, 20, 12) frames and pixels the feature maps (3, 5, 3) are padded to whole windows and shifted, the stage after
    the merge (2, 3, 2) has windows shrunk to the map along time and width (no shift there), and the patch merging
    pads odd maps."""
    model, inputs = _tiny_swin3d(), torch.randn(*clip, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    before = _state(model)
    with torch.no_grad():
        expected = model(inputs)
        with lrp.FlowsSkipConservative().context(model):
            attentions = [m for m in model.modules() if isinstance(m, swin3d.ShiftedWindowAttention3d)]
            assert len(attentions) == 4 and all(isinstance(m.values, lrp.AttentionProduct) for m in attentions)
            torch.testing.assert_close(model(inputs), expected, rtol=1e-12, atol=1e-14)
    result = lrp.attribute(model, inputs)
    assert float(result.conservation_error.max()) <= 1e-10
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[key], before[key]) for key in before)
    assert not any("forward" in module.__dict__ for module in model.modules())


def test_swin3d_hook_path_agrees():
    """The padding's widths come with each call: zennit's hook path reads them as the fast path does."""
    model, inputs = _tiny_swin3d(1), torch.randn(1, 3, 6, 20, 12, dtype=torch.float64)
    fast = lrp.attribute(model, inputs)
    hooked = lrp.attribute(model, inputs, lrp.FlowsSkipConservative(fast=False))
    torch.testing.assert_close(hooked.relevance, fast.relevance, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("merging", [swin.PatchMerging, swin.PatchMergingV2])
def test_patch_merging_padding_keeps_relevance(merging):
    """Swin's patch merging pads odd maps inside a function hidden from torch.fx: written out through a ``Pad``, the
    padded tokens' relevance goes to the edge tokens (the crop would drop it); at 40 pixels the 5x5 map is padded to
    6x6."""
    torch.manual_seed(0)
    model = swin.SwinTransformer([4, 4], 16, [2, 2, 2], [2, 2, 2], [4, 4], num_classes=10,
                                 downsample_layer=merging).double().eval()
    assert windows.PATCH_MERGING.matches(model.features[2])
    result = lrp.attribute(model, make_inputs(2, 40))
    assert float(result.conservation_error.max()) <= 1e-10


def test_window_partition_and_merge_invert_each_other():
    """The partition's windows hold the tokens of one window each, in row-major order, and the merge inverts it, in
    two and three dimensions."""
    for sizes, window in (([4, 6], [2, 3]), ([2, 4, 6], [1, 2, 3])):
        x = torch.arange(2 * torch.Size(sizes).numel() * 3.0).reshape(2, *sizes, 3)
        parts = windows._partition(x, window)
        assert parts.shape == (2 * torch.Size(sizes).numel() // torch.Size(window).numel(),
                               torch.Size(window).numel(), 3)
        first = x[(0, *(slice(0, length) for length in window))].reshape(-1, 3)
        assert torch.equal(parts[0], first)
        assert torch.equal(windows._merge(parts, window, sizes), x)
