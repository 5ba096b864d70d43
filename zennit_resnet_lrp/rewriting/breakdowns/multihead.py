"""``nn.MultiheadAttention`` through explicit modules: its query, key and value projections as linear layers that hold
views of its own weights, the attention as an :py:class:`~zennit_resnet_lrp.rewriting.modules.Attention`, so that
the rules see the attention; the same output (no attention weights returned)."""
from __future__ import annotations

import types
import warnings

import torch

from ..modules import Attention, linear_child
from ..tracing import ResidualTracingWarning

NOTE = None  # what the canonizer reports of a module broken down here (nothing: nothing is lost)


def matches(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.MultiheadAttention)


def decompose(module: torch.nn.MultiheadAttention, name: str) -> list[str] | None:
    """Give ``module`` its projections and an ``Attention`` as children and a forward through them; return the names
    added. None (and a warning) where it adds key and value biases or zero attention, which the breakdown does not
    cover: relevance then follows its gradient."""
    if module.bias_k is not None or module.add_zero_attn:
        warnings.warn(f"'{name}' (MultiheadAttention) adds key and value biases or zero attention: its attention "
                      "is not decomposed, relevance follows its gradient", ResidualTracingWarning, stacklevel=5)
        return None
    children = {**_projections(module), "attention": Attention()}
    for child, layer in children.items():
        module.add_module(child, layer)
    module.__dict__["forward"] = types.MethodType(_forward, module)
    return list(children)


def _forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                       average_attn_weights=True, is_causal=False):
    """``nn.MultiheadAttention``'s forward through explicit modules: the projections as linear layers, the attention
    as an :py:class:`~zennit_resnet_lrp.rewriting.modules.Attention`; the same output (no attention weights returned)."""
    if not self.batch_first:
        query, key, value = (tensor.transpose(0, 1) for tensor in (query, key, value))
    batch, length, width = query.shape
    heads = self.num_heads

    def split(tensor):  # (N, L, E) -> (N, heads, L, E / heads)
        return tensor.reshape(batch, tensor.shape[1], heads, -1).transpose(1, 2)

    mask = None
    if attn_mask is not None:  # True: not attended, in MultiheadAttention's convention; a float mask is added
        mask = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask
        mask = mask.reshape(batch, heads, *mask.shape[-2:]) if mask.ndim == 3 else mask
    if key_padding_mask is not None:
        keep = ~key_padding_mask[:, None, None, :] if key_padding_mask.dtype == torch.bool \
            else key_padding_mask[:, None, None, :]
        mask = keep if mask is None else (mask & keep if mask.dtype == torch.bool and keep.dtype == torch.bool
                                          else mask + keep)
    output = self.attention(split(self.q_proj(query)), split(self.k_proj(key)), split(self.v_proj(value)), mask,
                            0.0, is_causal and attn_mask is None)
    output = self.out_proj(output.transpose(1, 2).reshape(batch, length, width))
    return (output if self.batch_first else output.transpose(0, 1)), None


def _projections(module: torch.nn.MultiheadAttention) -> dict[str, torch.nn.Linear]:
    """The query, key and value projections of ``nn.MultiheadAttention`` as linear layers over views of its own
    weights and biases (nothing copied)."""
    width, bias = module.embed_dim, module.in_proj_bias
    layers = {}
    for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
        part = slice(index * width, (index + 1) * width)
        weight = module.in_proj_weight[part] if module._qkv_same_embed_dim else getattr(module, f"{name}_weight")
        layers[name] = linear_child(weight, None if bias is None else bias[part])
    return layers
