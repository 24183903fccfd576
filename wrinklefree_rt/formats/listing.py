"""What a checkpoint holds, as stored (``wrinklefree-rt inspect``): its format, config and tensor
table (name, stored dtype, shape, bytes), read from each format's own directory where it has one
(GGUF, safetensors) so nothing is dequantized; ``.wfrt`` and SGLBITNT files are opened as loaded."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ModelConfig, load_config
from .canonical import Tensor
from .ternary import TernaryWeight

__all__ = ["StoredTensor", "Listing", "describe"]


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class Listing:
    format: str
    path: str
    config: ModelConfig
    tensors: list[StoredTensor]

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def _ggml_type(type_id: int, n: int) -> tuple[str, int]:
    from .gguf import _FLOAT_TYPES
    from .i2s import I2S_TYPE, i2s_nbytes
    if type_id == I2S_TYPE:
        return "I2_S", i2s_nbytes(n)
    names = {0: "F32", 1: "F16", 30: "BF16"}
    if type_id in names:
        return names[type_id], n * _FLOAT_TYPES[type_id].itemsize
    try:
        import gguf
        qtype = gguf.GGMLQuantizationType(type_id)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        return qtype.name, n // block * size
    except (ImportError, ValueError, KeyError):
        return f"ggml type {type_id}", 0


def _gguf(path: Path) -> Listing:
    from .gguf import gguf_config
    from .gguf_file import GGUFFile
    f = GGUFFile(path)
    rows = []
    for info in f.tensors.values():
        dtype, nbytes = _ggml_type(info.ggml_type, math.prod(info.shape))
        f.tensor_bytes(info, nbytes)  # refuses a tensor past the end of the file (truncated)
        rows.append(StoredTensor(info.name, dtype, info.shape, nbytes))
    return Listing("gguf", str(path), gguf_config(f), rows)


def _safetensors(path: Path) -> Listing:
    from .safetensors import open_safetensors_dir
    cfg = load_config(path)
    checkpoint = open_safetensors_dir(path)
    rows = []
    for name in checkpoint:
        dtype, shape = checkpoint.dtype(name), checkpoint.shape(name)
        itemsize = {"F32": 4, "F16": 2, "BF16": 2}.get(dtype, 1)
        rows.append(StoredTensor(name, dtype, shape, math.prod(shape) * itemsize))
    mode = cfg.quantization.quantization_mode if cfg.quantization else "online"
    return Listing(f"hf-safetensors ({mode})", str(path), cfg, rows)


def _loaded(kind: str, path: Path, cfg: ModelConfig, tensors: dict[str, Tensor]) -> Listing:
    rows = []
    for name, t in tensors.items():
        if isinstance(t, TernaryWeight):
            rows.append(StoredTensor(name, "ternary packed" if t.is_packed else "ternary", t.shape, t.data.nbytes))
        else:
            a = np.asarray(t)
            rows.append(StoredTensor(name, str(a.dtype), a.shape, a.nbytes))
    return Listing(kind, str(path), cfg, rows)


def describe(path: str | os.PathLike) -> Listing:
    """The format, config and stored tensors of anything ``load_model_dir`` reads."""
    from . import _model_file, single_file_format
    from .packed import load_packed
    from .sglbin import load_sglbin

    p = Path(path)
    if p.is_dir():
        single = _model_file(p)
        if single is None:
            return _safetensors(p)
        p = single
    fmt = single_file_format(p) if p.is_file() else None
    if fmt == "gguf":
        return _gguf(p)
    if fmt == "wfrt":
        return _loaded("wfrt", p, *load_packed(p))
    if fmt == "sglbin":
        return _loaded("sglbin", p, *load_sglbin(p))
    from . import open_model
    open_model(p)  # raises the loader's own error for this path
    raise AssertionError("unreachable: open_model accepted a path describe() does not know")
