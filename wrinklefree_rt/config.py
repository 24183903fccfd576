"""Model configuration parsed from a Hugging Face ``config.json`` (model_type ``bitnet``).

The raw JSON is decoded once, at the boundary, into ``_HFConfig`` (msgspec: wrong types are
reported with the exact field path), then checked and normalised into the frozen
``ModelConfig`` every other layer reads. Unknown keys are tolerated: HF configs carry many
fields (``torch_dtype``, ``initializer_range``, ...) that do not change inference.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import msgspec

from .errors import ModelFormatError

__all__ = ["ModelConfig", "QuantizationConfig", "parse_config", "load_config"]

# transformers' BitNetConfig.default_theta: what HF itself uses when a config names no theta.
_HF_DEFAULT_ROPE_THETA = 500000.0

# Upper bounds that keep every size product far inside int64 and reject garbage early.
_MAX_DIM = 1 << 20
_MAX_VOCAB = 1 << 22
_MAX_LAYERS = 1024
_MAX_HEADS = 4096
_MAX_POSITIONS = 1 << 24


class QuantizationConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The BitNet ``quantization_config`` block (transformers' ``BitNetQuantConfig``).

    ``quantization_mode`` online: linear weights are float master weights, quantized at load.
    offline: linear weights are packed uint8 ``(out/4, in)`` plus ``weight_scale``; with
    ``linear_class`` autobitlinear the scale multiplies, with legacy bitlinear it divides.
    Defaults are transformers' own.
    """

    quant_method: str = "bitnet"
    linear_class: Literal["bitlinear", "autobitlinear"] = "bitlinear"
    quantization_mode: Literal["online", "offline"] = "offline"
    use_rms_norm: bool = False
    rms_norm_eps: float | None = 1e-6
    modules_to_not_convert: list[str] | None = None


class _RopeParameters(msgspec.Struct, kw_only=True):
    rope_theta: float | None = None
    rope_type: str | None = None
    type: str | None = None  # older spelling of rope_type
    factor: float | None = None


class _HFConfig(msgspec.Struct, kw_only=True):
    """config.json as written by transformers; only what inference needs, all optional here
    so that a missing required field gets our message rather than a generic one."""

    model_type: str | None = None
    vocab_size: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "relu2"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float | None = None
    rope_parameters: _RopeParameters | None = None
    rope_scaling: _RopeParameters | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    mask_token_id: int | None = None
    bd_size: int | None = None
    shift: bool | None = None
    quantization_config: QuantizationConfig | None = None


class ModelConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A validated BitNet b1.58 model configuration (field names follow HF's).

    DLM fields: ``mask_token_id`` (the ``|<MASK>|`` token), ``bd_size`` (Fast-dLLM v2's block
    size for block-causal attention) and ``shift`` (logits at i predict token i+1) are ``None``
    when the checkpoint does not say; the caller decides then.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    hidden_act: str = "relu2"
    model_type: str = "bitnet"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    mask_token_id: int | None = None
    bd_size: int | None = None
    shift: bool | None = None
    quantization: QuantizationConfig | None = None

    def to_hf_dict(self) -> dict[str, Any]:
        """This config as a HF ``config.json`` object (``parse_config`` reads it back equal)."""
        d = msgspec.to_builtins(self)
        d["eos_token_id"] = d.pop("eos_token_ids")
        d["quantization_config"] = d.pop("quantization")
        return {k: v for k, v in d.items() if v is not None}

    def validate(self, source: str = "<config>") -> None:
        """Check the relations between fields (raises ``ModelFormatError`` naming ``source``)."""
        _check(self, source)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str, source: str = "<config>") -> "ModelConfig":
        """Decode a ``ModelConfig`` previously written by ``to_json`` (and re-validate it)."""
        cfg = _decode(data, cls, source)
        _check(cfg, source)
        return cfg


def _field_error(source: str, field: str, problem: str) -> ModelFormatError:
    return ModelFormatError(source, None, f"field `$.{field}`: {problem}")


def _decode(data, type_, source: str):
    """JSON bytes/str (or an already-decoded dict) -> ``type_``; errors name ``source`` and the field."""
    try:
        if isinstance(data, dict):
            return msgspec.convert(data, type=type_)
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as e:
        raise _validation_error(source, e) from None
    except msgspec.DecodeError as e:
        raise ModelFormatError(source, None, f"config is not valid JSON: {e}") from None


def _validation_error(source: str, e: msgspec.ValidationError) -> ModelFormatError:
    """msgspec says "<problem> - at `$.path`"; lead with the path like our own checks do."""
    problem, sep, where = str(e).rpartition(" - at `")
    if not sep:
        return ModelFormatError(source, None, f"config: {e}")
    return ModelFormatError(source, None, f"field `{where.rstrip('`')}`: {problem}")


def _require(raw: _HFConfig, name: str, source: str, lo: int, hi: int) -> int:
    value = getattr(raw, name)
    if value is None:
        raise _field_error(source, name, "missing (required)")
    if not lo <= value <= hi:
        raise _field_error(source, name, f"{value} out of range [{lo}, {hi}]")
    return value


def _rope_theta(raw: _HFConfig, source: str) -> float:
    for key, block in (("rope_parameters", raw.rope_parameters), ("rope_scaling", raw.rope_scaling)):
        if block is None:
            continue
        kind = block.rope_type or block.type or "default"
        # linear scaling by 1 (what BitNet GGUF converters write) is plain RoPE
        if kind != "default" and not (kind == "linear" and block.factor in (None, 1.0)):
            raise _field_error(source, f"{key}.rope_type",
                               f"{kind!r} is not supported (only plain RoPE, 'default')")
    nested = raw.rope_parameters is not None and raw.rope_parameters.rope_theta is not None
    theta = raw.rope_parameters.rope_theta if raw.rope_parameters is not None and nested else raw.rope_theta
    where = "rope_parameters.rope_theta" if nested else "rope_theta"
    if theta is None:
        return _HF_DEFAULT_ROPE_THETA
    if not (math.isfinite(theta) and theta > 0):
        raise _field_error(source, where, f"{theta} must be a positive finite number")
    return float(theta)


def _eos_list(raw: _HFConfig) -> tuple[int, ...]:
    if raw.eos_token_id is None:
        return ()
    if isinstance(raw.eos_token_id, int):
        return (raw.eos_token_id,)
    return tuple(dict.fromkeys(raw.eos_token_id))  # de-duplicated, order kept


def _check(cfg: ModelConfig, source: str) -> None:
    """Relations between fields; shared by HF parsing and our own format's embedded config."""
    checks: list[tuple[str, int, int, int]] = [
        ("vocab_size", cfg.vocab_size, 1, _MAX_VOCAB),
        ("hidden_size", cfg.hidden_size, 1, _MAX_DIM),
        ("intermediate_size", cfg.intermediate_size, 1, _MAX_DIM),
        ("num_hidden_layers", cfg.num_hidden_layers, 1, _MAX_LAYERS),
        ("num_attention_heads", cfg.num_attention_heads, 1, _MAX_HEADS),
        ("num_key_value_heads", cfg.num_key_value_heads, 1, _MAX_HEADS),
        ("head_dim", cfg.head_dim, 2, _MAX_DIM),
        ("max_position_embeddings", cfg.max_position_embeddings, 1, _MAX_POSITIONS),
    ]
    for name, value, lo, hi in checks:
        if not lo <= value <= hi:
            raise _field_error(source, name, f"{value} out of range [{lo}, {hi}]")
    if cfg.model_type != "bitnet":
        raise _field_error(source, "model_type", f"{cfg.model_type!r} is not 'bitnet'")
    if cfg.hidden_act != "relu2":
        raise _field_error(source, "hidden_act",
                           f"{cfg.hidden_act!r} is not supported: BitNet b1.58 uses 'relu2'")
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise _field_error(source, "num_key_value_heads",
                           f"{cfg.num_key_value_heads} does not divide num_attention_heads "
                           f"{cfg.num_attention_heads}")
    if cfg.head_dim % 2:
        raise _field_error(source, "head_dim", f"{cfg.head_dim} must be even (rotate-half RoPE)")
    if cfg.num_attention_heads * cfg.head_dim != cfg.hidden_size:
        # attn_sub_norm normalises the attention output over hidden_size before o_proj.
        raise _field_error(source, "head_dim",
                           f"num_attention_heads {cfg.num_attention_heads} x head_dim "
                           f"{cfg.head_dim} != hidden_size {cfg.hidden_size}")
    if not (math.isfinite(cfg.rms_norm_eps) and cfg.rms_norm_eps > 0):
        raise _field_error(source, "rms_norm_eps", f"{cfg.rms_norm_eps} must be positive and finite")
    if not (math.isfinite(cfg.rope_theta) and cfg.rope_theta > 0):
        raise _field_error(source, "rope_theta", f"{cfg.rope_theta} must be positive and finite")
    for name, token in (("bos_token_id", cfg.bos_token_id), ("pad_token_id", cfg.pad_token_id),
                        ("mask_token_id", cfg.mask_token_id)):
        if token is not None and not 0 <= token < cfg.vocab_size:
            raise _field_error(source, name, f"{token} outside the vocabulary [0, {cfg.vocab_size})")
    for i, eos in enumerate(cfg.eos_token_ids):
        if not 0 <= eos < cfg.vocab_size:
            raise _field_error(source, f"eos_token_id[{i}]",
                               f"{eos} outside the vocabulary [0, {cfg.vocab_size})")
    if cfg.bd_size is not None and not 1 <= cfg.bd_size <= cfg.max_position_embeddings:
        raise _field_error(source, "bd_size", f"{cfg.bd_size} out of range "
                           f"[1, {cfg.max_position_embeddings}]")
    q = cfg.quantization
    if q is not None:
        if q.quant_method != "bitnet":
            raise _field_error(source, "quantization_config.quant_method",
                               f"{q.quant_method!r} is not 'bitnet'")
        if q.use_rms_norm:
            raise _field_error(source, "quantization_config.use_rms_norm",
                               "true is not supported (BitNet b1.58 uses SubLN, not a norm inside each linear)")
        extra = [m for m in (q.modules_to_not_convert or []) if m != "lm_head"]
        if extra:
            raise _field_error(source, "quantization_config.modules_to_not_convert",
                               f"{extra} would leave those layers unquantized; only 'lm_head' is supported")


def parse_config(data: bytes | str | dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Parse and validate a HF BitNet config (raw JSON bytes/str or an already-decoded dict).

    Raises ``ModelFormatError`` naming ``source`` and the offending field path.
    """
    raw = _decode(data, _HFConfig, source)

    if raw.model_type is None:
        raise _field_error(source, "model_type", "missing (required, must be 'bitnet')")
    if raw.attention_bias:
        raise _field_error(source, "attention_bias", "true is not supported (BitNet has no biases)")
    if raw.mlp_bias:
        raise _field_error(source, "mlp_bias", "true is not supported (BitNet has no biases)")
    hidden = _require(raw, "hidden_size", source, 1, _MAX_DIM)
    heads = _require(raw, "num_attention_heads", source, 1, _MAX_HEADS)
    kv_heads = raw.num_key_value_heads if raw.num_key_value_heads is not None else heads
    head_dim = raw.head_dim if raw.head_dim is not None else hidden // heads
    cfg = ModelConfig(
        model_type=raw.model_type,
        vocab_size=_require(raw, "vocab_size", source, 1, _MAX_VOCAB),
        hidden_size=hidden,
        intermediate_size=_require(raw, "intermediate_size", source, 1, _MAX_DIM),
        num_hidden_layers=_require(raw, "num_hidden_layers", source, 1, _MAX_LAYERS),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=raw.max_position_embeddings,
        rms_norm_eps=float(raw.rms_norm_eps),
        rope_theta=_rope_theta(raw, source),
        tie_word_embeddings=raw.tie_word_embeddings,
        hidden_act=raw.hidden_act,
        bos_token_id=raw.bos_token_id,
        eos_token_ids=_eos_list(raw),
        pad_token_id=raw.pad_token_id,
        mask_token_id=raw.mask_token_id,
        bd_size=raw.bd_size,
        shift=raw.shift,
        quantization=raw.quantization_config,
    )
    _check(cfg, source)
    return cfg


def load_config(model_dir: str | Path) -> ModelConfig:
    """Read ``config.json`` of a model directory. A ``dlm_config.json`` beside it (written by
    WrinkleFree / Fast-dLLM v2 converters: ``bd_size``, ``mask_token_id``) fills DLM fields
    that config.json leaves out."""
    model_dir = Path(model_dir)
    path = model_dir / "config.json"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelFormatError(str(path), None, f"cannot read config: {e.strerror or e}") from None
    cfg = parse_config(data, str(path))
    dlm_path = model_dir / "dlm_config.json"
    if dlm_path.is_file():
        try:
            dlm_data = dlm_path.read_bytes()
        except OSError as e:
            raise ModelFormatError(str(dlm_path), None, f"cannot read config: {e.strerror or e}") from None
        extra = _decode(dlm_data, _DlmConfig, str(dlm_path))
        updates = {k: getattr(extra, k) for k in ("mask_token_id", "bd_size", "shift")
                   if getattr(extra, k) is not None and getattr(cfg, k) is None}
        if updates:
            cfg = msgspec.structs.replace(cfg, **updates)
            _check(cfg, str(dlm_path))
    return cfg


class _DlmConfig(msgspec.Struct, kw_only=True):
    mask_token_id: int | None = None
    bd_size: int | None = None
    shift: bool | None = None
