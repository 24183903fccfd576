"""The GGUF container (v2/v3): metadata and tensor directory, parsed strictly from a memory map.

The ``gguf`` package's reader builds a numpy object per metadata string (seconds for a 128k-token
vocabulary) and cannot even open a file holding a tensor type it does not know (bitnet.cpp's
I2_S). This parser is a few struct reads per entry through the bounded ``BinaryReader`` (every
length and count checked against the file), and leaves tensor types to the caller.

Layout (little-endian): ``GGUF``, u32 version, u64 tensor count, u64 metadata count; metadata
``string key, u32 type, value``; tensor infos ``string name, u32 n_dims, u64 dims[n] (ne0
first), u32 ggml type, u64 offset``; data from the next ``general.alignment`` boundary (32).
Strings are u64 length + UTF-8 bytes; arrays are u32 element type, u64 count, elements.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModelFormatError
from .binary import BinaryReader

__all__ = ["GGUFFile", "GGUFTensorInfo"]

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4  # ggml's GGML_MAX_DIMS


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    ggml_type: int
    shape: tuple[int, ...]   # numpy order (ne[n-1], ..., ne0)
    offset: int              # absolute, in the file


class GGUFFile:
    """``fields``: metadata key -> Python value (lists for arrays); ``tensors``: name -> info;
    ``data``: the whole file as a read-only uint8 memory map."""

    def __init__(self, path: str | os.PathLike):
        r = self._r = BinaryReader(path)
        self.path, self.data = r.path, r.data
        if r.size < 24:
            raise ModelFormatError(self.path, None, f"truncated: {r.size} bytes, no GGUF header")
        if r.take(4, "magic").tobytes() != b"GGUF":
            raise ModelFormatError(self.path, None, "bad magic: not a GGUF file")
        self.version = r.scalar("<I", "version")
        if self.version not in (2, 3):
            raise ModelFormatError(self.path, None, f"GGUF version {self.version} (2 and 3 are read)")
        n_tensors = r.scalar("<Q", "tensor count")
        n_fields = r.scalar("<Q", "metadata count")
        # every entry takes at least 12 bytes: refuse absurd counts before looping over them
        if (n_tensors + n_fields) * 12 > r.size:
            raise ModelFormatError(self.path, None, f"{n_tensors} tensors and {n_fields} metadata entries "
                                                    f"cannot fit in {r.size} bytes (truncated?)")
        self.fields: dict[str, Any] = {}
        for i in range(n_fields):
            key = r.string("<Q", f"metadata key #{i}")
            self.fields[key] = self._value(r.scalar("<I", key), key)
        infos = []
        for i in range(n_tensors):
            name = r.string("<Q", f"tensor name #{i}")
            n_dims = r.scalar("<I", "n_dims", name)
            if not 1 <= n_dims <= _MAX_DIMS:
                raise ModelFormatError(self.path, name, f"{n_dims} dimensions")
            dims = [r.scalar("<Q", "dims", name) for _ in range(n_dims)]
            infos.append((name, dims, r.scalar("<I", "type", name), r.scalar("<Q", "offset", name)))
        align = self.fields.get("general.alignment", 32)
        if not isinstance(align, int) or align < 1 or align & (align - 1):
            raise ModelFormatError(self.path, None, f"general.alignment {align!r} is not a power of two")
        start = (r.pos + align - 1) // align * align
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, dims, ggml_type, offset in infos:
            if name in self.tensors:
                raise ModelFormatError(self.path, name, "stored twice")
            self.tensors[name] = GGUFTensorInfo(name, ggml_type, tuple(reversed(dims)), start + offset)

    def tensor_bytes(self, info: GGUFTensorInfo, nbytes: int) -> np.ndarray:
        """The ``nbytes`` bytes of a tensor (the caller knows its type's size), bounds-checked."""
        return self._r.view(info.offset, nbytes, "data", info.name)

    def _value(self, vtype: int, key: str) -> Any:
        r = self._r
        if vtype in _SCALARS:
            return r.scalar(_SCALARS[vtype], key)
        if vtype == _STRING:
            return r.string("<Q", key)
        if vtype != _ARRAY:
            raise ModelFormatError(self.path, None, f"metadata {key!r}: unknown value type {vtype}")
        etype, count = r.scalar("<I", key), r.scalar("<Q", key)
        if etype in _SCALARS:
            fmt = np.dtype(_SCALARS[etype])
            return np.frombuffer(r.take(count * fmt.itemsize, key), dtype=fmt).tolist()
        if etype == _STRING:
            r.need(count * 8, f"metadata {key!r}: {count} strings")
            return [r.string("<Q", key) for _ in range(count)]
        raise ModelFormatError(self.path, None, f"metadata {key!r}: arrays of type {etype} are not supported")
