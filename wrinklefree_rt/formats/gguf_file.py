"""The GGUF container (v2/v3): metadata and tensor directory, parsed strictly from a memory map.

The ``gguf`` package's reader builds a numpy object per metadata string (seconds for a 128k-token
vocabulary) and cannot even open a file holding a tensor type it does not know (bitnet.cpp's
I2_S). This parser is a few struct reads per entry, bounds-checks every length against the
file, and leaves tensor types to the caller.

Layout (little-endian): ``GGUF``, u32 version, u64 tensor count, u64 metadata count; metadata
``string key, u32 type, value``; tensor infos ``string name, u32 n_dims, u64 dims[n] (ne0
first), u32 ggml type, u64 offset``; data from the next ``general.alignment`` boundary (32).
Strings are u64 length + UTF-8 bytes; arrays are u32 element type, u64 count, elements.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModelFormatError

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
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
        except OSError as e:
            raise ModelFormatError(self.path, None, f"cannot open: {e.strerror or e}") from None
        if size < 24:
            raise ModelFormatError(self.path, None, f"truncated: {size} bytes, no GGUF header")
        self.data = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._buf = memoryview(self.data)  # type: ignore[arg-type]  # numpy declares __buffer__ for 3.12+ only
        self._pos = 0
        if bytes(self._take(4, "magic")) != b"GGUF":
            raise ModelFormatError(self.path, None, "bad magic: not a GGUF file")
        self.version = self._scalar("<I", "version")
        if self.version not in (2, 3):
            raise ModelFormatError(self.path, None, f"GGUF version {self.version} (2 and 3 are read)")
        n_tensors = self._scalar("<Q", "tensor count")
        n_fields = self._scalar("<Q", "metadata count")
        # every entry takes at least 12 bytes: refuse absurd counts before looping over them
        if (n_tensors + n_fields) * 12 > size:
            raise ModelFormatError(self.path, None, f"{n_tensors} tensors and {n_fields} metadata entries "
                                                    f"cannot fit in {size} bytes (truncated?)")
        self.fields: dict[str, Any] = {}
        for i in range(n_fields):
            key = self._string(f"metadata key #{i}")
            self.fields[key] = self._value(self._scalar("<I", key), key)
        infos = []
        for i in range(n_tensors):
            name = self._string(f"tensor name #{i}")
            n_dims = self._scalar("<I", name)
            if not 1 <= n_dims <= _MAX_DIMS:
                raise ModelFormatError(self.path, name, f"{n_dims} dimensions")
            dims = [self._scalar("<Q", name) for _ in range(n_dims)]
            infos.append((name, dims, self._scalar("<I", name), self._scalar("<Q", name)))
        align = self.fields.get("general.alignment", 32)
        if not isinstance(align, int) or align < 1 or align & (align - 1):
            raise ModelFormatError(self.path, None, f"general.alignment {align!r} is not a power of two")
        start = (self._pos + align - 1) // align * align
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, dims, ggml_type, offset in infos:
            if name in self.tensors:
                raise ModelFormatError(self.path, name, "stored twice")
            self.tensors[name] = GGUFTensorInfo(name, ggml_type, tuple(reversed(dims)), start + offset)

    def tensor_bytes(self, info: GGUFTensorInfo, nbytes: int) -> np.ndarray:
        """The ``nbytes`` bytes of a tensor (the caller knows its type's size), bounds-checked."""
        if info.offset + nbytes > len(self.data):
            raise ModelFormatError(self.path, info.name, f"data [{info.offset}, {info.offset + nbytes}) "
                                                         f"outside the {len(self.data)}-byte file (truncated?)")
        return self.data[info.offset:info.offset + nbytes]

    # -- parsing helpers -------------------------------------------------------------------
    def _take(self, n: int, what: str) -> memoryview:
        if n > len(self._buf) - self._pos:
            raise ModelFormatError(self.path, None, f"truncated: {what} needs {n} bytes at offset {self._pos}")
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def _scalar(self, fmt: str, what: str):
        return struct.unpack(fmt, self._take(struct.calcsize(fmt), what))[0]

    def _string(self, what: str) -> str:
        n = self._scalar("<Q", what)
        try:
            return str(self._take(n, what), "utf-8")
        except UnicodeDecodeError:
            raise ModelFormatError(self.path, None, f"{what}: not UTF-8") from None

    def _value(self, vtype: int, key: str) -> Any:
        if vtype in _SCALARS:
            return self._scalar(_SCALARS[vtype], key)
        if vtype == _STRING:
            return self._string(key)
        if vtype != _ARRAY:
            raise ModelFormatError(self.path, None, f"metadata {key!r}: unknown value type {vtype}")
        etype, count = self._scalar("<I", key), self._scalar("<Q", key)
        if etype in _SCALARS:
            fmt = np.dtype(_SCALARS[etype])
            raw = self._take(count * fmt.itemsize, key)
            return np.frombuffer(raw, dtype=fmt).tolist()
        if etype == _STRING:
            if count * 8 > len(self._buf) - self._pos:
                raise ModelFormatError(self.path, None, f"metadata {key!r}: {count} strings cannot fit")
            return [self._string(key) for _ in range(count)]
        raise ModelFormatError(self.path, None, f"metadata {key!r}: arrays of type {etype} are not supported")
