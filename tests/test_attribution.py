"""attribute(): targets, start relevance, batching, dtypes, errors and the conservation warning."""
import warnings

import pytest
import torch

import zennit_resnet_lrp as lrp
import torchvision

from helpers import make_inputs, make_model, randomize_batchnorm


def test_result_shapes_and_fields(resnet18, inputs):
    result = lrp.attribute(resnet18, inputs)
    assert result.relevance.shape == inputs.shape
    assert result.heatmap.shape == (2, 64, 64)
    torch.testing.assert_close(result.heatmap, result.relevance.sum(1))
    with torch.no_grad():
        logits = resnet18(inputs)
    assert torch.equal(result.target, logits.argmax(1))
    torch.testing.assert_close(result.start, logits.softmax(1).max(1).values)


def test_batch_equals_one_at_a_time_with_own_targets(resnet18):
    x = make_inputs(5, 48, seed=7)
    targets = [3, 0, 9, 3, 1]
    batched = lrp.attribute(resnet18, x, "flows_skip", target=targets, tolerance=None)
    chunked = lrp.attribute(resnet18, x, "flows_skip", target=torch.tensor(targets), batch_size=2, tolerance=None)
    for index in range(5):
        single = lrp.attribute(resnet18, x[index:index + 1], "flows_skip", target=targets[index], tolerance=None)
        torch.testing.assert_close(batched.relevance[index:index + 1], single.relevance, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(chunked.relevance, batched.relevance, rtol=1e-12, atol=1e-15)
    assert batched.target.tolist() == targets


@pytest.mark.parametrize("start", ["softmax", "logit", "one"])
def test_start_relevance(resnet18, inputs, start):
    result = lrp.attribute(resnet18, inputs, start_with=start, target=2)
    with torch.no_grad():
        logits = resnet18(inputs)
    expected = {"softmax": logits.softmax(1)[:, 2], "logit": logits[:, 2], "one": torch.ones(2, dtype=logits.dtype)}
    torch.testing.assert_close(result.start, expected[start])
    torch.testing.assert_close(result.total, result.start, rtol=1e-6, atol=1e-12)


def test_float32_and_float64_agree():
    model64 = make_model("resnet18", seed=8)
    model32 = make_model("resnet18", seed=8, dtype=torch.float32)
    x = make_inputs(2, 32, seed=8)
    r64 = lrp.attribute(model64, x).relevance
    r32 = lrp.attribute(model32, x.float()).relevance
    assert r32.dtype == torch.float32
    torch.testing.assert_close(r32.double(), r64, rtol=1e-3, atol=1e-4 * float(r64.abs().max()))


@pytest.mark.parametrize("bad, message", [
    (lambda x: x[0], r"the model failed on inputs of shape \(3, 64, 64\) \(.*\); if they are one image \(C, H, W\), "
                     r"add a batch dimension with unsqueeze\(0\)"),
    (lambda x: x[0, 0], r"images \(N, C, H, W\) or clips \(N, C, T, H, W\); got shape \(64, 64\); add a batch"),
    (lambda x: x[None, None], r"got shape \(1, 1, 2, 3, 64, 64\)$"),
    (lambda x: x[:0], "no samples"),
    (lambda x: x.long(), "floating point"),
    (lambda x: x.float(), "float32 .* but the model is torch.float64"),
    (lambda x: x.tolist(), "must be a torch.Tensor"),
])
def test_bad_inputs_raise_one_line(resnet18, inputs, bad, message):
    with pytest.raises(lrp.AttributionError, match=message) as info:
        lrp.attribute(resnet18, bad(inputs))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"target": 10}, "target 10 is out of range for a model with 10 classes"),
    ({"target": [-1, 0]}, "target -1 is out of range"),
    ({"target": [1, 2, 3]}, "3 entries for 2 samples"),
    ({"target": 1.5}, "integer"),
    ({"method": "nope"}, "unknown method 'nope'"),
    ({"start_with": "prob"}, "unknown start relevance"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_arguments_raise(resnet18, inputs, kwargs, message):
    with pytest.raises(lrp.AttributionError, match=message):
        lrp.attribute(resnet18, inputs, **kwargs)


class UntraceableResidual(torch.nn.Module):
    """A residual block that torch.fx cannot trace: its forward branches on a tensor's value."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU())

    def forward(self, x):
        if x.sum() > 0:
            return x + self.body(x)
        return self.body(x) + x


def _with_block(block: torch.nn.Module) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), block, torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).double()


def test_untraceable_residual_block_is_routed_while_it_runs_and_named():
    model = _with_block(UntraceableResidual()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # conserves: no warning
        result = lrp.attribute(model, make_inputs(1, 8))
    assert [(name, kind) for name, kind, _ in result.untraced] == [("2", "UntraceableResidual")]
    assert result.untraced[0][2].endswith("routed while it runs")
    assert float(result.conservation_error.max()) <= 1e-12


class Unroutable(UntraceableResidual):
    """An untraceable block that refuses new children: left as it is."""

    def add_module(self, name, module):
        raise AttributeError("no new children here")


@pytest.mark.filterwarnings("ignore:found no residual addition")
def test_block_that_cannot_be_routed_warns_with_the_fix_and_names_it():
    model = _with_block(Unroutable())
    with pytest.warns(lrp.ResidualTracingWarning, match=r"could not trace '2' \(Unroutable.*ResidualSum"), \
            pytest.warns(lrp.ConservationWarning, match=r"'2' \(Unroutable"):
        result = lrp.attribute(model, make_inputs(1, 8))
    assert [name for name, _, _ in result.untraced] == ["2"] and result.untraced[0][2].endswith("left as it is")
    assert list(model[2]._modules) == ["body"] and "forward" not in model[2].__dict__


def test_conserving_method_does_not_warn(resnet18, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrp.attribute(resnet18, inputs)


def test_method_instance_and_zennit_name(resnet18, inputs):
    instance = lrp.attribute(resnet18, inputs, lrp.FlowsSkip(), tolerance=None).relevance
    by_name = lrp.attribute(resnet18, inputs, "flows_skip", tolerance=None).relevance
    assert torch.equal(instance, by_name)
    zennit = lrp.attribute(resnet18, inputs, "epsilon_plus_flat", tolerance=None)
    # zennit's composite gets a residual canonizer: Norm at the sums, no doubling of relevance
    assert float(zennit.conservation_error.max()) < 0.5


def test_progress_reports_every_batch(resnet18, inputs):
    done = []
    lrp.check_conservation(resnet18, torch.cat([inputs, inputs, inputs[:1]]), batch_size=2, progress=done.append)
    assert done == [2, 2, 1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_refused(resnet18, inputs, bad):
    x = inputs.clone()
    x[1, 0, 3, 4] = bad
    with pytest.raises(lrp.AttributionError, match=r"NaN or infinite values \(sample\(s\) 1\)"):
        lrp.attribute(resnet18, x)


@pytest.mark.parametrize("name", ["r3d_18", pytest.param("mc3_18", marks=pytest.mark.slow),
                                  pytest.param("r2plus1d_18", marks=pytest.mark.slow)])
def test_video_resnets_conserve_on_clips_of_two_lengths(name):
    """(N, C, T, H, W) clips through 3-D convolutions, pools and norms: a map per frame, the model as it was."""
    torch.manual_seed(0)
    model = randomize_batchnorm(getattr(torchvision.models.video, name)(num_classes=5)).double().eval()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    for frames in (2, 4):
        clips = torch.randn(1, 3, frames, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(frames))
        result = lrp.attribute(model, clips)
        assert result.heatmap.shape == (1, frames, 16, 16)
        assert float(result.conservation_error.max()) <= 1e-12
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
