"""Region deletion against values computed by hand on a tiny dense model."""
import math

import pytest
import torch

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.evaluation.regions import RegionDeletionError, region_deletion

# the three pixels the tiny model's label-0 logit reads, and their weights
PIXELS = ((0, 1), (2, 2), (3, 0))
WEIGHTS = (3.0, 2.0, 1.0)


class WeightedPixels(torch.nn.Module):
    """Dense logits (N, 2, 4, 4): class 0 is ``3 x[0,1] + 2 x[2,2] + x[3,0]`` at every pixel, class 1 is 3 (so class
    0 is predicted everywhere on a white image, and nowhere once two of the pixels are gone)."""

    def forward(self, x):
        score = sum(weight * x[:, 0, row, column] for (row, column), weight in zip(PIXELS, WEIGHTS))
        score = score[:, None, None].expand(-1, 4, 4)
        return torch.stack([score, torch.full_like(score, 3.0)], 1)


def perfect_map() -> torch.Tensor:
    relevance = torch.zeros(1, 4, 4)
    for (row, column), weight in zip(PIXELS, WEIGHTS):
        relevance[0, row, column] = weight
    return relevance


def test_deleting_the_read_pixels_first_drops_the_region_logit_to_the_known_values():
    result = region_deletion(WeightedPixels(), torch.ones(1, 1, 4, 4), lrp.Region(0), perfect_map(), steps=16)
    # one pixel a step: 6, then without the weight-3 pixel 3, then 1, then 0 for good
    torch.testing.assert_close(result.curve[0], torch.tensor([6.0, 3.0, 1.0] + [0.0] * 14))
    torch.testing.assert_close(result.normalized[0, :4], torch.tensor([1.0, 0.5, 1 / 6, 0.0]))
    torch.testing.assert_close(result.fractions, torch.arange(17, dtype=torch.float64) / 16)
    expected = ((1 + 0.5) / 2 + (0.5 + 1 / 6) / 2 + (1 / 6) / 2) / 16
    assert math.isclose(float(result.auc[0]), expected, rel_tol=1e-6)


def test_the_region_is_fixed_on_the_unchanged_input():
    # class 0 is predicted nowhere after two deletions: a region recomputed per step would be empty there
    result = region_deletion(WeightedPixels(), torch.ones(1, 1, 4, 4), lrp.Region(0), perfect_map(), steps=4)
    torch.testing.assert_close(result.curve[0], torch.tensor([6.0, 0.0, 0.0, 0.0, 0.0]))


def test_deleted_pixels_take_the_baseline():
    result = region_deletion(WeightedPixels(), torch.ones(1, 1, 4, 4), lrp.Region(0, box=(0, 0, 4, 4)),
                             perfect_map(), baseline=0.5, steps=16)
    torch.testing.assert_close(result.curve[0, :4], torch.tensor([6.0, 4.5, 3.5, 3.0]))


def test_perfect_map_beats_random_maps_and_the_reversed_map_is_worst():
    inputs, region = torch.ones(1, 1, 4, 4), lrp.Region(0)
    perfect = float(region_deletion(WeightedPixels(), inputs, region, perfect_map(), steps=16).auc[0])
    worst = float(region_deletion(WeightedPixels(), inputs, region, -perfect_map(), steps=16).auc[0])
    generator = torch.Generator().manual_seed(0)
    randoms = [float(region_deletion(WeightedPixels(), inputs, region, torch.rand(1, 4, 4, generator=generator),
                                     steps=16).auc[0]) for _ in range(10)]
    assert all(perfect < value <= worst for value in randoms)


def test_channel_maps_are_summed_and_samples_are_independent():
    inputs = torch.ones(2, 2, 4, 4)
    maps = torch.stack([perfect_map()[0] / 2] * 2)[:, None].expand(2, 2, 4, 4)
    result = region_deletion(WeightedPixels(), inputs, lrp.Region(0), maps, steps=16)
    torch.testing.assert_close(result.curve[0], result.curve[1])
    torch.testing.assert_close(result.curve[0, :4], torch.tensor([6.0, 3.0, 1.0, 0.0]))


def test_bad_inputs_are_one_line_errors():
    model, inputs = WeightedPixels(), torch.ones(1, 1, 4, 4)
    with pytest.raises(RegionDeletionError, match=r"relevance of shape \(1, 3, 3\) does not fit"):
        region_deletion(model, inputs, lrp.Region(0), torch.zeros(1, 3, 3))
    with pytest.raises(RegionDeletionError, match="region label 5 is out of range for 2 classes"):
        region_deletion(model, inputs, lrp.Region(5), perfect_map())
    with pytest.raises(RegionDeletionError, match="the region of sample 0 holds no pixels"):
        region_deletion(model, torch.zeros(1, 1, 4, 4), lrp.Region(0), perfect_map())
    with pytest.raises(RegionDeletionError, match=r"needs a dense output \(N, K, H, W\)"):
        region_deletion(lambda x: x.flatten(1), inputs, lrp.Region(0), perfect_map())
