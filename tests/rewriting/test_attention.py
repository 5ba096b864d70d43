"""Attention in every form it is written: recognised, decomposed where it is fused (the same output to rounding), the
default's rule against its formula, conservation with the class token's share reported, the model restored."""
import pytest
import torch
import torch.nn.functional as F

import zennit_resnet_lrp as lrp
from helpers import make_inputs

DIM, HEADS, PATCH = 16, 2, 4


def test_attention_values_rule_matches_its_formula():
    """The weights held constant: ``R_v = v+ * A^T (R / (A v+))``, the weights get nothing."""
    generator = torch.Generator().manual_seed(0)
    weights = torch.rand(2, 3, 5, 5, generator=generator, dtype=torch.float64).softmax(-1)
    values = torch.randn(2, 3, 5, 4, generator=generator, dtype=torch.float64)
    relevance = torch.rand(2, 3, 5, 4, generator=generator, dtype=torch.float64)
    rule = lrp.AttentionValues(0.0, "flat")
    to_weights, to_values = rule.propagate(lrp.AttentionProduct(), (weights, values), (weights.shape, values.shape),
                                           relevance)
    positive = values.clamp(min=0)
    expected = positive * (weights.transpose(-2, -1) @ (relevance / (weights @ positive)))
    torch.testing.assert_close(to_values, expected, rtol=1e-12, atol=1e-14)
    assert float(to_weights.abs().max()) == 0
    torch.testing.assert_close(to_values.sum(), relevance.sum(), rtol=1e-12, atol=0)


def test_attention_values_rule_with_signed_weights_matches_its_formula():
    """Weights mixed across heads (signed): ``R_v = v+ * A+^T (R / z) + v- * A-^T (R / z)``, ``z = A+ v+ + A- v-``;
    where ``z = 0`` (every term zero: frequent with signed weights) the relevance is spread by ``|A|``."""
    generator = torch.Generator().manual_seed(1)
    weights = torch.randn(2, 3, 5, 5, generator=generator, dtype=torch.float64)
    values = torch.randn(2, 3, 5, 4, generator=generator, dtype=torch.float64)
    relevance = torch.rand(2, 3, 5, 4, generator=generator, dtype=torch.float64)
    rule = lrp.AttentionValues(0.0, "flat")
    _, to_values = rule.propagate(lrp.AttentionProduct(), (weights, values), (weights.shape, values.shape), relevance)
    plus, minus = weights.clamp(min=0), weights.clamp(max=0)
    positive, negative = values.clamp(min=0), values.clamp(max=0)
    z = plus @ positive + minus @ negative
    unsupported = z == 0
    assert bool(unsupported.any()) and not bool(unsupported.all())
    scaled = torch.where(unsupported, 0.0, relevance / z.where(~unsupported, 1.0))
    expected = positive * (plus.transpose(-2, -1) @ scaled) + negative * (minus.transpose(-2, -1) @ scaled)
    stray = relevance * unsupported
    expected = expected + weights.abs().transpose(-2, -1) @ (stray / weights.abs().sum(-1, keepdim=True))
    torch.testing.assert_close(to_values, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(to_values.sum(), relevance.sum(), rtol=1e-12, atol=0)


def test_attention_values_rule_counts_subnormal_weights_as_zero():
    """A softmax over logits masked with -100 (Swin's shifted windows) gives weights of e^-100, subnormal in float32:
    the rule uses them as zeros (products with subnormals are many times slower on a CPU), in ``z`` and in the
    transpose alike, so it conserves exactly and equals the formula with those weights at zero."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 7, 7, generator=generator)
    logits[..., :3] -= 100  # as Swin masks a window's other regions
    weights = logits.softmax(-1)
    subnormal = (weights > 0) & (weights < torch.finfo(weights.dtype).tiny)
    assert bool(subnormal.any())  # the case is exercised
    values = torch.randn(2, 3, 7, 4, generator=generator)
    relevance = torch.rand(2, 3, 7, 4, generator=generator)
    _, to_values = lrp.AttentionValues(0.0, "flat").propagate(lrp.AttentionProduct(), (weights, values),
                                                             (weights.shape, values.shape), relevance)
    flushed = weights.masked_fill(subnormal, 0).double()
    positive = values.clamp(min=0).double()
    expected = positive * (flushed.transpose(-2, -1) @ (relevance.double() / (flushed @ positive)))
    torch.testing.assert_close(to_values.double(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(to_values.double().sum(), relevance.double().sum(), rtol=1e-6, atol=0)
    assert weights[subnormal].min() > 0  # the rule read its own copy: the model's weights are as they were


def test_bilinear_rule_matches_its_formula():
    """``q @ k^T``: the positive terms' shares (evenly where there is none), half to each factor."""
    generator = torch.Generator().manual_seed(1)
    first, second = (torch.randn(2, 4, 3, generator=generator, dtype=torch.float64),
                     torch.randn(2, 3, 5, generator=generator, dtype=torch.float64))
    relevance = torch.rand(2, 4, 5, generator=generator, dtype=torch.float64)
    to_first, to_second = lrp.BilinearSplit("positive").relevance(lrp.MatrixProduct(), (first, second), relevance)
    terms = first[..., :, :, None] * second[..., None, :, :]  # (2, 4, 3, 5): a_ij b_jk
    positive = terms.clamp(min=0)
    total = positive.sum(2, keepdim=True)  # no positive term: evenly over the three
    shares = torch.where(total > 0, positive / total.clamp(min=1e-300), 1 / 3) * relevance[:, :, None, :]
    assert bool((total == 0).any())  # the fallback is exercised
    torch.testing.assert_close(to_first, shares.sum(3) / 2, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(to_second, shares.sum(1) / 2, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_decomposed_attention_equals_the_fused_one(mask, causal):
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 6, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    attn_mask = None if mask is None or causal else (
        torch.rand(6, 6, generator=generator) > 0.3 if mask == "bool" else torch.randn(6, 6, dtype=torch.float64))
    if attn_mask is not None and mask == "bool":
        attn_mask[:, 0] = True  # every query attends to something
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal, scale=0.3)
    decomposed = lrp.Attention()(q, k, v, attn_mask, 0.0, causal, 0.3)
    torch.testing.assert_close(decomposed, fused, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch_first", [True, False])
def test_decomposed_multihead_attention_equals_torch(batch_first):
    torch.manual_seed(3)
    module = torch.nn.MultiheadAttention(DIM, HEADS, batch_first=batch_first).double().eval()
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    x = x if batch_first else x.transpose(0, 1)
    padding = torch.tensor([[False] * 4 + [True], [False] * 5])
    expected, _ = module(x, x, x, key_padding_mask=padding, need_weights=False)
    canonizer = lrp.ResidualCanonizer()
    instances = canonizer.apply(module)
    try:
        decomposed, weights = module(x, x, x, key_padding_mask=padding, need_weights=False)
        assert isinstance(module.attention, lrp.Attention) and weights is None
    finally:
        for instance in instances:
            instance.remove()
    torch.testing.assert_close(decomposed, expected, rtol=1e-12, atol=1e-12)
    assert "forward" not in module.__dict__ and not hasattr(module, "attention")


class Mixer(torch.nn.Module):
    """One attention block written one way or another; tokens (N, T, DIM) in and out."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.norm = torch.nn.LayerNorm(DIM)
        if form == "multihead":
            self.mha = torch.nn.MultiheadAttention(DIM, HEADS, batch_first=True)
        else:
            self.qkv, self.proj = torch.nn.Linear(DIM, 3 * DIM), torch.nn.Linear(DIM, DIM)
            self.bias = torch.nn.Parameter(torch.randn(HEADS, 1, 1))  # a relative position bias, roughly
            self.talk = torch.nn.Conv2d(HEADS, HEADS, 1)  # EfficientFormer v2's talking heads

    def forward(self, x):
        y = self.norm(x)
        if self.form == "multihead":
            out, _ = self.mha(y, y, y, need_weights=False)
            return x + out
        n, t, _ = y.shape
        q, k, v = self.qkv(y).reshape(n, t, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4).unbind(0)
        if self.form == "fused":
            out = F.scaled_dot_product_attention(q, k, v)
        elif self.form == "einsum":
            attn = torch.einsum("nhqd,nhkd->nhqk", q, k).softmax(-1)
            out = torch.einsum("nhqk,nhkd->nhqd", attn, v)
        elif self.form == "bmm":
            attn = torch.bmm(q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2)) * (DIM // HEADS) ** -0.5
            out = torch.bmm(F.softmax(attn, dim=-1), v.flatten(0, 1)).reshape(n, HEADS, t, -1)
        elif self.form == "talking_heads":  # probabilities mixed across heads: signed weights
            out = self.talk((q @ k.transpose(-2, -1)).softmax(-1)) @ v
        else:  # "matmul": q @ k.transpose, a bias, softmax, dropout, @ v
            attn = (q * (DIM // HEADS) ** -0.5) @ k.transpose(-2, -1) + self.bias
            out = torch.matmul(F.dropout(attn.softmax(dim=-1), 0.0, self.training), v)
        return x + self.proj(out.transpose(1, 2).reshape(n, t, DIM))


class Windows(torch.nn.Module):
    """Swin: roll, partition into windows, attention inside each window, merge, roll back."""

    def __init__(self):
        super().__init__()
        self.mixer = Mixer("matmul")

    def forward(self, x):  # (N, H, W, C) with H = W = 4, windows of 2x2
        n, h, w, c = x.shape
        shifted = torch.roll(x, shifts=(-1, -1), dims=(1, 2))
        windows = shifted.view(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4, c)
        merged = self.mixer(windows).view(n, h // 2, w // 2, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
        return torch.roll(merged, shifts=(1, 1), dims=(1, 2))


class TinyTransformer(torch.nn.Module):
    """Patches, a class token, position embeddings, two blocks, the class token's output to a linear head."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.patches = torch.nn.Conv2d(3, DIM, PATCH, PATCH)
        self.cls_token = torch.nn.Parameter(torch.randn(1, 1, DIM) * 0.5)
        self.pos_embed = torch.nn.Parameter(torch.randn(1, 17, DIM) * 0.1)
        self.blocks = torch.nn.Sequential(*(Windows() if form == "windows" else Mixer(form) for _ in range(2)))
        self.norm, self.head = torch.nn.LayerNorm(DIM), torch.nn.Linear(DIM, 10)

    def forward(self, x):
        tokens = self.patches(x)
        if self.form == "windows":
            out = self.blocks(tokens.permute(0, 2, 3, 1)).mean((1, 2))
            return self.head(self.norm(out))
        tokens = tokens.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


FORMS = ["matmul", "bmm", "einsum", "fused", "multihead", "windows", "talking_heads"]


def _model(form):
    torch.manual_seed(0)
    return TinyTransformer(form).double().eval()


@pytest.mark.parametrize("form", FORMS)
def test_every_form_of_attention_conserves_with_the_class_token_reported(form):
    model = _model(form)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    modules = [(name, id(module)) for name, module in model.named_modules()]
    with lrp.FlowsSkipConservative().context(model):
        kinds = [type(module).__name__ for module in model.modules()]
    assert kinds.count("AttentionProduct") == 2, kinds  # one per block: recognised
    result = lrp.attribute(model, make_inputs(2, 16), record_blocks=True)
    assert float(result.conservation_error.max()) <= 1e-12
    if form == "windows":
        assert result.absorbed is None
    else:
        assert result.absorbed is not None and float(result.absorbed.abs().min()) > 0  # the class token's share
        torch.testing.assert_close(result.total + result.absorbed, result.start, rtol=1e-12, atol=0)
    assert len(result.blocks) >= 2
    assert [(name, id(module)) for name, module in model.named_modules()] == modules
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
    assert all("forward" not in module.__dict__ and not module._forward_pre_hooks for module in model.modules())


@pytest.mark.parametrize("form", ["matmul", "fused"])
def test_the_logits_are_not_walked_where_the_weights_get_no_relevance(form, monkeypatch):
    """The default gives the attention weights nothing: the fast path detaches them, so the rules behind them (the
    logits' product) never run; the hook path runs them on zeros, and both give the same relevance."""
    calls = []
    relevance = lrp.BilinearSplit.relevance
    monkeypatch.setattr(lrp.BilinearSplit, "relevance", lambda *args: calls.append(1) or relevance(*args))
    model, inputs = _model(form), make_inputs(2, 16)
    fast = lrp.attribute(model, inputs)
    assert not calls
    hooked = lrp.attribute(model, inputs, lrp.FlowsSkipConservative(fast=False))
    assert calls  # the hook path does walk them
    torch.testing.assert_close(fast.relevance, hooked.relevance, rtol=1e-12, atol=1e-15)


def test_class_token_accounting():
    """A model whose head reads the class token alone and whose tokens never mix: all relevance ends on the class
    token (absorbed), none on the image."""

    class NoMixing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.patches = torch.nn.Conv2d(3, DIM, PATCH, PATCH)
            self.cls_token = torch.nn.Parameter(torch.randn(1, 1, DIM))
            self.mlp, self.head = torch.nn.Linear(DIM, DIM), torch.nn.Linear(DIM, 10)

        def forward(self, x):
            tokens = self.patches(x).flatten(2).transpose(1, 2)
            tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
            return self.head(torch.relu(self.mlp(tokens))[:, 0])

    torch.manual_seed(1)
    result = lrp.attribute(NoMixing().double().eval(), make_inputs(2, 16))
    torch.testing.assert_close(result.absorbed, result.start, rtol=1e-12, atol=0)
    assert float(result.total.abs().max()) == 0


class PairStage(torch.nn.Module):
    """A stage that takes ``(patch tokens, class tokens)`` as one tuple, as PiT's do."""

    def __init__(self):
        super().__init__()
        self.mixer = Mixer("matmul")

    def forward(self, pair):
        tokens, cls_tokens = pair
        out = self.mixer(torch.cat((cls_tokens, tokens), dim=1))
        return out[:, 1:], out[:, :1]


def test_class_token_handed_to_a_child_inside_a_tuple_is_reported():
    """The class token reaches the child as part of a tuple: its relevance is absorbed (reported), not lost."""

    class TupleTokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.patches = torch.nn.Conv2d(3, DIM, PATCH, PATCH)
            self.cls_token = torch.nn.Parameter(torch.randn(1, 1, DIM))
            self.stages = torch.nn.Sequential(PairStage(), PairStage())
            self.head = torch.nn.Linear(DIM, 10)

        def forward(self, x):
            tokens = self.patches(x).flatten(2).transpose(1, 2)
            _, cls_tokens = self.stages((tokens, self.cls_token.expand(x.shape[0], -1, -1)))
            return self.head(cls_tokens[:, 0])

    torch.manual_seed(2)
    model = TupleTokens().double().eval()
    result = lrp.attribute(model, make_inputs(2, 16), tolerance=None)
    assert float(result.absorbed.abs().min()) > 1e-3 * float(result.start.abs().min())
    torch.testing.assert_close(result.total + result.absorbed, result.start, rtol=1e-10, atol=0)
    assert all("forward" not in module.__dict__ for module in model.modules())


def test_a_token_shared_by_every_sample_is_absorbed_per_sample():
    """TNT: a position embedding of the model's own, handed to a child and broadcast over the pixel tokens of every
    sample, gathers relevance from the whole batch; each sample is credited its own share (as attributed alone)."""

    class AddPosition(torch.nn.Module):
        def forward(self, rows, position):
            return rows + position

    class PixelTokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, DIM, 3, padding=1)
            self.position = torch.nn.Parameter(torch.randn(1, DIM, 4, 4))
            self.add = AddPosition()
            self.head = torch.nn.Linear(DIM, 10)

        def forward(self, x):
            features = self.conv(x)
            count = features.shape[0]
            rows = features.reshape(count, DIM, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(count * 16, DIM, 4, 4)
            rows = torch.relu(self.add(rows, self.position))
            return self.head(rows.reshape(count, 16, DIM, 16).mean((1, 3)))

    torch.manual_seed(3)
    model = PixelTokens().double().eval()
    inputs = make_inputs(3, 16)
    together = lrp.attribute(model, inputs, tolerance=None)
    alone = lrp.attribute(model, inputs, tolerance=None, batch_size=1)
    assert float(together.absorbed.abs().min()) > 1e-3 * float(together.start.abs().min())
    torch.testing.assert_close(together.absorbed, alone.absorbed, rtol=1e-10, atol=0)
    torch.testing.assert_close(together.total + together.absorbed, together.start, rtol=1e-10, atol=0)


def test_position_encoding_computed_from_sizes_takes_no_relevance():
    """XCiT: the patch embedding returns the tokens and the grid's size as a tuple, and a child computes the position
    encoding from that size alone; the sum of tokens and encoding hands the encoding nothing (it does not depend on
    the image), so the image keeps all relevance; the parameters' ``requires_grad`` is as it was after."""

    class Patches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Conv2d(3, DIM, PATCH, PATCH)

        def forward(self, x):
            x = self.proj(x)
            return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])

    class Encoding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(2, DIM)

        def forward(self, batch: int, height: int, width: int):
            grid = torch.stack(torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij"), -1)
            return self.proj(grid.flatten(0, 1).to(self.proj.weight)).expand(batch, -1, -1)

    class SizeEncoded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.patches, self.encoding = Patches(), Encoding()
            self.mixer, self.head = Mixer("matmul"), torch.nn.Linear(DIM, 10)

        def forward(self, x):
            tokens, (height, width) = self.patches(x)
            tokens = tokens + self.encoding(x.shape[0], height, width)
            return self.head(self.mixer(tokens).mean(1))

    torch.manual_seed(3)
    model = SizeEncoded().double().eval()
    model.head.weight.requires_grad_(False)  # a caller's choice, kept
    result = lrp.attribute(model, make_inputs(2, 16), tolerance=None)
    torch.testing.assert_close(result.total, result.start, rtol=1e-10, atol=0)
    assert [name for name, p in model.named_parameters() if not p.requires_grad] == ["head.weight"]


def test_attnlrp_composite_runs_and_differs():
    model, inputs = _model("matmul"), make_inputs(2, 16)
    default = lrp.attribute(model, inputs, tolerance=None)
    attnlrp = lrp.attribute(model, inputs, "attnlrp", tolerance=None)
    assert bool(torch.isfinite(attnlrp.relevance).all())
    assert float((attnlrp.relevance - default.relevance).abs().max()) > 1e-6 * float(default.relevance.abs().max())


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("size", [32, 40])
def test_torchvision_swin_decomposed_and_conserving(version, size):
    """torchvision's shifted window attention (a function hidden from torch.fx) through explicit modules: the same
    output, and the default conserves; at 40 pixels the feature maps (10x10, 5x5) are padded to whole windows, whose
    padded tokens' relevance goes back to the edge."""
    from torchvision.models import swin_transformer as swin

    torch.manual_seed(version)
    extra = {} if version == 1 else {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2}
    model = swin.SwinTransformer([4, 4], 16, [2, 2], [2, 2], [4, 4], num_classes=10, **extra).double().eval()
    inputs = make_inputs(2, size)
    with torch.no_grad():
        expected = model(inputs)
        with lrp.FlowsSkipConservative().context(model):
            assert sum(isinstance(m, lrp.AttentionProduct) for m in model.modules()) == 4
            torch.testing.assert_close(model(inputs), expected, rtol=1e-10, atol=1e-12)
    result = lrp.attribute(model, inputs)
    assert float(result.conservation_error.max()) <= 1e-12
    # the padding's widths come with each call: the hook path reads them as the fast path does
    hooked = lrp.attribute(model, inputs, lrp.FlowsSkipConservative(fast=False))
    torch.testing.assert_close(hooked.relevance, result.relevance, rtol=1e-10, atol=1e-14)
