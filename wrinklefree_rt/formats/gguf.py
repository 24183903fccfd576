"""GGUF files of llama.cpp's ``bitnet`` architecture, read with the ``gguf`` package (an optional
extra: ``pip install wrinklefree-rt[gguf]``).

Ternary linears may be stored in any type the ``gguf`` package dequantizes (TQ1_0, TQ2_0, F16,
F32, BF16, ...). A BitNet weight is ``q * s`` with one scale per tensor, so after dequantizing
every non-zero element must have the same magnitude ``s``; a tensor where they differ is not a
BitNet weight and is refused rather than re-quantized. An optional per-tensor ``*.scale``
(llama.cpp's ``wq_scale`` and friends) multiplies ``s``. bitnet.cpp's I2_S type is not part of
the ``gguf`` package and is refused with a clear error.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..config import ModelConfig, parse_config
from ..errors import ModelFormatError
from .canonical import LINEAR_NAMES, Tensor, canonical_names
from .ternary import TernaryWeight

__all__ = ["load_gguf", "is_gguf_file", "GGUF_ARCHES"]

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


def is_gguf_file(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError("reading GGUF files needs the `gguf` package: pip install gguf") from None
    return gguf


class _Fields:
    """Metadata values decoded on demand (the token and merge lists are large)."""

    def __init__(self, raw):
        self.raw = raw

    def get(self, key: str, default: Any = None) -> Any:
        field = self.raw.get(key)
        return default if field is None else field.contents()

    def array_len(self, key: str) -> int:
        field = self.raw.get(key)
        return 0 if field is None else len(field.data)


def _config(path: str, fields: _Fields, arch: str, has_output: bool, embd_rows: int) -> ModelConfig:
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
    vocab = get(f"{a}.vocab_size", fields.array_len("tokenizer.ggml.tokens") or embd_rows)
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


def load_gguf(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Open a BitNet GGUF file and return the canonical tensors (ternary ones as int8 codes)."""
    gguf = _gguf()
    path = os.fspath(path)
    try:
        reader = gguf.GGUFReader(path)
    except ValueError as e:
        problem = str(e)
        if "GGMLQuantizationType" in problem:
            problem += " (bitnet.cpp's I2_S and other types the gguf package does not know are unsupported)"
        raise ModelFormatError(path, None, f"unreadable GGUF (truncated or corrupt?): {problem}") from None
    except (IndexError, OverflowError, UnicodeDecodeError, KeyError) as e:
        raise ModelFormatError(path, None, f"truncated or corrupt GGUF: {type(e).__name__}: {e}") from None
    fields = _Fields(reader.fields)
    arch = fields.get("general.architecture")
    if arch not in GGUF_ARCHES:
        raise ModelFormatError(path, None, f"general.architecture {arch!r} is not a BitNet one {GGUF_ARCHES}")
    # The reader itself refuses tensors whose data runs past the end (a reshape fails above).
    by_name = {t.name: t for t in reader.tensors}
    embd = by_name.get("token_embd.weight")
    cfg = _config(path, fields, arch, "output.weight" in by_name,
                  int(embd.shape[-1]) if embd is not None and len(embd.shape) == 2 else 0)

    def tensor(name: str, shape: tuple[int, ...]) -> np.ndarray:
        t = by_name.get(name)
        if t is None:
            raise ModelFormatError(path, name, "missing tensor")
        got = tuple(int(d) for d in reversed(t.shape.tolist()))
        if got != shape:
            raise ModelFormatError(path, name, f"shape {got}, expected {shape}")
        try:
            x = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise ModelFormatError(path, name, f"type {t.tensor_type.name} cannot be dequantized: {e}") from None
        x = np.ascontiguousarray(x.reshape(shape), dtype=np.float32)
        if not np.isfinite(x).all():
            raise ModelFormatError(path, name, "contains NaN or inf")
        return x

    out: dict[str, Tensor] = {}
    for canon, shape in canonical_names(cfg).items():
        base = gguf_name(canon)
        if canon.rsplit(".", 1)[-1] in LINEAR_NAMES:
            extra = 1.0
            if base + ".scale" in by_name:
                sc = tensor(base + ".scale", tuple(int(d) for d in reversed(by_name[base + ".scale"].shape.tolist())))
                if sc.size != 1:
                    raise ModelFormatError(path, base + ".scale", f"{sc.size} values, expected one")
                extra = float(sc.reshape(()))
            codes, s = _ternary(path, base + ".weight", tensor(base + ".weight", shape), extra)
            out[canon] = TernaryWeight(codes, s, shape)
        else:
            out[canon] = tensor(base + ".weight", shape)
    return cfg, out
