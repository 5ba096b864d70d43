"""Heat quantization and display normalisation (docs/method.md) by hand."""
import pytest
import torch

from PIL import Image

from zennit_resnet_lrp.application.heatmap import hatch, normalize, quantize, render, to_photo
from zennit_resnet_lrp.application.images import Preprocessing
from zennit_resnet_lrp.application.pictures import comparison, overview


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


def test_render_sizes_and_range():
    image = render(torch.randn(5, 7), "coldnhot")
    assert image.size == (7, 5) and image.mode == "RGB"
    assert render(torch.zeros(3, 3), "bwr").getpixel((0, 0)) == (255, 255, 255)  # 0 is white in bwr
    # a limit larger than the map's maximum draws it paler: the colour range of the map it was resampled from
    assert render(torch.ones(1, 1), "bwr", limit=2.0).getpixel((0, 0)) != render(torch.ones(1, 1), "bwr") \
        .getpixel((0, 0))


def test_quantize_keeps_the_maximum_at_the_top_level():
    """(max - min) / 7 * 7 can round above max; the top bin is the maximum itself, as numpy's linspace makes it."""
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(200, 8, 8, generator=generator, dtype=torch.float32) * 3.7 - 1.3
    quantized = quantize(maps, 8)
    top = maps.flatten(1).max(1).values
    assert torch.equal(quantized.flatten(1).max(1).values, top)
    assert torch.equal(quantized.flatten(1).eq(top[:, None]).sum(1), maps.flatten(1).eq(top[:, None]).sum(1))
    levels = torch.tensor([len(torch.unique(q)) for q in quantized])
    assert int(levels.max()) <= 8


def test_heatmap_laid_over_the_photo_through_resize_and_crop():
    """A map of the model's input sampled at a 451x300 photo's pixels: the input covers the crop's region (x 94-357 of
    451 after resize 256 and crop 224), the cut-off border is marked, and a photo the size of the input gets the map
    back exactly."""
    prep = Preprocessing()
    region = prep.input_region((451, 300))
    assert region == pytest.approx((93.96, 18.75, 357.04, 281.25), abs=0.01)
    ramp = torch.arange(224, dtype=torch.float64).expand(224, 224)  # the input's x coordinate
    values, covered = to_photo(ramp, region, (451, 300))
    assert values.shape == covered.shape == (300, 451)
    assert covered[150, 94:357].all() and not covered[150, :93].any() and not covered[150, 358:].any()
    assert not covered[:18, 200].any() and covered[19:281, 200].all()
    assert float(values[150, 225]) == pytest.approx((225.5 - region[0]) / (region[2] - region[0]) * 224 - 0.5,
                                                   abs=1e-9)  # bilinear along the ramp
    same, everywhere = to_photo(ramp, Preprocessing(resize=224, crop=224).input_region((224, 224)), (224, 224))
    assert everywhere.all()
    torch.testing.assert_close(same, ramp, rtol=0, atol=1e-9)
    shaded = hatch(render(values), covered)
    assert shaded.size == (451, 300) and shaded.getpixel((10, 150)) != render(values).getpixel((10, 150))


def test_overview_and_comparison_are_labelled():
    photo, heatmap = Image.new("RGB", (60, 40), "blue"), render(torch.randn(20, 20))
    sheet = overview([(photo, heatmap, ["cat.png", "tabby p=0.930", "R=0.93"])] * 3, columns=2, tile=50)
    assert sheet.size[1] > 2 * 50  # two rows with their captions below the tiles
    assert len(sheet.crop((0, 50, 100, 90)).getcolors()) > 1  # the caption was drawn
    grid = comparison([(photo, ["cat.png"], [(heatmap, ["R=1"]), (heatmap, [])])], ["default", "gradcam"], tile=40)
    assert grid.size[0] == 3 * (40 + 4)
