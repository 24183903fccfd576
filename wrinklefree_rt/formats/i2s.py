"""bitnet.cpp's I2_S tensors (ggml type id 36 in its llama.cpp fork) -> int8 codes and one scale.

Checked against microsoft/BitNet ``src/ggml-bitnet-mad.cpp`` (``quantize_i2_s``) at commit
01eb415772c342d9f20dc42772f1583ae1e5b102 and 16da220ae2b510caff437d403288882687f44ae5, and
against a file written by that code's ``llama-quantize`` (tests/test_formats_i2s.py).

The payload of an ``n``-element tensor is ``n / 4`` bytes of 2-bit codes ``q + 1`` (0 = -1,
1 = 0, 2 = +1) over the tensor flattened row-major, then a 32-byte tail whose first four bytes
are the per-tensor scale (little-endian f32; the other 28 are not initialised by the writer).
The codes come in blocks whose size depends on the build that wrote them (``QK_I2_S``):

- ``x86`` (AVX/SSSE3 builds with the default ``ACT_PARALLEL``): blocks of 128 elements in 32
  bytes; byte ``j`` holds elements ``j, 32+j, 64+j, 96+j`` in bits 7:6, 5:4, 3:2, 1:0.
- ``arm`` (NEON builds): blocks of 64 elements in 16 bytes; byte ``j`` holds elements
  ``j, 16+j, 32+j, 48+j`` in the same bit order.

Both give the same byte count, and nothing in the file records which one wrote it, so the
caller names the layout; a tensor whose size the named layout cannot hold is refused, naming
the option.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelFormatError
from .gguf_file import GGUFFile, GGUFTensorInfo

__all__ = ["I2S_TYPE", "I2S_LAYOUTS", "i2s_nbytes", "read_i2s", "pack_i2s"]

I2S_TYPE = 36
# layout name -> bytes per block (a block holds four times as many elements)
I2S_LAYOUTS = {"x86": 32, "arm": 16}
_TAIL = 32


def i2s_nbytes(n_elements: int) -> int:
    """``ggml_nbytes`` of an I2_S tensor in bitnet.cpp's fork: the codes plus the scale's tail."""
    return n_elements // 4 + _TAIL


def unpack_i2s_codes(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    """Packed bytes -> flat int8 codes in {-1, 0, 1}; ``ValueError`` on a code of 3."""
    blocks = raw.reshape(-1, block_bytes)
    codes = np.empty((blocks.shape[0], 4, block_bytes), np.int8)
    for group, shift in enumerate((6, 4, 2, 0)):
        codes[:, group, :] = (blocks >> shift) & 3
    if (codes == 3).any():
        raise ValueError("code 3 (valid I2_S codes are 0, 1, 2)")
    codes -= 1
    return codes.reshape(-1)


def pack_i2s(codes: np.ndarray, scale: float, layout: str = "x86") -> np.ndarray:
    """The inverse of ``read_i2s`` (for tests and tools): int8 codes in {-1, 0, 1}, any shape,
    -> the I2_S payload bytes with a zeroed tail after the scale."""
    block_bytes = I2S_LAYOUTS[layout]
    flat = (np.asarray(codes, np.int8).reshape(-1) + 1).astype(np.uint8)
    groups = flat.reshape(-1, 4, block_bytes)
    packed = (groups[:, 0] << 6) | (groups[:, 1] << 4) | (groups[:, 2] << 2) | groups[:, 3]
    tail = np.zeros(_TAIL, np.uint8)
    tail[:4] = np.frombuffer(np.float32(scale).tobytes(), np.uint8)
    return np.concatenate([packed.reshape(-1).astype(np.uint8), tail])


def read_i2s(f: GGUFFile, info: GGUFTensorInfo, layout: str) -> tuple[np.ndarray, float]:
    """One I2_S tensor of ``f`` -> (int8 codes in numpy shape order, scale)."""
    block_bytes = I2S_LAYOUTS[layout]
    n = int(np.prod(info.shape, dtype=np.int64))
    block = 4 * block_bytes
    if n % block:
        other = [name for name, b in I2S_LAYOUTS.items() if n % (4 * b) == 0]
        hint = f"; written by another build? try i2s_layout={other[0]!r}" if other else ""
        raise ModelFormatError(f.path, info.name, f"I2_S tensor of {n} elements cannot be in the {layout} "
                                                  f"layout (blocks of {block}){hint}")
    raw = f.tensor_bytes(info, i2s_nbytes(n))
    try:
        codes = unpack_i2s_codes(raw[:n // 4], block_bytes)
    except ValueError as e:
        raise ModelFormatError(f.path, info.name, str(e)) from None
    scale = float(raw[n // 4:n // 4 + 4].view("<f4")[0])
    if scale == 0 and not codes.any():
        scale = 1.0  # an all-zero tensor: the writer's max|w| is 0, any scale gives the same zeros
    if not np.isfinite(scale) or scale <= 0:
        raise ModelFormatError(f.path, info.name, f"I2_S scale {scale} must be finite and positive")
    return codes.reshape(info.shape), scale
