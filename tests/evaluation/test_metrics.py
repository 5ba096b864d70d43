"""Insertion / Deletion against values computed by hand on tiny images and maps."""
import math

import pytest
import torch

from zennit_resnet_lrp.evaluation.metrics import (CurveSpec, auc, curve_fractions, curve_masks, insertion_deletion,
                                                  perturbation_curves)


class CountingModel(torch.nn.Module):
    """Logits [s, 0] with s the sum of the pixels: p(class 0) = sigmoid(number of white pixels kept)."""

    def forward(self, x):
        s = x.sum((1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], 1)


def sigmoid(value):
    return 1 / (1 + math.exp(-value))


def curves(maps, spec):
    height, width = maps.shape[-2:]
    images = torch.ones(1, 1, height, width)
    return perturbation_curves(CountingModel(), images, maps[None], torch.tensor([0]), lambda x: x, spec)


def test_paper_thresholds_and_final_point():
    # sorted values 4 3 2 1; point i uses the value at sorted position min(i + 1, 3): keeps >= 3, 2, 1, 1
    result = curves(torch.tensor([[4.0, 3.0], [2.0, 1.0]]), CurveSpec(step=1))
    kept = [2, 3, 4, 4]
    torch.testing.assert_close(result["insertion"][0], torch.tensor([sigmoid(k) for k in kept]))
    torch.testing.assert_close(result["deletion"][0], torch.tensor([sigmoid(4 - k) for k in kept]))


def test_ties_enter_together_unless_strict():
    maps = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    paper = curves(maps, CurveSpec(step=1))["insertion"][0]
    torch.testing.assert_close(paper, torch.tensor([sigmoid(k) for k in (3, 3, 4, 4)]))
    strict = curves(maps, CurveSpec(step=1, strict=True))["insertion"][0]
    torch.testing.assert_close(strict, torch.tensor([sigmoid(k) for k in (1, 2, 3, 4)]))
    _, masks = curve_masks(maps[None], CurveSpec(step=1, strict=True))
    first = masks(torch.tensor([0]), torch.tensor([0]))[0]
    assert first.tolist() == [[True, False], [False, False]]  # ties broken by position


def test_step_larger_than_image_gives_one_point():
    result = curves(torch.rand(3, 3), CurveSpec(step=100))
    torch.testing.assert_close(result["insertion"], torch.tensor([[sigmoid(9)]]))
    torch.testing.assert_close(result["deletion"], torch.tensor([[sigmoid(0)]]))
    assert float(auc(result["insertion"])[0]) == pytest.approx(sigmoid(9))


def test_patch_size_two_moves_whole_patches():
    maps = torch.zeros(4, 4)
    maps[0, 0] = 5.0  # top-left patch wins through its max
    maps[3, 3] = 1.0  # then bottom-right
    points, masks = curve_masks(maps[None], CurveSpec(step=1, patch_size=2, strict=True))
    assert points == 4
    first = masks(torch.tensor([0]), torch.tensor([0]))[0]
    assert first.sum() == 4 and bool(first[:2, :2].all())
    second = masks(torch.tensor([0]), torch.tensor([1]))[0]
    assert second.sum() == 8 and bool(second[2:, 2:].all())


def test_points_instead_of_step_and_auc():
    spec = CurveSpec(points=3)
    assert spec.step_for(9) == 3
    scores = torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(auc(scores), torch.tensor([0.5, 1.0]))  # trapezoid on [0, 1]


def test_black_baseline_in_unit_space_then_normalized():
    seen = []

    def normalize(x):
        seen.append(x.clone())
        return (x - 0.5) / 0.25

    images = torch.full((1, 1, 2, 2), 0.8)
    perturbation_curves(CountingModel(), images, torch.tensor([[[2.0, 1.0], [0.0, 0.0]]]), torch.tensor([0]),
                        normalize, CurveSpec(step=1, strict=True), modes=("insertion",))
    first = seen[0][0, 0]
    assert sorted(first.flatten().tolist()) == pytest.approx([0.0, 0.0, 0.0, 0.8])  # black = 0 before normalising


def test_insertion_deletion_id_and_batching_independent():
    torch.manual_seed(0)
    maps = torch.rand(3, 5, 5)
    images = torch.rand(3, 1, 5, 5)
    labels = torch.tensor([0, 1, 0])
    one = insertion_deletion(CountingModel(), images, maps, labels, lambda x: x, CurveSpec(step=4), batch_size=1)
    many = insertion_deletion(CountingModel(), images, maps, labels, lambda x: x, CurveSpec(step=4), batch_size=50)
    for key in ("insertion", "deletion", "id"):
        torch.testing.assert_close(one[key], many[key])
    torch.testing.assert_close(one["id"], one["insertion"] - one["deletion"])
    assert one["insertion_curve"].shape == (3, math.ceil(25 / 4))


@pytest.mark.parametrize("bad", [dict(baseline="white"), dict(points=0), dict(step=2, points=3), dict(step=0)])
def test_spec_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        CurveSpec(**bad)


@pytest.mark.parametrize("size, spec", [((7, 7), CurveSpec(step=3)), ((7, 7), CurveSpec(step=3, strict=True)),
                                        ((7, 5), CurveSpec(points=28)), ((6, 6), CurveSpec(points=4, patch_size=2)),
                                        ((6, 6), CurveSpec(step=2, patch_size=3, patch_grid="reference"))])
def test_curve_fractions_are_where_the_masks_take_each_point(size, spec):
    """Point i is taken after i + 1 steps: its place on the x axis is the share of the image its mask shows, so the
    first is one step in (never 0) and the last is the whole image."""
    maps = torch.randperm(size[0] * size[1]).float().view(1, *size)  # distinct values: no ties
    points, masks = curve_masks(maps, spec)
    shown = [float(masks(torch.tensor([0]), torch.tensor([index]))[0].float().mean()) for index in range(points)]
    fractions = curve_fractions(size, spec)
    assert fractions == pytest.approx(shown)
    assert fractions[0] > 0 and fractions[-1] == 1.0
