"""LXT 2.1 (the AttnLRP authors' library, ``pip install --no-deps lxt==2.1``) as its authors compute with it, for the
equality tests (tests/test_lxt.py) and the speed rows (benchmarks/attribution.py).

``import lxt.efficient`` imports LXT's model files, which need transformers 4.x; the rules and patches this needs
import nothing but torch (and torchvision for ``vit_torch``). So they are loaded here from the installed package's
own files, each as the module it is (``lxt.efficient.rules``, ``lxt.efficient.patches``,
``lxt.efficient.models.vit_torch``), without running the package's ``__init__``; ``sys.modules`` is put back as it
was afterwards.

LXT patches classes (``nn.LayerNorm.forward``, ...) for the whole process: :func:`lxt_patched` does that for the
duration of a ``with`` block and puts every attribute back. The maps:

- ``cp_lrp``: LXT's shipped ``cp_LRP`` for torchvision's ViT (``lxt/efficient/models/vit_torch.py``); for timm's
  ViTs the same patches (timm's ``LayerNorm``, whose forward is its own, patched as LXT patches torch's), with
  ``cp_wrap_attention_forward`` around ``F.scaled_dot_product_attention`` (timm computes the query, key and value
  inside its attention's forward).
- ``attnlrp``: LXT ships no AttnLRP map for vision transformers: its AttnLRP maps (``llama.attnLRP``, ...) patch
  the norms (``layer_norm_forward``), the activations (``non_linear_forward``) and the attention function
  (``wrap_attention_forward``: gradient of query and key / 4, of the values / 2); here the same three, the attention
  wrapper around ``nn.MultiheadAttention.forward`` (torchvision) or ``F.scaled_dot_product_attention`` (timm).
"""
from __future__ import annotations

import importlib.util
import sys
import types
from contextlib import contextmanager
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

LXT_VERSION = "2.1"
VARIANTS = ("attnlrp", "cp_lrp")
_MISSING = object()


class LXTUnavailable(RuntimeError):
    """LXT is not installed, or not the pinned version."""


def load_lxt() -> types.SimpleNamespace:
    """LXT's ``rules``, ``patches`` and ``vit_torch`` modules, loaded from the installed package's files.

    Raises
    ------
    LXTUnavailable
        Where ``lxt`` is not installed or is not version :data:`LXT_VERSION`.
    """
    try:
        installed = version("lxt")
    except PackageNotFoundError:
        raise LXTUnavailable(f"lxt is not installed: pip install --no-deps lxt=={LXT_VERSION}") from None
    if installed != LXT_VERSION:
        raise LXTUnavailable(f"lxt {installed} is installed; these references are pinned to {LXT_VERSION}")
    spec = importlib.util.find_spec("lxt")  # finds the package without running its __init__
    folder = Path(spec.submodule_search_locations[0]) / "efficient"
    names = ("lxt", "lxt.efficient", "lxt.efficient.models", "lxt.efficient.rules", "lxt.efficient.patches",
             "lxt.efficient.models.vit_torch")
    saved = {name: sys.modules.get(name, _MISSING) for name in names}
    try:
        for name, path in (("lxt", folder.parent), ("lxt.efficient", folder), ("lxt.efficient.models",
                                                                                 folder / "models")):
            package = types.ModuleType(name)  # an empty package: its files import nothing of LXT's models
            package.__path__ = [str(path)]
            sys.modules[name] = package
        loaded = {}
        for name, path in (("rules", folder / "rules.py"), ("patches", folder / "patches.py"),
                           ("vit_torch", folder / "models" / "vit_torch.py")):
            full = f"lxt.efficient.models.{name}" if name == "vit_torch" else f"lxt.efficient.{name}"
            module_spec = importlib.util.spec_from_file_location(full, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[full] = module  # what the next file imports
            module_spec.loader.exec_module(module)
            loaded[name] = module
    finally:
        for name, module in saved.items():
            if module is _MISSING:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return types.SimpleNamespace(**loaded)


def _sdpa_map(lxt: types.SimpleNamespace, wrapper) -> dict:
    """``F.scaled_dot_product_attention`` wrapped by one of LXT's attention wrappers (which take the attention
    module first, as Hugging Face's attention functions do)."""
    original = F.scaled_dot_product_attention
    wrapped = wrapper(lambda module, query, key, value, *args, **kwargs: original(query, key, value, *args, **kwargs))
    return {"scaled_dot_product_attention": lambda query, key, value, *args, **kwargs:
            wrapped(None, query, key, value, *args, **kwargs)}


def patch_maps(lxt: types.SimpleNamespace, variant: str, model: torch.nn.Module) -> tuple[dict, dict]:
    """``(class patches, functional patches)`` of ``variant`` (``attnlrp`` or ``cp_lrp``) for ``model``: LXT's patch
    map (target class -> patch function, as ``lxt.efficient.monkey_patch`` takes it) and the functions of
    ``torch.nn.functional`` to replace. torchvision's ViT (``nn.MultiheadAttention``): the attention wrapper around
    the module's forward (``cp_LRP`` as shipped); timm's: around ``F.scaled_dot_product_attention``, which its
    attention calls with the query, key and value it computed."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown LXT variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    patches = lxt.patches
    classes = dict(lxt.vit_torch.cp_LRP)  # GELU: identity rule; LayerNorm: std held constant; attention: CP
    torchvision = any(isinstance(module, torch.nn.MultiheadAttention) for module in model.modules())
    if torchvision:
        if variant == "attnlrp":
            classes[torch.nn.MultiheadAttention] = partial(
                patches.patch_method, patches.wrap_attention_forward(torch.nn.MultiheadAttention.forward))
        return classes, {}
    from timm.layers import LayerNorm as TimmLayerNorm  # its own forward: patched as LXT patches torch's

    del classes[torch.nn.MultiheadAttention]
    classes[TimmLayerNorm] = partial(patches.patch_method, patches.layer_norm_forward)
    wrapper = patches.wrap_attention_forward if variant == "attnlrp" else patches.cp_wrap_attention_forward
    return classes, _sdpa_map(lxt, wrapper)


@contextmanager
def lxt_patched(lxt: types.SimpleNamespace, variant: str, model: torch.nn.Module) -> Iterator[None]:
    """LXT's ``variant`` for ``model`` patched in (classes and functions), every attribute put back afterwards."""
    classes, functions = patch_maps(lxt, variant, model)
    saved = [(target, name, target.__dict__.get(name, _MISSING)) for target in classes
             for name in ("forward", "original_forward")]
    saved += [(F, name, F.__dict__[name]) for name in functions]
    try:
        for target, patch in classes.items():
            if not patch(target):
                raise RuntimeError(f"LXT could not patch {target.__name__}")
        for name, function in functions.items():
            setattr(F, name, function)
        yield
    finally:
        for target, name, value in saved:
            if value is _MISSING:
                if name in target.__dict__:
                    delattr(target, name)
            else:
                setattr(target, name, value)


def lxt_relevance(lxt: types.SimpleNamespace, variant: str, model: torch.nn.Module, inputs: torch.Tensor,
                  targets: torch.Tensor) -> torch.Tensor:
    """The input relevance LXT computes: ``x * d logit_target / dx`` with its patches in (the relevance put in at
    the target is its logit)."""
    with lxt_patched(lxt, variant, model), torch.enable_grad():
        x = inputs.detach().clone().requires_grad_()
        output = model(x)
        (gradient,) = torch.autograd.grad(output.gather(1, targets[:, None]).sum(), x)
    return x.detach() * gradient
