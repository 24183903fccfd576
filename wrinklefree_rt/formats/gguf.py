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
from .i2s import I2S_LAYOUTS, I2S_TYPE, i2s_nbytes, read_i2s
from .safetensors import bf16_to_f32
from .ternary import TernaryWeight

__all__ = ["load_gguf", "GGUF_MAGIC", "gguf_tokenizer_files", "GGUF_ARCHES"]

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
_FLOAT_TYPES = {0: np.dtype("<f4"), 1: np.dtype("<f2"), 30: np.dtype("<u2")}


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


def load_gguf(path: str | os.PathLike, i2s_layout: str = "x86") -> tuple[ModelConfig, dict[str, Tensor]]:
    """Open a BitNet GGUF file and return the canonical tensors (ternary ones as int8 codes).
    ``i2s_layout`` (``"x86"`` or ``"arm"``) says which bitnet.cpp build wrote its I2_S tensors."""
    if i2s_layout not in I2S_LAYOUTS:
        raise ValueError(f"i2s_layout {i2s_layout!r}: one of {list(I2S_LAYOUTS)}")
    f = GGUFFile(path)
    path = f.path
    arch = f.fields.get("general.architecture")
    if arch not in GGUF_ARCHES:
        raise ModelFormatError(path, None, f"general.architecture {arch!r} is not a BitNet one {GGUF_ARCHES}")
    embd = f.tensors.get("token_embd.weight")
    cfg = _config(path, f.fields, arch, "output.weight" in f.tensors,
                  embd.shape[0] if embd is not None and len(embd.shape) == 2 else 0)

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


# The pre-tokenizer regexes of the BPE vocabularies we can rebuild exactly, by the name GGUF
# stores in tokenizer.ggml.pre (llama.cpp's names), and whether BPE merges are skipped for
# words already in the vocabulary (llama.cpp does so for Llama 3).
_PRE_TOKENIZERS = {
    "llama-bpe": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+", True),
    "gpt-2": (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", False),
}
_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4


def gguf_tokenizer_files(path: str | os.PathLike) -> dict[str, dict]:
    """Rebuild ``tokenizer.json`` and ``tokenizer_config.json`` (HF ``tokenizers`` format) from
    a GGUF's byte-level BPE vocabulary (``tokenizer.ggml.model`` gpt2, pre-tokenizer llama-bpe or
    gpt-2). Control tokens become special added tokens, user-defined ones plain added tokens.
    Raises ``ValueError`` for a vocabulary it cannot rebuild exactly (SentencePiece, other
    pre-tokenizers): better no tokenizer than a wrong one."""
    f = GGUFFile(path)
    path, fields = f.path, f.fields
    model = fields.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"tokenizer.ggml.model {model!r}: only byte-level BPE ('gpt2') vocabularies are rebuilt")
    pre = fields.get("tokenizer.ggml.pre", "gpt-2")
    pre = "gpt-2" if pre == "default" else pre
    if pre not in _PRE_TOKENIZERS:
        raise ValueError(f"tokenizer.ggml.pre {pre!r}: unknown pre-tokenizer (known: {sorted(_PRE_TOKENIZERS)})")
    regex, ignore_merges = _PRE_TOKENIZERS[pre]
    tokens = fields.get("tokenizer.ggml.tokens") or []
    types = fields.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = fields.get("tokenizer.ggml.merges") or []
    if len(types) != len(tokens):
        raise ModelFormatError(path, None, f"{len(tokens)} tokens but {len(types)} token types")

    vocab, added = {}, []
    for i, (text, kind) in enumerate(zip(tokens, types)):
        if kind in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED):
            added.append({"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": kind != _TOKEN_CONTROL, "special": kind == _TOKEN_CONTROL})
        else:
            vocab[text] = i
    bos, eos = fields.get("tokenizer.ggml.bos_token_id"), fields.get("tokenizer.ggml.eos_token_id")
    add_bos = fields.get("tokenizer.ggml.add_bos_token", bos is not None)
    post = [{"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}]
    if add_bos and bos is not None:
        b = {"SpecialToken": {"id": tokens[bos], "type_id": 0}}
        post.append({"type": "TemplateProcessing",
                     "single": [b, {"Sequence": {"id": "A", "type_id": 0}}],
                     "pair": [b, {"Sequence": {"id": "A", "type_id": 0}},
                              {"SpecialToken": {"id": tokens[bos], "type_id": 1}},
                              {"Sequence": {"id": "B", "type_id": 1}}],
                     "special_tokens": {tokens[bos]: {"id": tokens[bos], "ids": [bos], "tokens": [tokens[bos]]}}})
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "Sequence", "processors": post},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for key, tid in (("bos_token", bos), ("eos_token", eos)):
        if tid is not None and 0 <= tid < len(tokens):
            config[key] = tokens[tid]
    template = fields.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": config}
