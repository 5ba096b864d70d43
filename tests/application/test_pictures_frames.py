"""A clip's heatmaps per frame (pictures.frame_strip): layout, labels and one colour scale across frames."""
import numpy as np
import pytest
import torch

from zennit_resnet_lrp.application.heatmap import render
from zennit_resnet_lrp.application.pictures import frame_labels, frame_strip
from zennit_resnet_lrp.application.pictures import MARGIN

TILE = 24


def clip_with(frame_values, channels=3, size=8):
    """Relevance (C, T, H, W) whose frame t holds ``frame_values[t]`` at every pixel of channel 0."""
    relevance = torch.zeros(channels, len(frame_values), size, size)
    relevance[0] = torch.tensor(frame_values, dtype=torch.float32)[:, None, None]
    return relevance


def tiles(strip, count, columns, pictures=1):
    """Each frame's heatmap (a TILE x TILE crop) of a strip of ``count`` square maps."""
    rows = -(-count // columns)
    cell_height = (strip.height - MARGIN) // rows
    crops = []
    for index in range(count):
        x = MARGIN + (index % columns) * (TILE + MARGIN)
        y = MARGIN + (index // columns) * cell_height + (pictures - 1) * (TILE + MARGIN)
        crops.append(strip.crop((x, y, x + TILE, y + TILE)))
    return crops


def test_strip_size_wraps_frames_into_rows_of_columns():
    one_row = frame_strip(clip_with([1.0] * 5), tile=TILE)
    wrapped = frame_strip(clip_with([1.0] * 5), columns=2, tile=TILE)
    assert one_row.width == MARGIN + 5 * (TILE + MARGIN)
    assert wrapped.width == MARGIN + 2 * (TILE + MARGIN)
    assert wrapped.height - MARGIN == 3 * (one_row.height - MARGIN)  # 5 frames, 2 a row: 3 rows of one cell
    with_frames = frame_strip(clip_with([1.0] * 5), torch.rand(3, 5, 8, 8), tile=TILE)
    assert with_frames.size == (one_row.width, one_row.height + TILE + MARGIN)  # the frame above each heatmap


def test_relevance_all_in_frame_two_colours_only_tile_two_and_labels_it_100_percent():
    relevance = clip_with([0.0, 0.0, 0.0, 0.0])
    relevance[0, 2, 2:6, 3:5] = 1.0
    zero = render(torch.zeros(1, 1), "coldnhot", normalized=True).getpixel((0, 0))
    for frames, pictures in ((None, 1), (torch.rand(1, 4, 8, 8), 2)):
        strip = frame_strip(relevance, frames, columns=3, tile=TILE)
        crops = tiles(strip, 4, 3, pictures)
        coloured = [{tuple(pixel) for pixel in np.asarray(crop).reshape(-1, 3)} - {zero} for crop in crops]
        assert [bool(colours) for colours in coloured] == [False, False, True, False]
    assert frame_labels(relevance) == ["t=0 0%", "t=1 0%", "t=2 100%", "t=3 0%"]


def test_one_scale_across_frames_draws_half_the_relevance_nearer_the_colour_of_zero():
    strip = frame_strip(clip_with([1.0, 0.5]), cmap="coldnhot", tile=TILE)
    full, half = (crop.getpixel((0, 0)) for crop in tiles(strip, 2, 2))
    zero = render(torch.zeros(1, 1), "coldnhot", normalized=True).getpixel((0, 0))
    assert half != full  # one scale per frame would draw both at the top of the colour map

    def distance(colour):
        return sum(abs(a - b) for a, b in zip(colour, zero))
    assert 0 < distance(half) < distance(full)
    assert frame_labels(clip_with([1.0, 0.5])) == ["t=0 67%", "t=1 33%"]


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(3, 8, 8), r"one clip's \(C, T, H, W\)"),
    (torch.zeros(1, 3, 2, 8, 8), r"for a batch pass relevance\[i\]"),
])
def test_relevance_that_is_not_one_clip_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        frame_strip(bad)


@pytest.mark.parametrize("frames, message", [
    (torch.rand(3, 3, 8, 8), "T = 2"),
    (torch.rand(2, 2, 8, 8), "C 1 or 3"),
    (torch.rand(3, 2, 8, 8) * 4 - 2, r"pixels in \[0, 1\]"),
])
def test_frames_that_do_not_fit_the_clip_are_refused(frames, message):
    with pytest.raises(ValueError, match=message):
        frame_strip(clip_with([1.0, 2.0]), frames)


def test_a_clip_whose_relevance_sums_to_zero_has_no_shares():
    assert frame_labels(clip_with([1.0, -1.0])) == ["t=0 n/a", "t=1 n/a"]
