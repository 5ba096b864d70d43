"""The overview and comparison pictures: captions and headers laid out without overlap, cut to their width, and a
colour legend that matches how heatmaps are rendered."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageFont
from zennit.image import palette

from zennit_resnet_lrp.application import pictures
from zennit_resnet_lrp.application.heatmap import SIGNS, keep_sign, normalize, render
from zennit_resnet_lrp.application.pictures import (Legend, caption_layout, comparison, default_font, header_layout,
                                                    legend_for, legend_layout, overview)

CAPTION = ["n01440764_tench.JPEG", "324 cabbage butterfly p=0.001", "R=0.000966"]
METHODS = ["flows_skip_conservative", "flows_skip", "integrated_gradients", "gradcam"]


def fonts():
    """The sized font, and the bitmap font Pillow before 10.1 gives (where this Pillow still ships it)."""
    found = [pytest.param(default_font(), id="default")]
    if hasattr(ImageFont, "load_default_imagefont"):
        found.append(pytest.param(ImageFont.load_default_imagefont(), id="bitmap"))
    return found


def disjoint(a, b, gap=0):
    """Whether boxes (left, top, right, bottom) keep ``gap`` pixels apart in x or in y."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def photo():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))


@pytest.mark.parametrize("font", fonts())
def test_caption_lines_do_not_overlap_vertically(font):
    texts = caption_layout(CAPTION, (0, 0), 228, font)
    assert [text.text for text in texts] == CAPTION  # each on its own line, nothing cut at the overview's width
    for upper, lower in zip(texts, texts[1:]):
        assert upper.box[3] < lower.box[1]  # a blank pixel row at least between lines


@pytest.mark.parametrize("font", fonts())
def test_long_caption_is_cut_to_the_tile_width(font):
    long = "a_very_long_file_name_of_an_image_from_somewhere_with_no_end_in_sight_2024.png"
    texts = caption_layout([long, "417 balloon p=0.930"], (10, 0), 128, font)
    assert all(text.box[2] <= 10 + 128 for text in texts)
    first = [text.text for text in texts[:-1]]
    assert len(first) == pictures.WRAP and first[-1].endswith(("\u2026", "..."))  # wrapped, then cut
    assert texts[-1].text == "417 balloon p=0.930"  # the next caption line keeps its own line
    assert all(upper.box[3] < lower.box[1] for upper, lower in zip(texts, texts[1:]))


@pytest.mark.parametrize("font", fonts())
def test_headers_of_adjacent_columns_do_not_overlap(font):
    for tile in (40, 128):
        texts = header_layout(["image", *METHODS], tile + pictures.MARGIN, tile, font=font)
        columns = [[text for text in texts if index * (tile + 4) <= text.position[0] < (index + 1) * (tile + 4)]
                   for index in range(1 + len(METHODS))]
        assert all(columns)  # every column has its header
        for left, right in zip(columns, columns[1:]):
            assert all(disjoint(a.box, b.box, gap=pictures.MARGIN) for a in left for b in right)
        assert all(a is b or disjoint(a.box, b.box) for a in texts for b in texts)


def test_bitmap_font_draws_text_outside_latin_1():
    if not hasattr(ImageFont, "load_default_imagefont"):
        pytest.skip("this Pillow has no bitmap default font")
    texts = caption_layout(["\u732b.png"], (0, 0), 100, ImageFont.load_default_imagefont())
    assert texts[0].text == "?.png"  # instead of a UnicodeEncodeError


def legend_area(sheet, legend_height):
    return np.asarray(sheet)[-legend_height:].reshape(-1, 3)


def has_colour(pixels, colour):
    return bool((np.abs(pixels.astype(int) - colour).max(1) <= 1).any())


@pytest.mark.parametrize("cmap", ["bwr", "hot"])
def test_legend_is_drawn_below_overview_and_comparison(cmap):
    legend = Legend(cmap, "relevance", "negative", "positive", "0")
    heatmap = Image.new("RGB", (20, 20), (0, 255, 0))  # no colour of either map
    plain = overview([(photo(), heatmap, CAPTION)] * 2, columns=2, tile=50)
    sheet = overview([(photo(), heatmap, CAPTION)] * 2, columns=2, tile=50, legend=legend)
    grid_plain = comparison([(photo(), CAPTION[:2], [(heatmap, ["R=1"])])], METHODS[:1], tile=40)
    grid = comparison([(photo(), CAPTION[:2], [(heatmap, ["R=1"])])], METHODS[:1], tile=40, legend=legend)
    colours = palette(cmap)
    for with_legend, without in ((sheet, plain), (grid, grid_plain)):
        assert with_legend.height > without.height
        assert np.array_equal(np.asarray(with_legend)[:without.height, :without.width], np.asarray(without))
        origin = (pictures.MARGIN, without.height + pictures.MARGIN)
        bar, _ = legend_layout(legend, origin, with_legend.width - 2 * pictures.MARGIN)
        strip = np.asarray(with_legend)[(bar[1] + bar[3]) // 2, bar[0]:bar[2]]  # the bar's middle row
        assert np.array_equal(strip[0], colours[0]) and np.array_equal(strip[-1], colours[255])  # its ends
        assert np.abs(strip[len(strip) // 2].astype(int) - colours[128]).max() <= 8  # and the middle colour
        area = np.asarray(with_legend)[without.height:].reshape(-1, 3)
        assert ((area.max(1) < 100) & (np.ptp(area, 1) < 10)).sum() > 20  # grey to black text: title and labels


def test_legend_shows_only_the_span_the_values_use():
    legend = legend_for("bwr", False, "positive")
    sheet = overview([(photo(), photo(), CAPTION)], legend=legend)
    plain = overview([(photo(), photo(), CAPTION)])
    area = legend_area(sheet, sheet.height - plain.height)
    colours = palette("bwr")
    assert has_colour(area, colours[255]) and not has_colour(area, colours[0])  # no blue: no negative values shown


@pytest.mark.parametrize("font", fonts())
def test_legend_labels_do_not_overlap_even_on_a_narrow_picture(font, monkeypatch):
    legend = legend_for("bwr", False, "all")
    bar, texts = legend_layout(legend, (0, 0), 60, font)
    labels = texts[-3:]
    assert [text.text for text in labels] == ["negative (-max|R|)", "0", "positive (+max|R|)"]
    assert all(a is b or disjoint(a.box, b.box, gap=pictures.LABEL_GAP // 2) for a in labels for b in labels)
    assert all(disjoint(text.box, bar) for text in texts)
    assert labels[0].box[0] == bar[0] and abs(labels[2].box[2] - bar[2]) <= 1  # the ends under the bar's ends
    monkeypatch.setattr(pictures, "default_font", lambda: font)
    sheet = overview([(photo(), photo(), [])], tile=20, legend=legend)
    assert sheet.width >= bar[2] - bar[0] + 2 * pictures.MARGIN > 2 * (20 + pictures.MARGIN) + 20  # widened


@pytest.mark.parametrize("cmap", ["bwr", "hot"])
@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("sign", SIGNS)
def test_legend_matches_how_maps_are_rendered(cmap, normalized, sign):
    """The colours a map of both signs renders to are those of the legend's span, its ends included."""
    values = torch.linspace(-3.0, 3.0, 601).reshape(1, 601)
    shown = normalize(values, sign, outlier_percent=20) if normalized else keep_sign(values, sign)
    rendered = {tuple(colour) for colour in np.asarray(render(shown, cmap, normalized=normalized))[0]}
    legend = legend_for(cmap, normalized, sign)
    start, stop = (round(end * 255) for end in legend.span)
    colours = palette(cmap)
    assert rendered <= {tuple(colour) for colour in colours[start:stop + 1]}
    assert tuple(colours[start]) in rendered and tuple(colours[stop]) in rendered


def test_legend_rejects_an_unknown_sign():
    with pytest.raises(ValueError, match="unknown sign 'both'"):
        legend_for("bwr", True, "both")


def test_comparison_keeps_columns_for_missing_heatmaps():
    heatmap = Image.new("RGB", (10, 10), (0, 255, 0))
    grid = comparison([(photo(), ["a.png"], [None, (heatmap, ["R=1"])])], METHODS[:2], tile=40)
    pixels = np.asarray(grid)
    green = (pixels[..., 1] == 255) & (pixels[..., 0] == 0) & (pixels[..., 2] == 0)
    columns = np.nonzero(green.any(0))[0]
    assert columns.min() >= 2 * (40 + pictures.MARGIN)  # the heatmap under the second method, not the first
