"""HF BitNet checkpoints -> the canonical tensors of docs/architecture.md.

Accepts numpy arrays (float32/float16/float64 for master weights and norms, uint8 for
offline-packed linears). bf16 has no numpy dtype: readers hand it over already widened to
float32 (exact), see ``safetensors.py``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np

from ..config import ModelConfig, load_config
from ..errors import ModelFormatError
from .canonical import LINEAR_NAMES, Tensor, canonical_names
from .safetensors import open_safetensors_dir
from .ternary import HF_VALUES_PER_BYTE, TernaryWeight, absmean_quantize, unpack_hf_rows

__all__ = ["tensors_from_state_dict", "iter_canonical", "load_hf_dir", "hf_name", "TensorSource"]

_HF_MODULE = {
    "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj", "attn_sub_norm": "self_attn.attn_sub_norm",
    "ffn_sub_norm": "mlp.ffn_sub_norm", "input_layernorm": "input_layernorm",
    "post_attention_layernorm": "post_attention_layernorm",
}
_FLOAT_KINDS = (np.float32, np.float16, np.float64)


def hf_name(canonical: str) -> str:
    """The HF weight name of a canonical tensor (``layers.3.q_proj`` -> ``model.layers.3.self_attn.q_proj.weight``)."""
    if canonical == "lm_head":
        return "lm_head.weight"
    if not canonical.startswith("layers."):
        return f"model.{canonical}.weight"
    _, layer, part = canonical.split(".", 2)
    return f"model.layers.{layer}.{_HF_MODULE[part]}.weight"


class TensorSource:
    """Typed, shape-checked access to a name -> array mapping; errors name the file."""

    def __init__(self, state_dict: Mapping[str, np.ndarray], source: str | Callable[[str], str]):
        self.sd = state_dict
        self.source = source

    def error(self, name: str, problem: str) -> ModelFormatError:
        return ModelFormatError(self.source(name) if callable(self.source) else self.source, name, problem)

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

    def linear(self, name: str, shape: tuple[int, ...], cfg: ModelConfig) -> TernaryWeight:
        w = self.get(name)
        q = cfg.quantization
        if q is None or q.quantization_mode == "online":
            if w.dtype.type not in _FLOAT_KINDS:
                raise self.error(name, f"dtype {w.dtype}: an online checkpoint stores float master "
                                       "weights (is quantization_config.quantization_mode wrong?)")
            if tuple(w.shape) != shape:
                raise self.error(name, f"shape {tuple(w.shape)}, expected {shape}")
            try:
                codes, s = absmean_quantize(w)
            except ValueError as e:
                raise self.error(name, str(e)) from None
            return TernaryWeight(codes, s, shape)
        return self._offline(name, w, shape, q.linear_class)

    def _offline(self, name: str, w: np.ndarray, shape: tuple[int, ...], linear_class: str) -> TernaryWeight:
        out_f, in_f = shape
        if w.dtype != np.uint8:
            raise self.error(name, f"dtype {w.dtype}: an offline checkpoint stores packed uint8 weights")
        packed_shape = ((out_f + HF_VALUES_PER_BYTE - 1) // HF_VALUES_PER_BYTE, in_f)
        if tuple(w.shape) != packed_shape:
            raise self.error(name, f"shape {tuple(w.shape)}, expected packed {packed_shape} "
                                   f"for a ({out_f}, {in_f}) weight")
        try:
            codes = unpack_hf_rows(w, out_f)
        except ValueError as e:
            raise self.error(name, str(e)) from None
        scale_name = name[:-len("weight")] + "weight_scale"
        ws = self.get(scale_name)
        if ws.dtype.type not in _FLOAT_KINDS or ws.size != 1:
            raise self.error(scale_name, f"dtype {ws.dtype} shape {tuple(ws.shape)}, expected one float")
        stored = float(np.asarray(ws, dtype=np.float32).reshape(()))
        if not np.isfinite(stored) or stored <= 0:
            raise self.error(scale_name, f"scale {stored} must be finite and positive")
        # autobitlinear multiplies the output by weight_scale; legacy bitlinear divides by it.
        s = stored if linear_class == "autobitlinear" else float(np.float32(1.0) / np.float32(stored))
        if not np.isfinite(s):
            raise self.error(scale_name, f"reciprocal of scale {stored} is not finite")
        return TernaryWeight(codes, s, shape)


def iter_canonical(state_dict: Mapping[str, np.ndarray], cfg: ModelConfig,
                   source: str | Callable[[str], str] = "<state_dict>") -> Iterator[tuple[str, Tensor]]:
    """Yield ``(canonical name, tensor)`` one at a time (converters keep memory flat with it):
    norms/embeddings as fp32, every BitLinear quantized (online) or unpacked (offline).

    ``source`` names the file in errors: a string, or a function tensor name -> file (shards;
    it must also answer for names no shard holds). Extra tensors (e.g. rotary buffers) are
    ignored, as transformers does.
    """
    src = TensorSource(state_dict, source)
    for name, shape in canonical_names(cfg).items():
        part = name.rsplit(".", 1)[-1]
        if part in LINEAR_NAMES:
            yield name, src.linear(hf_name(name), shape, cfg)
        else:
            # Embeddings and the head are too big to scan for NaN on every load; norms are not.
            yield name, src.float32(hf_name(name), shape, check_finite=len(shape) == 1)


def tensors_from_state_dict(state_dict: Mapping[str, np.ndarray], cfg: ModelConfig,
                            source: str | Callable[[str], str] = "<state_dict>") -> dict[str, Tensor]:
    """Map a HF state dict to the canonical tensors (see ``iter_canonical``)."""
    return dict(iter_canonical(state_dict, cfg, source))


def load_hf_dir(model_dir) -> tuple[ModelConfig, dict[str, Tensor]]:
    """A HF model directory: ``config.json`` + ``model.safetensors`` (or a sharded index)."""
    cfg = load_config(model_dir)
    checkpoint = open_safetensors_dir(model_dir)
    return cfg, tensors_from_state_dict(checkpoint, cfg, checkpoint.source)
