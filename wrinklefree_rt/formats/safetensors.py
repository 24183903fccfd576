"""A numpy reader for safetensors files: memory-mapped, zero-copy where the dtype allows, and
strict about every byte it is handed (truncation, header JSON, dtypes, sizes, offsets).

Layout: u64 little-endian header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
data block; offsets are relative to the start of the data block.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError
from .binary import BinaryReader

__all__ = ["SafetensorsFile", "ShardedSafetensors", "open_safetensors_dir"]

# BF16 has no numpy dtype: stored as uint16 and widened to float32 on access (exact).
_DTYPES: dict[str, np.dtype] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
           "U8": np.dtype("u1"), "I8": np.dtype("i1")}
# The safetensors reference implementation refuses headers above 100 MB.
_MAX_HEADER = 100_000_000


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bf16 bits (uint16) -> float32, exactly: the bits become the high half of the float."""
    out = np.empty(raw.shape, np.uint32)
    np.left_shift(raw, 16, out=out, dtype=np.uint32)
    return out.view(np.float32)


class SafetensorsFile(Mapping):
    """One ``.safetensors`` file as a read-only mapping name -> numpy array."""

    def __init__(self, path: str | os.PathLike):
        r = self._r = BinaryReader(path)
        self.path = r.path
        if r.size < 8:
            raise ModelFormatError(self.path, None, f"truncated: {r.size} bytes, no header length")
        n = r.scalar("<Q", "header length")
        if n > _MAX_HEADER or 8 + n > r.size:
            raise ModelFormatError(self.path, None,
                                   f"truncated or corrupt: header length {n} but file has {r.size} bytes")
        try:
            header = json.loads(r.take(n, "header").tobytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFormatError(self.path, None, f"bad header JSON: {e}") from None
        if not isinstance(header, dict):
            raise ModelFormatError(self.path, None, "bad header JSON: not an object")
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = r.pos
        self._entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            self._entries[name] = self._check_entry(name, entry, r.size - r.pos)

    def _check_entry(self, name: str, entry: object, data_len: int):
        def bad(problem: str) -> ModelFormatError:
            return ModelFormatError(self.path, name, problem)

        if not isinstance(entry, dict):
            raise bad("header entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPES:
            raise bad(f"unknown dtype {dtype!r} (supported: {', '.join(_DTYPES)})")
        if (not isinstance(shape, list) or
                not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise bad(f"bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or
                not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise bad(f"bad data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise bad(f"data_offsets [{begin}, {end}] outside the data block of {data_len} bytes "
                      "(truncated file?)")
        expected = math.prod(shape) * _DTYPES[dtype].itemsize
        if end - begin != expected:
            raise bad(f"{end - begin} bytes for shape {tuple(shape)} {dtype}, expected {expected}")
        return dtype, tuple(shape), begin, end

    def dtype(self, name: str) -> str:
        return self._entries[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def __getitem__(self, name: str) -> np.ndarray:
        dtype, shape, begin, end = self._entries[name]
        raw = self._r.view(self._data_start + begin, end - begin, "data", name).view(_DTYPES[dtype]).reshape(shape)
        return bf16_to_f32(raw) if dtype == "BF16" else raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def source(self, name: str) -> str:
        return self.path


class ShardedSafetensors(Mapping):
    """The shards named by a ``model.safetensors.index.json`` as one mapping."""

    def __init__(self, index_path: str | os.PathLike):
        self.path = str(index_path)
        base = Path(index_path).parent
        try:
            index = json.loads(Path(index_path).read_bytes())
        except OSError as e:
            raise ModelFormatError(self.path, None, f"cannot read index: {e.strerror or e}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFormatError(self.path, None, f"bad index JSON: {e}") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ModelFormatError(self.path, None, "bad index JSON: no weight_map of name -> file")
        self._files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, SafetensorsFile] = {}
        for name, fname in weight_map.items():
            if Path(fname).name != fname:
                raise ModelFormatError(self.path, name, f"shard {fname!r} is not a file name in this directory")
            if fname not in self._files:
                self._files[fname] = SafetensorsFile(base / fname)
            shard = self._files[fname]
            if name not in shard:
                raise ModelFormatError(shard.path, name, f"missing tensor (listed in {self.path})")
            self._where[name] = shard

    def __getitem__(self, name: str) -> np.ndarray:
        return self._where[name][name]

    def dtype(self, name: str) -> str:
        return self._where[name].dtype(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].shape(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def source(self, name: str) -> str:
        shard = self._where.get(name)
        return shard.path if shard is not None else self.path


def open_safetensors_dir(model_dir: str | os.PathLike) -> SafetensorsFile | ShardedSafetensors:
    """``model.safetensors`` if present, else ``model.safetensors.index.json``."""
    model_dir = Path(model_dir)
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.is_file():
        return SafetensorsFile(single)
    if index.is_file():
        return ShardedSafetensors(index)
    raise ModelFormatError(str(model_dir), None,
                           "no model.safetensors or model.safetensors.index.json in this directory")
