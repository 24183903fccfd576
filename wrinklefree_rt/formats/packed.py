"""The runtime's own packed format (``.wfrt``): written once by ``wrinklefree-rt convert``,
memory-mapped at load with zero-copy views, so a 2B model opens in milliseconds.

File layout (all integers little-endian)::

    0   8 bytes  magic b"WFRTPACK"
    8   u32      format version (FORMAT_VERSION)
    12  u32      ternary layout version of the kernels that packed it
    16  u64      header length L
    24  L bytes  header JSON: {"config": ModelConfig, "tensors": [entry...], "source": str}
    24+L u32     CRC-32 of bytes [0, 24 + L)
    ...          tensor data, each tensor at a 64-byte aligned absolute offset

An entry is ``{"name", "dtype", "shape", "offset", "nbytes", "scale"}`` with dtype ``f32``,
``i8`` or ``ternary`` (uint8 bytes in the kernels' layout for logical shape ``(out, in)``,
with the per-tensor scale). Besides the canonical tensors the file holds the LM head already
quantized to int8 rows (``lm_head_i8`` + ``lm_head_i8.scales``) by the engine's own quantizer
(``_core.quantize_lm_head_i8``), so the int8 head costs nothing at load either.
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from typing import Literal

import msgspec
import numpy as np

from ..config import ModelConfig
from ..errors import ModelFormatError
from .binary import BinaryReader
from .canonical import LINEAR_NAMES, Tensor, canonical_names
from .ternary import TernaryWeight

__all__ = ["MAGIC", "FORMAT_VERSION", "PACKED_FILE", "write_packed", "load_packed"]

MAGIC = b"WFRTPACK"
FORMAT_VERSION = 1
PACKED_FILE = "model.wfrt"  # the file name inside a converted model directory
_ALIGN = 64
_PREFIX = struct.Struct("<8sIIQ")
_CRC = struct.Struct("<I")
_Kind = Literal["f32", "i8", "ternary"]
_NP: dict[str, np.dtype] = {"f32": np.dtype("<f4"), "i8": np.dtype("i1"), "ternary": np.dtype("u1")}
_DERIVED = ("lm_head_i8", "lm_head_i8.scales")


class _Entry(msgspec.Struct, kw_only=True):
    name: str
    dtype: _Kind
    shape: list[int]
    offset: int
    nbytes: int
    scale: float | None = None


class _Header(msgspec.Struct, kw_only=True):
    config: ModelConfig
    tensors: list[_Entry]
    source: str = ""


def _core():
    from .. import _core as core  # the compiled extension; formats stay importable without it
    return core


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _plan(cfg: ModelConfig, core) -> dict[str, tuple[_Kind, tuple[int, ...], int]]:
    """Every tensor a file of ``cfg`` holds, in file order: name -> (dtype, shape, nbytes)."""
    plan: dict[str, tuple[_Kind, tuple[int, ...], int]] = {}
    for name, shape in canonical_names(cfg).items():
        if name.rsplit(".", 1)[-1] in LINEAR_NAMES:
            plan[name] = ("ternary", shape, core.ternary_packed_bytes(*shape))
        else:
            plan[name] = ("f32", shape, 4 * math.prod(shape))
    v, h = cfg.vocab_size, cfg.hidden_size
    plan["lm_head_i8"] = ("i8", (v, h), v * h)
    plan["lm_head_i8.scales"] = ("f32", (v,), 4 * v)
    return plan


def _entry_data(name: str, t: Tensor, want: tuple[str, tuple[int, ...], int], core) -> np.ndarray:
    """The bytes to store for ``t``, checked against the plan (``ValueError`` naming ``name``)."""
    kind, shape, nbytes = want
    if kind == "ternary":
        if not isinstance(t, TernaryWeight) or tuple(t.shape) != shape:
            raise ValueError(f"tensor {name!r}: expected a {shape} TernaryWeight, got {type(t).__name__} "
                             f"{getattr(t, 'shape', None)}")
        data = t.data if t.is_packed else core.ternary_pack(t.data)
    else:
        data = np.asarray(t)
        if data.dtype != np.float32 or data.shape != shape:
            raise ValueError(f"tensor {name!r}: expected float32 {shape}, got {data.dtype} {data.shape}")
    data = np.ascontiguousarray(data).reshape(-1)
    if data.nbytes != nbytes:
        raise ValueError(f"tensor {name!r}: {data.nbytes} bytes, expected {nbytes}")
    return data


def write_packed(path: str | os.PathLike, cfg: ModelConfig, tensors: Iterable[tuple[str, Tensor]],
                 source: str = "", progress: Callable[[str, int], None] | None = None) -> None:
    """Write a ``.wfrt`` file from canonical ``(name, tensor)`` pairs in any order (a dict's
    ``.items()`` or a loader's generator), one tensor in memory at a time: every offset follows
    from the config, so each tensor goes straight to its place and the header comes last.
    Ternary codes are packed with the kernels' own ``ternary_pack``; the int8 LM head is derived
    from the head. ``progress(name, bytes)`` is called after each tensor is written. Raises
    ``ValueError`` for a missing, unknown or misshaped tensor. The file appears atomically
    (written to ``path + '.tmp'`` then renamed)."""
    core = _core()
    plan = _plan(cfg, core)
    # Scales are known only once tensors arrive: a header with the longest float repr in every
    # scale bounds the real one, and the data starts after that bound.
    entries: dict[str, _Entry] = {}
    relative = {}
    offset = 0
    for name, (kind, shape, nbytes) in plan.items():
        entries[name] = _Entry(name=name, dtype=kind, shape=list(shape), offset=0, nbytes=nbytes,
                               scale=-2.2250738585072014e-308 if kind == "ternary" else None)
        relative[name] = offset
        offset = _align(offset + nbytes)

    def header() -> bytes:
        return msgspec.json.encode(_Header(config=cfg, tensors=list(entries.values()), source=source))

    # The offsets' digits lengthen the header that they follow: iterate to a fixpoint.
    data_start, need = 0, _ALIGN
    while need > data_start:
        data_start = need
        for name, e in entries.items():
            e.offset = data_start + relative[name]
        need = _align(_PREFIX.size + len(header()) + _CRC.size)

    tmp = f"{os.fspath(path)}.tmp"
    written: set[str] = set()
    try:
        with open(tmp, "wb") as f:
            def put(name: str, data: np.ndarray) -> None:
                f.seek(entries[name].offset)
                f.write(memoryview(data).cast("B"))  # type: ignore[arg-type]  # numpy declares __buffer__ for 3.12+ only
                written.add(name)
                if progress:
                    progress(name, data.nbytes)

            for name, t in tensors:
                if name in _DERIVED:
                    continue  # re-converting a .wfrt: the int8 head is derived again
                if name not in plan:
                    raise ValueError(f"tensor {name!r} is not a canonical tensor of this model")
                if name in written:
                    raise ValueError(f"tensor {name!r} given twice")
                data = _entry_data(name, t, plan[name], core)
                if isinstance(t, TernaryWeight):
                    entries[name].scale = float(t.scale)
                put(name, data)
                if name == "lm_head" or (name == "embed_tokens" and cfg.tie_word_embeddings):
                    q, scales = core.quantize_lm_head_i8(data.reshape(plan[name][1]))
                    put("lm_head_i8", q.reshape(-1))
                    put("lm_head_i8.scales", scales)
            missing = [n for n in plan if n not in written]
            if missing:
                raise ValueError(f"tensor {missing[0]!r} missing ({len(missing)} missing in all)")
            head = header()
            prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, core.ternary_layout_version(), len(head)) + head
            f.seek(0)
            f.write(prefix + _CRC.pack(zlib.crc32(prefix)))
            last = max(entries.values(), key=lambda e: e.offset)
            f.truncate(last.offset + last.nbytes)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_packed(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Open a ``.wfrt`` file: read and check the header, then map every tensor zero-copy.

    Refuses (``ModelFormatError``) a wrong magic, format version or kernel layout version, a
    header whose checksum fails, and any tensor that is missing, misshaped or outside the file.
    """
    r = BinaryReader(path)
    path, size = r.path, r.size
    if size < _PREFIX.size:
        raise ModelFormatError(path, None, f"truncated: {size} bytes, no header")
    prefix = r.take(_PREFIX.size, "prefix").tobytes()
    magic, version, layout, hlen = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ModelFormatError(path, None, f"bad magic {magic!r}: not a wrinklefree_rt packed file")
    if version != FORMAT_VERSION:
        raise ModelFormatError(path, None, f"format version {version}, this build reads {FORMAT_VERSION}")
    if _PREFIX.size + hlen + _CRC.size > size:
        raise ModelFormatError(path, None, f"truncated: header of {hlen} bytes, file of {size}")
    header = r.take(hlen, "header").tobytes()
    crc = r.scalar(_CRC.format, "header checksum")
    if zlib.crc32(prefix + header) != crc:
        raise ModelFormatError(path, None, "header checksum mismatch (corrupted file)")
    want_layout = _core().ternary_layout_version()
    if layout != want_layout:
        raise ModelFormatError(path, None, f"packed for kernel layout version {layout}, this build uses "
                                           f"{want_layout}: convert the checkpoint again")
    try:
        h = msgspec.json.decode(header, type=_Header)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise ModelFormatError(path, None, f"bad header: {e}") from None
    cfg = h.config
    cfg.validate(path)
    return cfg, _map_tensors(r, cfg, h.tensors, r.pos)


def _map_tensors(r: BinaryReader, cfg: ModelConfig, entries: list[_Entry], data_start: int) -> dict[str, Tensor]:
    path, size = r.path, r.size
    plan = _plan(cfg, _core())
    out: dict[str, Tensor] = {}
    for e in entries:
        def bad(problem: str) -> ModelFormatError:
            return ModelFormatError(path, e.name, problem)

        if e.name not in plan:
            raise bad("unexpected tensor (not part of this model)")
        if e.name in out:
            raise bad("stored twice")
        kind, shape, nbytes = plan[e.name]
        if tuple(e.shape) != shape:
            raise bad(f"shape {tuple(e.shape)}, expected {shape}")
        if e.dtype != kind:
            raise bad(f"dtype {e.dtype}, expected {kind}")
        if e.nbytes != nbytes:
            raise bad(f"{e.nbytes} bytes, expected {nbytes}")
        if e.offset % _ALIGN or e.offset < data_start or e.offset + nbytes > size:
            raise bad(f"data at [{e.offset}, {e.offset + nbytes}) is misaligned or outside the "
                      f"data of a {size}-byte file (truncated?)")
        view = r.view(e.offset, nbytes, "data", e.name).view(_NP[e.dtype])
        if kind == "ternary":
            if e.scale is None or not math.isfinite(e.scale) or e.scale <= 0:
                raise bad(f"scale {e.scale} must be finite and positive")
            out[e.name] = TernaryWeight(view, float(e.scale), shape)
        else:
            out[e.name] = view.reshape(shape)
    missing = [n for n in plan if n not in out]
    if missing:
        raise ModelFormatError(path, missing[0], f"missing tensor ({len(missing)} missing in all)")
    return out
