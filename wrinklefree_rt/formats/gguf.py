"""GGUF files of llama.cpp's ``bitnet`` architecture.

The container is parsed by ``gguf_file.py``; F32/F16/BF16 tensors are read natively and every
other type the ``gguf`` package knows (TQ1_0, TQ2_0, Q8_0, ...) is dequantized with it (an
optional extra: ``pip install wrinklefree_rt[gguf]``). A BitNet weight is ``q * s`` with one
scale per tensor, so after dequantizing every non-zero element must have the same magnitude
``s``; a tensor where they differ is not a BitNet weight and is refused rather than
re-quantized. An optional per-tensor ``*.scale`` (llama.cpp's ``wq_scale`` and friends)
multiplies ``s``. bitnet.cpp's I2_S (type id 36, not a ggml one) is read by ``i2s.py`` in the
block layout the caller names (``i2s_layout``: x86 by default, or arm): nothing in the file
records which build wrote it.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..config import ModelConfig, parse_config
from ..errors import ModelFormatError
from .canonical import LINEAR_NAMES, Tensor, canonical_names
from .gguf_file import GGUFFile, GGUFTensorInfo
from .i2s import I2S_LAYOUTS, I2S_TYPE, read_i2s
from .safetensors import bf16_to_f32
from .ternary import TernaryWeight

__all__ = ["load_gguf", "gguf_config", "GGUF_MAGIC", "GGUF_ARCHES"]

GGUF_MAGIC = b"GGUF"
GGUF_ARCHES = ("bitnet", "bitnet-b1.58", "bitnet-25")
# llama.cpp's default when a GGUF names no rope base
_LLAMA_CPP_ROPE_BASE = 10000.0

_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "attn_sub_norm": "attn_sub_norm", "ffn_sub_norm": "ffn_sub_norm",
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}


def gguf_name(canonical: str) -> str:
    """Canonical name -> llama.cpp GGUF tensor name (without ``.weight``)."""
    if canonical == "embed_tokens":
        return "token_embd"
    if canonical == "norm":
        return "output_norm"
    if canonical == "lm_head":
        return "output"
    _, layer, part = canonical.split(".", 2)
    return f"blk.{layer}.{_LAYER_NAMES[part]}"


# ggml type id -> numpy dtype for the float types read without the gguf package
_FLOAT_TYPES: dict[int, np.dtype[Any]] = {0: np.dtype("<f4"), 1: np.dtype("<f2"), 30: np.dtype("<u2")}


def _read_tensor(f: GGUFFile, info: GGUFTensorInfo) -> np.ndarray:
    """A tensor dequantized to float32, in numpy shape order."""
    n = int(np.prod(info.shape, dtype=np.int64))
    if info.ggml_type in _FLOAT_TYPES:
        dt = _FLOAT_TYPES[info.ggml_type]
        raw = f.tensor_bytes(info, n * dt.itemsize).view(dt).reshape(info.shape)
        return bf16_to_f32(raw) if info.ggml_type == 30 else raw.astype(np.float32)
    try:
        import gguf
    except ImportError:
        raise ModelFormatError(f.path, info.name, f"ggml type {info.ggml_type}: dequantizing it needs the "
                                                  "`gguf` package (pip install gguf)") from None
    try:
        qtype = gguf.GGMLQuantizationType(info.ggml_type)
    except ValueError:
        raise ModelFormatError(f.path, info.name, f"ggml type {info.ggml_type} is unknown (fork-only types "
                                                  f"other than bitnet.cpp's I2_S ({I2S_TYPE}) are not "
                                                  "supported)") from None
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    if info.shape[-1] % block:
        raise ModelFormatError(f.path, info.name, f"row of {info.shape[-1]} is not a multiple of the "
                                                  f"{qtype.name} block of {block}")
    row_bytes = info.shape[-1] // block * size
    raw = f.tensor_bytes(info, n // info.shape[-1] * row_bytes).reshape(*info.shape[:-1], row_bytes)
    try:
        return gguf.quants.dequantize(raw, qtype).astype(np.float32, copy=False)
    except NotImplementedError as e:
        raise ModelFormatError(f.path, info.name, f"type {qtype.name} cannot be dequantized: {e}") from None


def _config(path: str, fields: dict[str, Any], arch: str, has_output: bool, embd_rows: int) -> ModelConfig:
    def get(key: str, default: Any = None, required: bool = False):
        value = fields.get(key, default)
        if value is None and required:
            raise ModelFormatError(path, None, f"metadata key {key!r} missing (required)")
        return value

    a = arch
    heads = get(f"{a}.attention.head_count", required=True)
    hidden = get(f"{a}.embedding_length", required=True)
    head_dim = get(f"{a}.attention.key_length")
    rope_dims = get(f"{a}.rope.dimension_count")
    if rope_dims is not None and head_dim is None and isinstance(heads, int) and heads:
        head_dim = hidden // heads
    if rope_dims is not None and rope_dims != head_dim:
        raise ModelFormatError(path, None, f"metadata {a}.rope.dimension_count = {rope_dims}: partial "
                                           f"rotary embeddings are not supported (head_dim {head_dim})")
    vocab = get(f"{a}.vocab_size", len(fields.get("tokenizer.ggml.tokens") or ()) or embd_rows)
    eos = [fields.get(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                   "tokenizer.ggml.eom_token_id") if fields.get(k) is not None]
    hf = {
        "model_type": "bitnet",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": get(f"{a}.feed_forward_length", required=True),
        "num_hidden_layers": get(f"{a}.block_count", required=True),
        "num_attention_heads": heads,
        "num_key_value_heads": get(f"{a}.attention.head_count_kv", heads),
        "max_position_embeddings": get(f"{a}.context_length", 2048),
        "rms_norm_eps": get(f"{a}.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": get(f"{a}.rope.freq_base", _LLAMA_CPP_ROPE_BASE),
        # BitNet is relu^2 whatever the file omits (llama.cpp once ran such files with SiLU).
        "hidden_act": get(f"{a}.hidden_act", "relu2"),
        "tie_word_embeddings": not has_output,
        "bos_token_id": get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos or None,
        "pad_token_id": get("tokenizer.ggml.padding_token_id"),
        "mask_token_id": get("tokenizer.ggml.mask_token_id"),
    }
    if head_dim is not None:
        hf["head_dim"] = head_dim
    return parse_config(hf, path)


def _ternary(path: str, name: str, x: np.ndarray, extra_scale: float) -> tuple[np.ndarray, float]:
    """Dequantized ``q * s`` -> (int8 codes, s)."""
    mag = np.abs(x)
    nonzero = mag[mag != 0]
    if nonzero.size == 0:
        return np.zeros(x.shape, np.int8), 1.0
    s = nonzero.flat[0]
    if not np.all(nonzero == s):
        lo, hi = float(nonzero.min()), float(nonzero.max())
        raise ModelFormatError(path, name, f"not a ternary weight with one scale: non-zero magnitudes "
                                           f"range over [{lo:.6g}, {hi:.6g}]")
    scale = float(np.float32(s) * np.float32(extra_scale))
    if not np.isfinite(scale) or scale <= 0:
        raise ModelFormatError(path, name, f"scale {scale} must be finite and positive")
    return np.sign(x).astype(np.int8), scale


def gguf_config(f: GGUFFile) -> ModelConfig:
    """The model config a BitNet GGUF's metadata describes (no tensor data is read)."""
    arch = f.fields.get("general.architecture")
    if arch not in GGUF_ARCHES:
        raise ModelFormatError(f.path, None, f"general.architecture {arch!r} is not a BitNet one {GGUF_ARCHES}")
    embd = f.tensors.get("token_embd.weight")
    return _config(f.path, f.fields, arch, "output.weight" in f.tensors,
                   embd.shape[0] if embd is not None and len(embd.shape) == 2 else 0)


def load_gguf(path: str | os.PathLike, i2s_layout: str = "x86") -> tuple[ModelConfig, dict[str, Tensor]]:
    """Open a BitNet GGUF file and return the canonical tensors (ternary ones as int8 codes).
    ``i2s_layout`` (``"x86"`` or ``"arm"``) says which bitnet.cpp build wrote its I2_S tensors."""
    if i2s_layout not in I2S_LAYOUTS:
        raise ValueError(f"i2s_layout {i2s_layout!r}: one of {list(I2S_LAYOUTS)}")
    f = GGUFFile(path)
    path = f.path
    cfg = gguf_config(f)

    def tensor(name: str, shape: tuple[int, ...] | None) -> np.ndarray:
        info = f.tensors.get(name)
        if info is None:
            raise ModelFormatError(path, name, "missing tensor")
        if shape is not None and info.shape != shape:
            raise ModelFormatError(path, name, f"shape {info.shape}, expected {shape}")
        x = np.ascontiguousarray(_read_tensor(f, info))
        if not np.isfinite(x).all():
            raise ModelFormatError(path, name, "contains NaN or inf")
        return x

    out: dict[str, Tensor] = {}
    for canon, shape in canonical_names(cfg).items():
        base = gguf_name(canon)
        if canon.rsplit(".", 1)[-1] in LINEAR_NAMES:
            extra = 1.0
            if base + ".scale" in f.tensors:
                sc = tensor(base + ".scale", None)
                if sc.size != 1:
                    raise ModelFormatError(path, base + ".scale", f"{sc.size} values, expected one")
                extra = float(sc.reshape(()))
            info = f.tensors.get(base + ".weight")
            if info is not None and info.ggml_type == I2S_TYPE and info.shape == shape:
                codes, s = read_i2s(f, info, i2s_layout)
                s = float(np.float32(s) * np.float32(extra))
            else:
                codes, s = _ternary(path, base + ".weight", tensor(base + ".weight", shape), extra)
            out[canon] = TernaryWeight(codes, s, shape)
        else:
            out[canon] = tensor(base + ".weight", shape)
    return cfg, out
