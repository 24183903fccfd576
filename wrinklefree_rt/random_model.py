"""Deterministic random BitNet b1.58 models: the one builder behind the demo's random model,
the benchmarks' synthetic 2B model and the speed scripts in tests/.

Speed does not depend on what weights mean, so the benchmarks run on random ternary codes with
the real 2B-4T shape. Every tensor has its own generator seeded by (seed, tensor index), so any
tensor can be produced alone, in any order, and two writers (the GGUF writer, this runtime's
converter) see bit-identical weights. Ternary scales are rounded to fp16 so that GGUF TQ1_0/TQ2_0
(fp16 block scales) hold exactly the same ``q * s`` values as this runtime.

Only int8 codes are generated for the 2.1 B ternary weights (never floats), ~10 s for the 2B shape.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ModelConfig, parse_config
from .formats.packed import PACKED_FILE, write_packed
from .formats.ternary import TernaryWeight

__all__ = ["Shape", "SHAPES", "PROJECTIONS", "hf_config", "model_config", "tensor_names",
           "tensor_dims", "make_tensor", "iter_tensors", "tensors", "ternary_macs_per_token",
           "write_model_dir", "TernaryWeight"]


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    max_positions: int = 4096

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES = {
    # microsoft/bitnet-b1.58-2B-4T
    "2b": Shape("2b", hidden=2560, intermediate=6912, layers=30, heads=20, kv_heads=5, vocab=128256),
    # For scheduler overhead: small enough that the C++ step is short and Python time shows.
    "tiny": Shape("tiny", hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=1024,
                  max_positions=2048),
}

# (canonical suffix, out dim, in dim) per layer; dims as functions of the shape.
PROJECTIONS = (
    ("q_proj", lambda s: s.hidden, lambda s: s.hidden),
    ("k_proj", lambda s: s.kv_heads * s.head_dim, lambda s: s.hidden),
    ("v_proj", lambda s: s.kv_heads * s.head_dim, lambda s: s.hidden),
    ("o_proj", lambda s: s.hidden, lambda s: s.hidden),
    ("gate_proj", lambda s: s.intermediate, lambda s: s.hidden),
    ("up_proj", lambda s: s.intermediate, lambda s: s.hidden),
    ("down_proj", lambda s: s.hidden, lambda s: s.intermediate),
)
_NORMS = ("input_layernorm", "post_attention_layernorm", "attn_sub_norm", "ffn_sub_norm")

# HF's initializer_range: keeps logits O(1), so a random model is unsure of its argmax, as the
# DLM benchmark's threshold-0.9 runs assume.
_EMBED_STD = 0.02


def hf_config(shape: Shape, mask_token_id: int | None = None) -> dict:
    """The HF ``config.json`` dict of the synthetic model (2B-4T's fields for the 2B shape)."""
    cfg = {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "vocab_size": shape.vocab,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "relu2",
        "max_position_embeddings": shape.max_positions,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "bos_token_id": min(128000, shape.vocab - 2),
        "eos_token_id": min(128009, shape.vocab - 1),
    }
    if mask_token_id is not None:
        cfg["mask_token_id"] = mask_token_id
    return cfg


def model_config(shape: Shape, mask_token_id: int | None = None) -> ModelConfig:
    return parse_config(hf_config(shape, mask_token_id), source=f"synthetic {shape.name}")


def tensor_names(shape: Shape) -> list[str]:
    """Canonical names (docs/architecture.md) in a fixed order; the index seeds each tensor."""
    names = ["embed_tokens", "norm"]
    for i in range(shape.layers):
        names += [f"layers.{i}.{n}" for n in _NORMS]
        names += [f"layers.{i}.{p}" for p, _, _ in PROJECTIONS]
    return names


def tensor_dims(shape: Shape, name: str) -> tuple[int, int] | int:
    """(out, in) of a matrix, or the length of a vector, for a canonical name."""
    if name == "embed_tokens":
        return shape.vocab, shape.hidden
    suffix = name.rsplit(".", 1)[-1]
    if suffix == "ffn_sub_norm":
        return shape.intermediate
    for proj, out_dim, in_dim in PROJECTIONS:
        if suffix == proj:
            return out_dim(shape), in_dim(shape)
    return shape.hidden


def make_tensor(shape: Shape, name: str, seed: int = 0) -> np.ndarray | TernaryWeight:
    """One canonical tensor: float32 embedding/norms, or ``TernaryWeight`` int8 codes + scale."""
    index = tensor_names(shape).index(name)
    rng = np.random.default_rng([seed, index])
    dims = tensor_dims(shape, name)
    if name == "embed_tokens":
        emb = rng.standard_normal(dims, dtype=np.float32)
        emb *= np.float32(_EMBED_STD)
        return emb
    if isinstance(dims, int):
        return rng.uniform(0.9, 1.1, size=dims).astype(np.float32)
    out_dim, in_dim = dims
    codes = rng.integers(-1, 2, size=(out_dim, in_dim), dtype=np.int8)
    # Unit gain for uniform codes (E[q^2] = 2/3), so activations keep their size layer to layer.
    scale = float(np.float16(rng.uniform(0.8, 1.2) / math.sqrt(in_dim * 2.0 / 3.0)))
    return TernaryWeight(data=codes, scale=scale, shape=(out_dim, in_dim))


def iter_tensors(shape: Shape, seed: int = 0) -> Iterator[tuple[str, np.ndarray | TernaryWeight]]:
    for name in tensor_names(shape):
        yield name, make_tensor(shape, name, seed)


def tensors(shape: Shape, seed: int = 0) -> dict[str, np.ndarray | TernaryWeight]:
    """All canonical tensors in memory (~3.4 GB for the 2B shape: int8 codes + fp32 embedding)."""
    return dict(iter_tensors(shape, seed))


def ternary_macs_per_token(shape: Shape) -> int:
    """Multiply-accumulates of the ternary linears per token (2.08 G for 2B; LM head excluded)."""
    per_layer = sum(o(shape) * i(shape) for _, o, i in PROJECTIONS)
    return per_layer * shape.layers


def write_model_dir(path: Path, shape: Shape, seed: int = 0, mask_token_id: int | None = None) -> Path:
    """The model as a directory ``Engine.from_pretrained`` loads: config.json + model.wfrt."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = model_config(shape, mask_token_id)
    write_packed(path / PACKED_FILE, cfg, iter_tensors(shape, seed), source=f"random {shape.name} seed {seed}")
    (path / "config.json").write_text(cfg.to_json().decode())
    return path
