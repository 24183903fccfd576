"""The canonical tensor names and shapes every format yields (docs/architecture.md)."""
from __future__ import annotations

from typing import Union

import numpy as np

from ..config import ModelConfig
from .ternary import TernaryWeight

__all__ = ["Tensor", "LINEAR_NAMES", "NORM_NAMES", "linear_shapes", "canonical_names"]

Tensor = Union[np.ndarray, TernaryWeight]

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NORM_NAMES = ("input_layernorm", "post_attention_layernorm", "attn_sub_norm", "ffn_sub_norm")


def linear_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(out, in) of each BitLinear of a layer."""
    h, i, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q_out, kv_out = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    return {"q_proj": (q_out, h), "k_proj": (kv_out, h), "v_proj": (kv_out, h),
            "o_proj": (h, q_out), "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}


def canonical_names(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor of ``cfg`` in load order, with its logical shape."""
    h, v = cfg.hidden_size, cfg.vocab_size
    names: dict[str, tuple[int, ...]] = {"embed_tokens": (v, h), "norm": (h,)}
    if not cfg.tie_word_embeddings:
        names["lm_head"] = (v, h)
    shapes = linear_shapes(cfg)
    for layer in range(cfg.num_hidden_layers):
        for norm in NORM_NAMES:
            names[f"layers.{layer}.{norm}"] = (cfg.intermediate_size if norm == "ffn_sub_norm" else h,)
        for lin in LINEAR_NAMES:
            names[f"layers.{layer}.{lin}"] = shapes[lin]
    return names
