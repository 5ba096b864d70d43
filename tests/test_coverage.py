"""What the rules leave to a plain gradient is named: modules with weights no rule covers (an ``nn.LSTM`` with a projection), custom
autograd functions (their own backward followed, not inlined), and a model handed over in training mode."""
import warnings

import pytest
import torch

import zennit_resnet_lrp as lrp
from helpers import make_inputs


class ProjectedLstmHead(torch.nn.Module):
    """Feature-map columns read as a sequence by an LSTM that projects its state: a fused recurrent layer no
    breakdown covers yet."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(8, 6, batch_first=True, proj_size=3)
        self.fc = torch.nn.Linear(3, 5)

    def forward(self, features):
        sequence = features.flatten(2).transpose(1, 2)
        states, _ = self.lstm(sequence)
        return self.fc(states[:, -1])


def _recurrent_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                               ProjectedLstmHead()).double().eval()


@pytest.mark.filterwarnings("ignore:found no residual addition")
def test_layer_without_a_rule_is_named_as_the_layer_not_its_parent():
    with pytest.warns(lrp.ConservationWarning, match=r"LSTM at '3\.lstm' has no rule") as caught:
        result = lrp.attribute(_recurrent_model(), make_inputs(2, 16))
    assert result.uncovered == [("3.lstm", "LSTM")]
    message = str(next(w.message for w in caught if isinstance(w.message, lrp.ConservationWarning)))
    assert "ResidualSum" not in message  # not the hint for an unrouted addition
    violation = next(w.message for w in caught if isinstance(w.message, lrp.ConservationWarning)).violation
    assert violation.kinds[0] == "LSTM"


class TimesThree(torch.autograd.Function):
    """Rounds in the forward, hands back three times the gradient: a backward that is not the forward's gradient."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 4) / 4

    @staticmethod
    def backward(ctx, grad):
        return grad * 3


class Rounding(torch.nn.Module):
    def forward(self, x):
        return TimesThree.apply(x)


def _function_model(rounding: bool):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), Rounding() if rounding else torch.nn.Identity(),
        torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 5)).double().eval()


@pytest.mark.filterwarnings("ignore:found no residual addition")
def test_custom_autograd_function_is_followed_and_named():
    """Its own backward carries relevance (three times the relevance: not inlined as tracing would), and the warning
    names it and the module where relevance grows."""
    x = make_inputs(2, 16)
    with pytest.warns(lrp.ConservationWarning, match=r"custom autograd function test_coverage\.TimesThree .*'2' "):
        result = lrp.attribute(_function_model(True), x)
    assert result.functions == ["test_coverage.TimesThree"]
    torch.testing.assert_close(result.total, 3 * result.start, rtol=1e-10, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plain = lrp.attribute(_function_model(False), x, tolerance=None)
    assert plain.functions == [] and plain.uncovered == []


@pytest.mark.filterwarnings("ignore:found no residual addition")
def test_training_mode_is_said_and_restored():
    model = _function_model(False).train()
    with pytest.warns(lrp.TrainingModeWarning, match="attributed in eval mode"):
        lrp.attribute(model, make_inputs(1, 16), tolerance=None)
    assert all(module.training for module in model.modules())


def test_a_token_the_model_concatenates_is_not_reported_without_a_rule():
    """MViT's positional encoding holds its class token and only concatenates it: routed through a TokenConcat,
    whose relevance is absorbed, it is covered."""

    class ClassToken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.token = torch.nn.Parameter(torch.randn(1, 1, 4))

        def forward(self, x):
            return torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)

    class Tokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.tokens, self.head = torch.nn.Conv1d(3, 4, 1), ClassToken(), torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.tokens(self.embed(x).transpose(1, 2))[:, 0])

    torch.manual_seed(0)
    result = lrp.attribute(Tokens().double().eval(), torch.randn(2, 3, 5, dtype=torch.float64), tolerance=None)
    assert result.uncovered == []
    assert float(result.conservation_error.max()) < 1e-12
