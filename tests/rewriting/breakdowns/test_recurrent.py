"""nn.LSTM, nn.GRU and nn.RNN (tanh, relu) decomposed step by step: the same output as the fused operation, exact
conservation with the gates as weights, the model exactly as it was afterwards."""
import warnings

import pytest
import torch

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.rewriting.breakdowns.recurrent import decompose
from helpers import make_inputs

# kind -> (class, its options)
KINDS = {
    "lstm": (torch.nn.LSTM, {}),
    "gru": (torch.nn.GRU, {}),
    "rnn_tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNN, {"nonlinearity": "relu"}),
}
# (bidirectional, layers, batch_first, bias)
SHAPES = [(True, 2, True, True), (False, 1, False, False)]


def make_layer(kind, inputs, hidden, bidirectional, layers, batch_first, bias=True):
    cls, options = KINDS[kind]
    return cls(inputs, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias,
               **options)


class Rows(torch.nn.Module):
    """Features read row by row by a recurrent layer (Sequencer's idea), averaged into a linear head."""

    def __init__(self, kind, bidirectional, layers, batch_first, bias=True):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.recurrent = make_layer(kind, 8, 6, bidirectional, layers, batch_first, bias)
        self.head = torch.nn.Linear(12 if bidirectional else 6, 10)

    def forward(self, x):
        features = torch.relu(self.conv(x))
        count, channels, height, width = features.shape
        rows = features.permute(0, 2, 3, 1).reshape(count * height, width, channels)
        if not self.recurrent.batch_first:
            rows = rows.transpose(0, 1)
        out, _ = self.recurrent(rows)
        if not self.recurrent.batch_first:
            out = out.transpose(0, 1)
        return self.head(out.reshape(count, height * width, -1).mean(1))


def _flat(result):
    """``(output, h)`` or ``(output, (h, c))`` as a list of tensors."""
    output, state = result
    return [output, *(state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("bidirectional, layers, batch_first, bias", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_decomposed_layer_equals_the_fused_one(kind, bidirectional, layers, batch_first, bias):
    """Default and given initial states, batched and unbatched inputs."""
    torch.manual_seed(0)
    layer = make_layer(kind, 5, 4, bidirectional, layers, batch_first, bias).double()
    sequences = torch.randn(3, 7, 5, dtype=torch.float64)
    directions = layers * (1 + bidirectional)
    h = torch.randn(directions, 7 if not batch_first else 3, 4, dtype=torch.float64)
    state = (h, torch.randn_like(h)) if kind == "lstm" else h
    single = (h[:, 0], h[:, 1]) if kind == "lstm" else h[:, 0]
    calls = [(sequences,), (sequences, state), (sequences[0],), (sequences[0], single)]
    expected = [_flat(layer(*args)) for args in calls]
    added = decompose(layer)
    try:
        got = [_flat(layer(*args)) for args in calls]
    finally:
        layer.__dict__.pop("forward")
        for name in added:
            layer._modules.pop(name)
    for tensors, tensors_got in zip(expected, got):
        assert len(tensors_got) == len(tensors)
        for tensor, tensor_got in zip(tensors, tensors_got):
            torch.testing.assert_close(tensor_got, tensor, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bidirectional, layers, batch_first, bias", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_conserves_and_restores(kind, bidirectional, layers, batch_first, bias):
    """At two sequence lengths (rows of 6 and 5 pixels), no layer left uncovered, no conservation warning."""
    torch.manual_seed(1)
    model = Rows(kind, bidirectional, layers, batch_first, bias).double().eval()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    modules = [(name, id(module)) for name, module in model.named_modules()]
    parameters = [id(parameter) for parameter in model.parameters()]
    composite = lrp.make_composite()
    for count, size in ((2, 6), (1, 5)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", lrp.ConservationWarning)
            result = lrp.attribute(model, make_inputs(count, size), composite)
        assert float(result.conservation_error.max()) <= 1e-12
        assert result.uncovered == []
    assert [name for name, _, _ in result.untraced] == ["recurrent"]
    assert [(name, id(module)) for name, module in model.named_modules()] == modules
    assert [id(parameter) for parameter in model.parameters()] == parameters
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
    assert "forward" not in model.recurrent.__dict__


def _pre_activations(model, linear_names):
    """The relevance reaching the outputs of the decomposed layer's linear children, one tensor per call, for the
    default composite (read by tensor hooks: a module's backward hook would make the constant first-step state's
    projection require a gradient, and so change what it watches)."""
    seen = {name: [] for name in linear_names}

    def watch(name):
        def hook(module, args, output):
            if output.requires_grad:
                output.register_hook(seen[name].append)
        return hook

    with lrp.make_composite().context(model):
        handles = [model.recurrent.get_submodule(name).register_forward_hook(watch(name)) for name in linear_names]
        x = make_inputs(1, 5).requires_grad_()
        torch.autograd.grad(model(x)[:, 3].sum(), x)
        for handle in handles:
            handle.remove()
    return seen


def test_lstm_gates_get_no_relevance():
    """The input gate's, forget gate's and output gate's pre-activations take nothing: all the relevance that
    reaches the LSTM's input comes through the candidate ``g`` (checked against the gradient, which would send some
    through the gates)."""
    torch.manual_seed(2)
    model = Rows("lstm", False, 1, True).double().eval()
    seen = _pre_activations(model, ["ih_l0"])["ih_l0"]
    assert seen
    hidden = model.recurrent.hidden_size
    for relevance in seen:  # chunks i, f, g, o of the pre-activations
        gates = torch.cat([relevance[..., :2 * hidden], relevance[..., 3 * hidden:]], -1)
        assert float(gates.abs().max()) == 0
    assert any(float(relevance[..., 2 * hidden:3 * hidden].abs().max()) > 0 for relevance in seen)


def test_gru_gates_get_no_relevance():
    """The reset and update gates' pre-activations (chunks ``r`` and ``z`` of both projections) take nothing: the
    relevance reaching the input and the state comes through the candidate ``n``, its state part weighed by ``r``,
    and through ``z h'`` as the state itself (the gradient would send some through both gates)."""
    torch.manual_seed(2)
    model = Rows("gru", False, 1, True).double().eval()
    seen = _pre_activations(model, ["ih_l0", "hh_l0"])
    assert seen["ih_l0"] and seen["hh_l0"]  # the first step's state is a constant: its projection is not watched
    hidden = model.recurrent.hidden_size
    for relevance in seen["ih_l0"] + seen["hh_l0"]:  # chunks r, z, n
        assert float(relevance[..., :2 * hidden].abs().max()) == 0
    for name in ("ih_l0", "hh_l0"):
        assert any(float(relevance[..., 2 * hidden:].abs().max()) > 0 for relevance in seen[name])
