"""No stray factor between the rules: an explicit module made of children with rules hands on exactly what its
children's rules say, chained by hand; the operations between them (a transpose, a mask, repeated heads) pass
relevance as it is. The one such module is ``Attention``: its query scale is a ``Scale`` child, whose rule passes
relevance (the plain ``query * scale`` it replaced multiplied the query's relevance by ``1 / sqrt(d)``)."""
import inspect

import pytest
import torch
import torch.nn.functional as F
from zennit.composites import LayerMapComposite

import zennit_resnet_lrp as lrp
from zennit_resnet_lrp.rewriting import modules

RULES = {"scale": lrp.PassThrough(), "logits": lrp.BilinearSplit("signed", epsilon=0.0),
         "softmax": lrp.SoftmaxRule(), "values": lrp.BilinearSplit("signed", epsilon=0.0)}


def _by_hand(attention, query, key, value, relevance, scale, mask, repeat):
    """The children's rules chained: values, softmax, logits, scale; what the operations between them do to
    relevance: the transpose's and the repetition's transposes, nothing to masked logits."""
    key_repeated, value_repeated = (x.repeat_interleave(repeat, -3) for x in (key, value))
    logits = (query * scale) @ key_repeated.transpose(-2, -1)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    weights = logits.softmax(-1)
    to_weights, to_value = RULES["values"].relevance(attention.values, (weights, value_repeated), relevance)
    to_logits = RULES["softmax"].relevance(attention.softmax, (logits,), to_weights)
    to_scaled, to_key_t = RULES["logits"].relevance(attention.logits, (query * scale, key_repeated.transpose(-2, -1)),
                                                    to_logits)
    to_query = RULES["scale"].relevance(attention.scale, (query, scale), to_scaled)

    def gathered(x):  # the copies of a head shared by `repeat` query heads: their relevance summed
        return x.unflatten(-3, (-1, repeat)).sum(-3)
    return to_query, gathered(to_key_t.transpose(-2, -1)), gathered(to_value)


@pytest.mark.parametrize("mask", [None, "bool", "float"])
@pytest.mark.parametrize("repeat", [1, 2])
def test_attention_hands_on_what_its_childrens_rules_say(mask, repeat):
    """Relevance at query, key and value through the module equals the children's rules chained by hand: no
    factor from the scale, the transpose, the mask or grouped-query heads."""
    generator = torch.Generator().manual_seed(0)
    heads, scale = 4, 0.3
    query = torch.randn(2, heads, 5, 8, generator=generator, dtype=torch.float64)
    key, value = (torch.randn(2, heads // repeat, 5, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    attn_mask = {None: None, "bool": torch.rand(5, 5, generator=generator) > 0.3,
                 "float": torch.randn(5, 5, generator=generator, dtype=torch.float64)}[mask]
    if mask == "bool":
        attn_mask[:, 0] = True
    relevance = torch.randn(2, heads, 5, 8, generator=generator, dtype=torch.float64)
    attention = lrp.Attention()
    composite = LayerMapComposite([(lrp.Scale, RULES["scale"]), (lrp.AttentionProduct, RULES["values"]),
                                   (lrp.MatrixProduct, RULES["logits"]), (torch.nn.Softmax, RULES["softmax"])])
    inputs = tuple(x.clone().requires_grad_() for x in (query, key, value))
    with composite.context(attention):
        output = attention(*inputs, attn_mask, 0.0, False, scale, repeat > 1)
        got = torch.autograd.grad(output, inputs, relevance)
    expected = _by_hand(attention, query, key, value, relevance, scale, attn_mask, repeat)
    for name, a, b in zip(("query", "key", "value"), got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * float(b.abs().max()), msg=name)
    assert float(got[0].abs().max()) > 0


# the constructor arguments of the explicit modules that need some
ARGUMENTS = {"FunctionalNorm": (F.layer_norm,), "Elementwise": (torch.abs,), "FunctionalPool": (F.avg_pool2d, (2,)),
             "Fold": (2,), "SumOver": (1,)}


def test_attention_is_the_only_explicit_module_with_children():
    """Every other explicit module is one rule around its whole forward: nothing runs between rules there. (A new
    explicit module that needs constructor arguments is to be added to ARGUMENTS.)"""
    classes = {name: cls for name, cls in inspect.getmembers(modules, inspect.isclass)
               if issubclass(cls, torch.nn.Module) and cls.__module__ == modules.__name__}
    with_children = [name for name, cls in classes.items()
                     if any(True for _ in cls(*ARGUMENTS.get(name, ())).children())]
    assert with_children == ["Attention"]
    assert isinstance(lrp.Attention().scale, lrp.Scale)
