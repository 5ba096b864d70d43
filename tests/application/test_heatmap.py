"""Heat quantization and display normalisation (docs/method.md) by hand."""
import pytest
import torch

from zennit_resnet_lrp.application.heatmap import montage, normalize, quantize, render


def test_quantize_bins_and_maximum():
    maps = torch.tensor([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]])  # bins 0, 3.5, 7 for 3 levels
    expected = torch.tensor([[0.0, 0.0, 0.0, 0.0], [3.5, 3.5, 3.5, 7.0]])
    torch.testing.assert_close(quantize(maps, 3), expected)
    batch = torch.stack([maps, maps * 2])
    torch.testing.assert_close(quantize(batch, 3), torch.stack([expected, expected * 2]))  # per map
    with pytest.raises(ValueError):
        quantize(maps, 1)


def test_normalize_signs_with_outlier_threshold():
    heatmap = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    # positive: [1, 2, 3, 0] sorted cumsum 0 1 3 6; 98% of 6 first reached at value 3
    torch.testing.assert_close(normalize(heatmap, "positive"), torch.tensor([[1 / 3, 2 / 3], [1.0, 0.0]]))
    # absolute: 1 2 3 4 -> cumsum 1 3 6 10; 98% of 10 reached at 4
    torch.testing.assert_close(normalize(heatmap, "absolute_value"), torch.tensor([[0.25, 0.5], [0.75, 1.0]]))
    torch.testing.assert_close(normalize(heatmap, "all"), torch.tensor([[0.25, 0.5], [0.75, -1.0]]))
    torch.testing.assert_close(normalize(heatmap, "negative"), torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(normalize(torch.zeros(2, 2)), torch.zeros(2, 2))
    with pytest.raises(ValueError):
        normalize(heatmap, "both")


def test_render_and_montage_sizes():
    image = render(torch.randn(5, 7), "coldnhot")
    assert image.size == (7, 5) and image.mode == "RGB"
    assert render(torch.zeros(3, 3), "bwr").getpixel((0, 0)) == (255, 255, 255)  # 0 is white in bwr
    sheet = montage([image] * 3, columns=2, tile=10)
    assert sheet.size == (24, 24)
