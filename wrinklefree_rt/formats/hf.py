"""HF BitNet state dict -> the canonical tensors of docs/architecture.md.

Accepts numpy arrays (float32/float16/float64 for master weights and norms, uint8 for
offline-packed linears). bf16 has no numpy dtype: readers hand it over already widened to
float32 (exact), see ``safetensors.py``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Union

import numpy as np

from ..config import ModelConfig
from ..errors import ModelFormatError
from .ternary import HF_VALUES_PER_BYTE, TernaryWeight, absmean_quantize, unpack_hf_rows

__all__ = ["tensors_from_state_dict", "LINEAR_NAMES", "Tensor"]

Tensor = Union[np.ndarray, TernaryWeight]

# canonical suffix -> HF module path inside model.layers.N
LINEAR_NAMES = {
    "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}
_NORM_NAMES = {
    "input_layernorm": "input_layernorm", "post_attention_layernorm": "post_attention_layernorm",
    "attn_sub_norm": "self_attn.attn_sub_norm", "ffn_sub_norm": "mlp.ffn_sub_norm",
}
_FLOAT_KINDS = (np.float32, np.float16, np.float64)


def linear_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(out, in) of each BitLinear of a layer."""
    h, i, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q_out, kv_out = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    return {"q_proj": (q_out, h), "k_proj": (kv_out, h), "v_proj": (kv_out, h),
            "o_proj": (h, q_out), "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}


class _Source:
    def __init__(self, state_dict: Mapping[str, np.ndarray], source: str | Callable[[str], str]):
        self.sd = state_dict
        self.source = source

    def file(self, name: str) -> str:
        return self.source(name) if callable(self.source) else self.source

    def error(self, name: str, problem: str) -> ModelFormatError:
        return ModelFormatError(self.file(name), name, problem)

    def get(self, name: str) -> np.ndarray:
        if name not in self.sd:
            raise self.error(name, "missing tensor")
        return np.asarray(self.sd[name])

    def float32(self, name: str, shape: tuple[int, ...], check_finite: bool) -> np.ndarray:
        a = self.get(name)
        if a.dtype.type not in _FLOAT_KINDS:
            raise self.error(name, f"dtype {a.dtype} where a float tensor is expected")
        if tuple(a.shape) != shape:
            raise self.error(name, f"shape {tuple(a.shape)}, expected {shape}")
        out = np.ascontiguousarray(a, dtype=np.float32)
        if check_finite and not np.isfinite(out).all():
            raise self.error(name, "contains NaN or inf")
        return out


def _linear(src: _Source, prefix: str, shape: tuple[int, int], cfg: ModelConfig) -> TernaryWeight:
    name = prefix + ".weight"
    w = src.get(name)
    out_f, in_f = shape
    q = cfg.quantization
    offline = q is not None and q.quantization_mode == "offline"
    if not offline:
        if w.dtype.type not in _FLOAT_KINDS:
            raise src.error(name, f"dtype {w.dtype}: an online checkpoint stores float master "
                                  "weights (is quantization_config.quantization_mode wrong?)")
        if tuple(w.shape) != shape:
            raise src.error(name, f"shape {tuple(w.shape)}, expected {shape}")
        codes, s = absmean_quantize(w)
        if not np.isfinite(s):
            raise src.error(name, "contains NaN or inf (the absmean scale is not finite)")
        return TernaryWeight(codes, s, shape)

    if w.dtype != np.uint8:
        raise src.error(name, f"dtype {w.dtype}: an offline checkpoint stores packed uint8 weights")
    packed_shape = ((out_f + HF_VALUES_PER_BYTE - 1) // HF_VALUES_PER_BYTE, in_f)
    if tuple(w.shape) != packed_shape:
        raise src.error(name, f"shape {tuple(w.shape)}, expected packed {packed_shape} "
                              f"for a ({out_f}, {in_f}) weight")
    try:
        codes = unpack_hf_rows(w, out_f)
    except ValueError as e:
        raise src.error(name, str(e)) from None
    scale_name = prefix + ".weight_scale"
    ws = src.get(scale_name)
    if ws.dtype.type not in _FLOAT_KINDS or ws.size != 1:
        raise src.error(scale_name, f"dtype {ws.dtype} shape {tuple(ws.shape)}, expected one float")
    stored = float(np.asarray(ws, dtype=np.float32).reshape(()))
    if not np.isfinite(stored) or stored <= 0:
        raise src.error(scale_name, f"scale {stored} must be finite and positive")
    # autobitlinear multiplies the output by weight_scale; legacy bitlinear divides by it.
    s = stored if q.linear_class == "autobitlinear" else float(np.float32(1.0) / np.float32(stored))
    if not np.isfinite(s):
        raise src.error(scale_name, f"reciprocal of scale {stored} is not finite")
    return TernaryWeight(codes, s, shape)


def tensors_from_state_dict(state_dict: Mapping[str, np.ndarray], cfg: ModelConfig,
                            source: str | Callable[[str], str] = "<state_dict>") -> dict[str, Tensor]:
    """Map HF names to canonical ones, converting norms/embeddings to fp32 and quantizing
    (online) or unpacking (offline) every BitLinear.

    ``source`` names the file in errors: a string, or a function tensor name -> file (shards;
    it must also answer for names no shard holds).
    Extra tensors (e.g. rotary buffers) are ignored, as transformers does.
    """
    src = _Source(state_dict, source)
    h, v = cfg.hidden_size, cfg.vocab_size
    out: dict[str, Tensor] = {
        "embed_tokens": src.float32("model.embed_tokens.weight", (v, h), check_finite=False),
        "norm": src.float32("model.norm.weight", (h,), check_finite=True),
    }
    if not cfg.tie_word_embeddings:
        out["lm_head"] = src.float32("lm_head.weight", (v, h), check_finite=False)
    shapes = linear_shapes(cfg)
    for layer in range(cfg.num_hidden_layers):
        hf = f"model.layers.{layer}."
        for canon, path in _NORM_NAMES.items():
            n = cfg.intermediate_size if canon == "ffn_sub_norm" else h
            out[f"layers.{layer}.{canon}"] = src.float32(hf + path + ".weight", (n,), check_finite=True)
        for canon, path in LINEAR_NAMES.items():
            out[f"layers.{layer}.{canon}"] = _linear(src, hf + path, shapes[canon], cfg)
    return out
