"""``attnlrp`` and ``cp_lrp`` against LXT 2.1 itself (the AttnLRP authors' library), as the captum baselines are
tested against captum: torchvision's ViT and timm's ViT and DeiT, two sizes each, float64, random weights, the
relevance put in at the target logit. LXT's files are loaded as ``benchmarks/lxt_reference.py`` says (its package
imports transformers 4.x; CI installs it with ``pip install --no-deps lxt==2.1``)."""
import os

import pytest
import torch
import torchvision

import zennit_resnet_lrp as lrp
from benchmarks.lxt_reference import LXTUnavailable, load_lxt, lxt_patched, lxt_relevance
from helpers import make_inputs

TOLERANCE = 1e-6  # the largest |ours - LXT's| over the largest |LXT's|, per map


@pytest.fixture(scope="module")
def lxt():
    try:
        return load_lxt()
    except LXTUnavailable as error:
        if os.environ.get("CI"):  # CI installs it: missing there is a failure, not a skip
            pytest.fail(str(error))
        pytest.skip(str(error))


@torch.no_grad()
def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random and clearly non-zero (torchvision zeroes the head and the class token): weights
    ``N(0, 1 / fan_in)``, layer norms' ``1 + N(0, 0.04)``, biases, tokens and position embeddings ``N(0, 0.09)``."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if isinstance(module, torch.nn.LayerNorm):
                shift, scale = (1.0 if name == "weight" else 0.0), 0.2
            else:
                shift, scale = 0.0, (parameter[0].numel() ** -0.5 if name == "weight" else 0.3)
            parameter.copy_(shift + scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return model.double().eval()


def torchvision_vit(size, patch, layers, heads, width, seed=0):
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(size, patch, layers, heads, width, 2 * width, num_classes=10)
    return _randomized(model, seed)


def timm_vit(size, patch, layers, heads, width, seed=0, distilled=False):
    pytest.importorskip("timm")
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = (VisionTransformerDistilled if distilled else VisionTransformer)(
        img_size=size, patch_size=patch, embed_dim=width, depth=layers, num_heads=heads, num_classes=10)
    assert all(block.attn.fused_attn for block in model.blocks)  # LXT's wrapper sits around the fused call
    return _randomized(model, seed)


MODELS = {
    "torchvision-64px-2x4x64": lambda: torchvision_vit(64, 8, 2, 4, 64),
    "torchvision-32px-3x2x48": lambda: torchvision_vit(32, 4, 3, 2, 48, seed=1),
    "timm-vit-32px-2x3x48": lambda: timm_vit(32, 8, 2, 3, 48, seed=2),
    "timm-deit-distilled-48px-3x2x32": lambda: timm_vit(48, 8, 3, 2, 32, seed=3, distilled=True),
}


@pytest.mark.parametrize("method", ["attnlrp", "cp_lrp"])
@pytest.mark.parametrize("name", list(MODELS))
def test_equals_lxt(lxt, name, method):
    """Ours and LXT's maps agree to 1e-6 relative (measured: 1e-14 and below), with relevance that is far from
    conserved (LXT's own maps: the biases absorb some), so that the agreement is not that of two conserving maps."""
    model = MODELS[name]()
    inputs = make_inputs(2, model.image_size if hasattr(model, "image_size") else model.patch_embed.img_size[0])
    with torch.no_grad():
        targets = model(inputs).argmax(1)
    expected = lxt_relevance(lxt, method, model, inputs, targets)
    result = lrp.attribute(model, inputs, method, target=targets, start_with="logit", tolerance=None)
    difference = float((result.relevance - expected).abs().max() / expected.abs().max())
    assert difference <= TOLERANCE, difference
    assert float(expected.abs().max()) > 0 and float(result.conservation_error.max()) > 1e-3


def test_the_class_token_absorbs_what_lxt_gives_it(lxt):
    """The class token's relevance (``attribute``'s ``absorbed``) is LXT's ``token * token.grad``."""
    model, inputs = torchvision_vit(32, 4, 3, 2, 48, seed=1), make_inputs(1, 32)
    target = model(inputs).argmax(1)
    with lxt_patched(lxt, "attnlrp", model), torch.enable_grad():
        model.class_token.grad = None
        model(inputs)[0, target[0]].backward()
        expected = float((model.class_token * model.class_token.grad).detach().sum())
    model.class_token.grad = None
    result = lrp.attribute(model, inputs, "attnlrp", target=target, start_with="logit", tolerance=None)
    assert abs(float(result.absorbed[0]) - expected) <= 1e-10 * abs(expected)


def test_block_records_hold_relevance(lxt):
    """``record_blocks`` (and ``check``) under a composite in gradient-times-input form record relevance, the tensor
    times what reaches it: at each block's input and output, LXT's ``h * h.grad``."""
    model, inputs = torchvision_vit(32, 4, 3, 2, 48, seed=1), make_inputs(2, 32)
    targets = model(inputs).argmax(1)
    blocks = list(model.encoder.layers)
    seen = {"input": [], "output": []}

    def keep(where, tensor):
        tensor.retain_grad()
        seen[where].append(tensor)

    handles = [hook for block in blocks for hook in (
        block.register_forward_pre_hook(lambda module, args: keep("input", args[0])),
        block.register_forward_hook(lambda module, args, output: keep("output", output)))]
    try:
        with lxt_patched(lxt, "attnlrp", model), torch.enable_grad():
            model(inputs).gather(1, targets[:, None]).sum().backward()
    finally:
        for hook in handles:
            hook.remove()
    model.zero_grad(set_to_none=True)
    result = lrp.attribute(model, inputs, "attnlrp", target=targets, start_with="logit", tolerance=None,
                           record_blocks=True)
    assert len(result.blocks) == len(blocks)
    for index, record in enumerate(result.blocks):
        for where in ("input", "output"):
            tensor = seen[where][index]
            expected = (tensor * tensor.grad).detach().flatten(1).sum(1)
            torch.testing.assert_close(getattr(record, where), expected, rtol=1e-10, atol=1e-12)


def test_lxt_patches_are_put_back(lxt):
    """The reference patches classes for the process: afterwards they are as they were."""
    classes = (torch.nn.LayerNorm, torch.nn.GELU, torch.nn.MultiheadAttention)
    before = [dict(vars(cls)) for cls in classes]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for variant in ("attnlrp", "cp_lrp"):
        with lxt_patched(lxt, variant, torchvision_vit(32, 4, 1, 2, 16)):
            assert torch.nn.LayerNorm.forward is not before[0]["forward"]
        with lxt_patched(lxt, variant, timm_vit(16, 8, 1, 2, 16)):
            assert torch.nn.functional.scaled_dot_product_attention is not sdpa
    assert [dict(vars(cls)) for cls in classes] == before
    assert torch.nn.functional.scaled_dot_product_attention is sdpa


@pytest.mark.slow
def test_attribution_benchmark_times_ours_against_lxt(lxt):
    """benchmarks/attribution.py's LXT rows: LXT's own maps timed beside ours, ours with their ratio to them."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("timm")
    methods = ["gradient", "lxt_attnlrp", "attnlrp", "lxt_cp_lrp", "cp_lrp"]
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "attribution.py"
    done = subprocess.run([sys.executable, str(script), "--models", "timm/vit_tiny_patch16_224", "--batches", "1",
                           "--repeats", "1", "--threads", "1", "--methods", ",".join(methods)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = {row[2].strip(): row for row in (line.strip("|").split("|") for line in done.stdout.splitlines()
                                            if line.startswith("| timm/"))}
    assert list(rows) == methods
    assert all(not rows[name][8].strip() for name in ("gradient", "lxt_attnlrp", "lxt_cp_lrp"))
    assert all(float(rows[name][8]) > 0 for name in ("attnlrp", "cp_lrp"))
