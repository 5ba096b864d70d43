"""Functions hidden from torch.fx (``torch.fx.wrap``) that write into their arguments (MViT v2's pooling residual,
``_add_shortcut``): the trace cannot see the addition, so the module is routed while it runs, and relevance is
conserved; the class token's share is reported as absorbed."""
import pytest
import torch
from torchvision.models.video.mvit import MSBlockConfig, MViT

import zennit_resnet_lrp as lrp


def _add_into(x, y):
    x.add_(y)


torch.fx.wrap("_add_into")


class HiddenResidual(torch.nn.Module):
    """A residual added in place by a function hidden from torch.fx, its result unused."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(6, 6)
        self.head = torch.nn.Linear(6, 4)

    def forward(self, x):
        h = torch.relu(self.linear(x))
        _add_into(h, x)
        return self.head(h).flatten(1)


def test_hidden_in_place_addition_routed_while_it_runs():
    """Traced, the hidden ``h.add_(x)`` runs unrouted and its gradient hands the full relevance to both operands;
    routed while it runs, the addition is a residual sum and relevance is conserved."""
    torch.manual_seed(0)
    model = HiddenResidual().double().eval()
    inputs = torch.rand(3, 1, 6, dtype=torch.float64)  # signals (N, C, L)
    expected = model(inputs)
    composite = lrp.FlowsSkipConservative()
    with torch.no_grad(), composite.context(model):
        assert any(isinstance(m, lrp.ResidualSum) for m in model.modules())
        torch.testing.assert_close(model(inputs), expected)
    result = lrp.attribute(model, inputs, composite)
    assert float(result.conservation_error.max()) <= 1e-12


def _tiny_mvit(residual_with_cls_embed: bool) -> torch.nn.Module:
    """MViT v2 (pooling residual, relative positions, projection after attention) with three blocks: key and value
    pooling, a query stride with its max-pooled skip, and a widening."""
    torch.manual_seed(0)
    blocks = [MSBlockConfig(1, 8, 8, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 2, 2]),
              MSBlockConfig(2, 8, 16, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1]),
              MSBlockConfig(2, 16, 16, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 1, 1])]
    return MViT((16, 16), 4, blocks, residual_pool=True, residual_with_cls_embed=residual_with_cls_embed,
                rel_pos_embed=True, proj_after_attn=True, num_classes=5).double().eval()


@pytest.mark.parametrize("residual_with_cls_embed", [False, True])
def test_mvit_v2_pooling_residual_conserves(residual_with_cls_embed):
    """The pooled query added to the attention's output (``_add_shortcut``, all tokens or all but the class token) is
    split as a residual sum: input relevance plus the class token's share is the start relevance."""
    model = _tiny_mvit(residual_with_cls_embed)
    inputs = torch.randn(2, 3, 4, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    result = lrp.attribute(model, inputs)
    assert float(result.conservation_error.max()) <= 1e-10
    assert result.absorbed is not None and bool((result.absorbed != 0).all())  # the class token's share
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())
