"""Any output: the logits found by convention in a Hugging Face-style output, a dict (torchvision's segmentation
``"out"``) or a tuple, or named with ``output=``; an output without them is a one-line error."""
from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch

import zennit_resnet_lrp as lrp


@dataclass
class Output:
    """A Hugging Face ``ImageClassifierOutput``-like result: logits among other fields."""

    loss: torch.Tensor | None
    logits: torch.Tensor


class Wrapped(torch.nn.Module):
    def __init__(self, model, wrap):
        super().__init__()
        self.model, self.wrap = model, wrap

    def forward(self, x):
        return self.wrap(self.model(x))


WRAPS = {
    "model output": (lambda y: Output(None, y), None),
    "dict with logits": (lambda y: OrderedDict(hidden=y * 2, logits=y), None),
    "segmentation out": (lambda y: OrderedDict(out=y, aux=y * 3), None),
    "tuple": (lambda y: (y, y * 2), None),
    "named key": (lambda y: {"scores": y, "other": y * 2}, "scores"),
    "index": (lambda y: (y * 2, y), 1),
    "callable": (lambda y: [{"a": y}], lambda output: output[0]["a"]),
}


@pytest.mark.parametrize("form", list(WRAPS))
def test_logits_found_in_any_output_give_the_tensor_models_relevance(form, resnet18, inputs):
    wrap, choice = WRAPS[form]
    plain = lrp.attribute(resnet18, inputs)
    wrapped = lrp.attribute(Wrapped(resnet18, wrap).eval(), inputs, output=choice)
    torch.testing.assert_close(wrapped.relevance, plain.relevance, rtol=1e-12, atol=0)
    assert float(wrapped.conservation_error.max()) <= lrp.DEFAULT_TOLERANCE
    report = lrp.check_conservation(Wrapped(resnet18, wrap).eval(), inputs, output=choice)
    assert report.passed


def test_an_output_without_logits_is_a_one_line_error(resnet18, inputs):
    model = Wrapped(resnet18, lambda y: {"scores": y}).eval()
    with pytest.raises(lrp.AttributionError, match=r"found no logits tensor in the model's output \(dict with keys "
                                                   r"scores\) by convention .*name it with output="):
        lrp.attribute(model, inputs)
    with pytest.raises(lrp.AttributionError, match=r"as 'missing'"):
        lrp.attribute(model, inputs, output="missing")
