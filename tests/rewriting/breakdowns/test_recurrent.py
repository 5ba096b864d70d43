"""nn.LSTM decomposed step by step: the same output as the fused operation, exact conservation with the gates as
weights, the model exactly as it was afterwards."""
import pytest
import torch

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.rewriting.breakdowns.recurrent import decompose
from helpers import make_inputs


class RowLSTM(torch.nn.Module):
    """Features read row by row by an LSTM (Sequencer's idea), averaged into a linear head."""

    def __init__(self, bidirectional, layers, batch_first):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.lstm = torch.nn.LSTM(8, 6, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
        self.head = torch.nn.Linear(12 if bidirectional else 6, 10)

    def forward(self, x):
        features = torch.relu(self.conv(x))
        count, channels, height, width = features.shape
        rows = features.permute(0, 2, 3, 1).reshape(count * height, width, channels)
        if not self.lstm.batch_first:
            rows = rows.transpose(0, 1)
        out, _ = self.lstm(rows)
        if not self.lstm.batch_first:
            out = out.transpose(0, 1)
        return self.head(out.reshape(count, height * width, -1).mean(1))


SHAPES = [(True, 2, True), (False, 1, False)]


@pytest.mark.parametrize("bidirectional, layers, batch_first", SHAPES)
def test_decomposed_lstm_equals_the_fused_one(bidirectional, layers, batch_first):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 4, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first).double()
    sequences = torch.randn(3, 7, 5, dtype=torch.float64)
    state = (torch.randn(layers * (1 + bidirectional), 7 if not batch_first else 3, 4, dtype=torch.float64),) * 2
    expected = [lstm(sequences), lstm(sequences, state), lstm(sequences[0])]
    added = decompose(lstm)
    try:
        got = [lstm(sequences), lstm(sequences, state), lstm(sequences[0])]
    finally:
        lstm.__dict__.pop("forward")
        for name in added:
            lstm._modules.pop(name)
    for (output, (h, c)), (output_got, (h_got, c_got)) in zip(expected, got):
        for tensor, tensor_got in ((output, output_got), (h, h_got), (c, c_got)):
            torch.testing.assert_close(tensor_got, tensor, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bidirectional, layers, batch_first", SHAPES)
def test_lstm_conserves_and_restores(bidirectional, layers, batch_first):
    torch.manual_seed(1)
    model = RowLSTM(bidirectional, layers, batch_first).double().eval()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    modules = [(name, id(module)) for name, module in model.named_modules()]
    composite = lrp.make_composite()
    for count, size in ((2, 6), (1, 5)):
        result = lrp.attribute(model, make_inputs(count, size), composite)
        assert float(result.conservation_error.max()) <= 1e-12
    assert [name for name, _, _ in result.untraced] == ["lstm"]
    assert [(name, id(module)) for name, module in model.named_modules()] == modules
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
    assert "forward" not in model.lstm.__dict__


def test_the_gates_get_no_relevance():
    """The input gate's, forget gate's and output gate's pre-activations take nothing: all the relevance that
    reaches the LSTM's input comes through the candidate ``g`` (checked against the gradient, which would send some
    through the gates)."""
    torch.manual_seed(2)
    model = RowLSTM(False, 1, True).double().eval()
    lstm = model.lstm
    with lrp.make_composite().context(model):
        seen = []
        handle = lstm.ih_l0.register_full_backward_hook(lambda module, grad_in, grad_out: seen.append(grad_out[0]))
        x = make_inputs(1, 5).requires_grad_()
        torch.autograd.grad(model(x)[:, 3].sum(), x)
        handle.remove()
    assert seen
    hidden = lstm.hidden_size
    for relevance in seen:  # chunks i, f, g, o of the pre-activations
        gates = torch.cat([relevance[..., :2 * hidden], relevance[..., 3 * hidden:]], -1)
        assert float(gates.abs().max()) == 0
    assert any(float(relevance[..., 2 * hidden:3 * hidden].abs().max()) > 0 for relevance in seen)
