"""Ternary weights: the absmean quantizer and HF's packed-row layout.

The quantizer is transformers' online ``AutoBitLinear`` rule (``WeightQuant``) made
deterministic: ``s = mean|W|`` accumulated in double and clamped at 1e-5, then
``q = clamp(rint(W * (1/s)), -1, 1)`` in fp32 (round half to even), ``W ~ q * s``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TernaryWeight", "absmean_quantize", "unpack_hf_rows", "HF_VALUES_PER_BYTE"]

# transformers.integrations.bitnet.VALUES_PER_ITEM: 2-bit codes, four per uint8.
HF_VALUES_PER_BYTE = 4


@dataclass(frozen=True, slots=True)
class TernaryWeight:
    """One BitLinear weight of logical shape ``(out, in)`` with its per-tensor scale.

    ``data`` is either int8 codes in {-1, 0, 1} of shape ``(out, in)``, or uint8 bytes already
    packed in the kernels' layout (``wrinklefree_rt._core.ternary_pack``), flat.
    The layer computes ``y = (sum_k q[k] * x_q[k]) * scale / a``.
    """

    data: np.ndarray
    scale: float
    shape: tuple[int, ...]  # (out, in)

    @property
    def is_packed(self) -> bool:
        return self.data.dtype == np.uint8


def absmean_quantize(w: np.ndarray) -> tuple[np.ndarray, float]:
    """Quantize float master weights ``(out, in)`` to int8 codes and the fp32 scale ``s``.

    Returns ``(codes, s)``. Raises ``ValueError`` when ``w`` holds NaN or inf.
    """
    w32 = np.asarray(w, dtype=np.float32)
    tmp = np.abs(w32)  # one scratch buffer, reused in place below (2B-scale loads are memory-bound)
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite input is reported below
        mean = float(np.add.reduce(tmp, axis=None, dtype=np.float64)) / max(w32.size, 1)
    if not np.isfinite(mean):
        raise ValueError("contains NaN or inf (the absmean scale is not finite)")
    s = np.float32(max(mean, 1e-5))
    np.multiply(w32, np.float32(1.0) / s, out=tmp)
    np.rint(tmp, out=tmp)
    np.clip(tmp, -1, 1, out=tmp)
    return tmp.astype(np.int8), float(s)


def unpack_hf_rows(packed: np.ndarray, out_features: int) -> np.ndarray:
    """Inverse of transformers' ``pack_weights`` for a 2-D weight.

    ``packed`` is uint8 ``(ceil(out/4), in)``: packed row r, bits 2i..2i+1 (LSB first) hold
    original row ``i * rows + r`` as code ``q + 1``. Returns int8 codes ``(out, in)``; a code
    of 3 (not produced by any packer) is reported by the caller via ``ValueError``.
    """
    rows, k = packed.shape
    out = np.empty((HF_VALUES_PER_BYTE * rows, k), dtype=np.int8)
    for i in range(HF_VALUES_PER_BYTE):
        out[i * rows:(i + 1) * rows] = (packed >> (2 * i)) & 3
    out = out[:out_features]
    if (out == 3).any():
        raise ValueError("packed ternary code 3 (valid codes are 0, 1, 2)")
    out -= 1
    return out
