"""WrinkleFree's sgl-kernel ``.bin`` checkpoints (magic ``SGLBITNT``, version 1).

Layout (little-endian)::

    8 bytes magic, u32 version, u32 config length, config JSON (a HF config), u32 tensor count,
    then per tensor: u32 name length, name, u32 dtype (0 u8 packed, 1 f32, 2 f16, 3 bf16),
    u32 ndim, ndim x u32 dims, u32 has-scale flag, [f32 scale], u64 data size, data.

Linear weights are dtype 0 with dims ``(out, in/4)``: in blocks of 128 inputs, byte ``j`` holds
inputs ``j`` (bits 6-7), ``j+32`` (4-5), ``j+64`` (2-3) and ``j+96`` (0-1) as ``q + 1``, and the
scale multiplies (``W ~ q * s``). Two writers disagree on the f32 scale when the flag is 0: one
omits it, one writes it anyway. Which one wrote a file is decided by consistency, never guessed:
at the first unscaled tensor both readings are tried and exactly one must give a data size that
matches its dims and dtype; the rest of the file must then agree.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from ..config import ModelConfig, parse_config
from ..errors import ModelFormatError
from .binary import BinaryReader
from .canonical import LINEAR_NAMES, Tensor, canonical_names
from .hf import TensorSource, hf_name
from .safetensors import bf16_to_f32
from .ternary import TernaryWeight

__all__ = ["MAGIC", "load_sglbin", "unpack_sgl_rows"]

MAGIC = b"SGLBITNT"
_BLOCK = 128
_DTYPES: dict[int, np.dtype] = {0: np.dtype("u1"), 1: np.dtype("<f4"), 2: np.dtype("<f2"), 3: np.dtype("<u2")}
_MAX_NDIM = 8


def unpack_sgl_rows(packed: np.ndarray) -> np.ndarray:
    """``(out, in/4)`` uint8 in the block-interleaved layout -> int8 codes ``(out, in)``.
    Raises ``ValueError`` for a code of 3."""
    rows, nbytes = packed.shape
    blocks = packed.reshape(rows, nbytes // 32, 32)
    u = np.empty((rows, nbytes // 32, 4, 32), np.int8)
    for slot, shift in enumerate((6, 4, 2, 0)):
        u[:, :, slot, :] = (blocks >> shift) & 3
    if (u == 3).any():
        raise ValueError("packed ternary code 3 (valid codes are 0, 1, 2)")
    u -= 1
    return u.reshape(rows, nbytes * 4)


def _entries(r: BinaryReader) -> dict[str, tuple[int, tuple[int, ...], float | None, np.ndarray]]:
    count = r.scalar("<I", "tensor count")
    scale_when_unflagged: bool | None = None  # which writer: decided at the first unscaled tensor
    out = {}
    for i in range(count):
        n = r.scalar("<I", f"name length of tensor #{i}")
        try:
            name = r.take(n, f"name of tensor #{i}").tobytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFormatError(r.path, None, f"name of tensor #{i} is not UTF-8") from None
        dtype = r.scalar("<I", "dtype", name)
        if dtype not in _DTYPES:
            raise ModelFormatError(r.path, name, f"unknown dtype code {dtype} (0 u8, 1 f32, 2 f16, 3 bf16)")
        ndim = r.scalar("<I", "ndim", name)
        if not 1 <= ndim <= _MAX_NDIM:
            raise ModelFormatError(r.path, name, f"{ndim} dimensions")
        dims = tuple(r.scalar("<I", "dims", name) for _ in range(ndim))
        expected = math.prod(dims) * _DTYPES[dtype].itemsize
        flag = r.scalar("<I", "scale flag", name)
        if flag not in (0, 1):
            raise ModelFormatError(r.path, name, f"scale flag {flag} (0 or 1)")
        scale = None
        if flag == 1:
            scale = r.scalar("<f", "scale", name)
        else:
            without = r.peek("<Q", r.pos) == expected
            with_scale = r.peek("<Q", r.pos + 4) == expected
            if scale_when_unflagged is None:
                if without == with_scale:
                    raise ModelFormatError(r.path, name, "cannot tell whether an unflagged scale is stored: "
                                                         f"{'both' if without else 'neither'} reading gives the "
                                                         f"{expected} data bytes its dims need")
                scale_when_unflagged = with_scale
            elif not (with_scale if scale_when_unflagged else without):
                raise ModelFormatError(r.path, name, f"data size is not the {expected} bytes its dims need")
            if scale_when_unflagged:
                r.take(4, "unflagged scale", name)
        size = r.scalar("<Q", "data size", name)
        if size != expected:
            raise ModelFormatError(r.path, name, f"{size} data bytes, dims {dims} need {expected}")
        data = r.take(size, "data", name).view(_DTYPES[dtype]).reshape(dims)
        if name in out:
            raise ModelFormatError(r.path, name, "stored twice")
        out[name] = (dtype, dims, scale, bf16_to_f32(data) if dtype == 3 else data)
    return out


def load_sglbin(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Read a ``SGLBITNT`` file into canonical tensors (ternary ones as int8 codes).

    A tied model's optional 2-bit ``lm_head.weight`` (the converter's ``--pack-lm-head`` speed
    trick, a lossy copy of the embeddings) is ignored: the head is the embeddings themselves.
    """
    r = BinaryReader(path)
    path = r.path
    if r.take(len(MAGIC), "magic").tobytes() != MAGIC:
        raise ModelFormatError(path, None, "bad magic: not a SGLBITNT file")
    version = r.scalar("<I", "version")
    if version != 1:
        raise ModelFormatError(path, None, f"version {version}, only 1 is known")
    raw_cfg = r.take(r.scalar("<I", "config length"), "config JSON").tobytes()
    try:
        cfg_dict = json.loads(raw_cfg)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(path, None, f"config is not valid JSON: {e}") from None
    if not isinstance(cfg_dict, dict):
        raise ModelFormatError(path, None, "config JSON is not an object")
    # the file's linears are always packed ternary; whatever the source checkpoint's mode was
    cfg_dict.pop("quantization_config", None)
    cfg = parse_config(cfg_dict, path)
    entries = _entries(r)

    floats = {n: e[3] for n, e in entries.items() if e[0] != 0}
    src = TensorSource(floats, path)
    out: dict[str, Tensor] = {}
    for canon, shape in canonical_names(cfg).items():
        name = hf_name(canon)
        if canon.rsplit(".", 1)[-1] not in LINEAR_NAMES:
            out[canon] = src.float32(name, shape, check_finite=len(shape) == 1)
            continue
        if name not in entries:
            raise ModelFormatError(path, name, "missing tensor")
        dtype, dims, scale, data = entries[name]
        want = (shape[0], shape[1] // 4)
        if dtype != 0 or shape[1] % _BLOCK or dims != want:
            raise ModelFormatError(path, name, f"dtype code {dtype} dims {dims}, expected packed u8 {want} "
                                               f"(in features a multiple of {_BLOCK})")
        if scale is None or not math.isfinite(scale) or scale <= 0:
            raise ModelFormatError(path, name, f"scale {scale} must be present, finite and positive")
        try:
            codes = unpack_sgl_rows(np.asarray(data))
        except ValueError as e:
            raise ModelFormatError(path, name, str(e)) from None
        out[canon] = TernaryWeight(codes, float(scale), shape)
    return cfg, out
