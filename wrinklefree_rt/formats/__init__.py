"""Checkpoint formats. Each loader yields ``(ModelConfig, tensors)`` with the canonical names of
docs/architecture.md; ``open_model`` / ``load_model_dir`` pick the loader."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ..config import ModelConfig, load_config
from ..errors import ModelFormatError
from .canonical import Tensor, canonical_names
from .gguf import GGUF_MAGIC, load_gguf
from .hf import iter_canonical, tensors_from_state_dict
from .packed import MAGIC as PACKED_MAGIC
from .packed import PACKED_FILE, load_packed
from .safetensors import open_safetensors_dir
from .sglbin import MAGIC as SGLBIN_MAGIC
from .sglbin import load_sglbin
from .ternary import TernaryWeight, absmean_quantize

__all__ = ["load_model_dir", "open_model", "single_file_format", "TernaryWeight", "Tensor",
           "absmean_quantize", "tensors_from_state_dict"]

# Single-file checkpoints, told apart by their first bytes.
_SINGLE_FILE_FORMATS = {"wfrt": (PACKED_MAGIC, load_packed), "gguf": (GGUF_MAGIC, load_gguf),
                        "sglbin": (SGLBIN_MAGIC, load_sglbin)}


def single_file_format(path: str | os.PathLike) -> str | None:
    """``"wfrt"``, ``"gguf"`` or ``"sglbin"`` for a file of that format, else None."""
    longest = max(len(magic) for magic, _ in _SINGLE_FILE_FORMATS.values())
    try:
        with open(path, "rb") as f:
            head = f.read(longest)
    except OSError:
        return None
    return next((name for name, (magic, _) in _SINGLE_FILE_FORMATS.items() if head.startswith(magic)), None)


def _model_file(p: Path) -> Path | None:
    """The single-file checkpoint a directory holds instead of HF safetensors, if any."""
    if (p / PACKED_FILE).is_file():
        return p / PACKED_FILE
    if (p / "config.json").is_file():
        return None
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) > 1:
        raise ModelFormatError(str(p), None, f"{len(ggufs)} .gguf files and no config.json: "
                                             "name the one to load")
    return ggufs[0] if ggufs else None


def open_model(path: str | os.PathLike, i2s_layout: str = "x86") -> tuple[ModelConfig, Iterable[tuple[str, Tensor]]]:
    """The config and the canonical ``(name, tensor)`` pairs of any checkpoint this runtime
    reads; for HF directories the pairs are produced lazily, one tensor at a time.
    ``i2s_layout`` names the block layout of bitnet.cpp I2_S tensors (``"x86"`` or ``"arm"``)."""
    p = Path(path)
    if p.is_dir():
        single = _model_file(p)
        if single is None:
            cfg = load_config(p)
            checkpoint = open_safetensors_dir(p)
            return cfg, iter_canonical(checkpoint, cfg, checkpoint.source)
        p = single
    if p.is_file():
        fmt = single_file_format(p)
        if fmt is None:
            raise ModelFormatError(str(p), None, "not a model directory, nor a .wfrt, GGUF or SGLBITNT file")
        loader = _SINGLE_FILE_FORMATS[fmt][1]
        cfg, tensors = load_gguf(p, i2s_layout) if loader is load_gguf else loader(p)
        return cfg, tensors.items()
    raise ModelFormatError(str(p), None, "no such file or directory")


def load_model_dir(path: str | os.PathLike, i2s_layout: str = "x86",
                   progress: Callable[[Iterable, int], Iterable] | None = None
                   ) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Load a model from a HF directory (``config.json`` + safetensors, online or offline), a
    directory written by ``wrinklefree-rt convert`` (holding ``model.wfrt``), a ``.wfrt`` file,
    a BitNet GGUF file (or a directory holding one, without config.json; bitnet.cpp's I2_S in
    the ``i2s_layout`` its writer used), or a WrinkleFree ``SGLBITNT`` ``.bin`` file. Raises
    ``ModelFormatError`` naming the file, tensor and problem. ``progress(pairs, total)`` may
    wrap the ``(name, tensor)`` pairs as they are read (a tqdm bar: an HF checkpoint is
    quantized here, one tensor at a time)."""
    cfg, tensors = open_model(path, i2s_layout)
    if progress is not None:
        tensors = progress(tensors, len(canonical_names(cfg)))
    return cfg, dict(tensors)
