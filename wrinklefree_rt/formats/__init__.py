"""Checkpoint formats. Each loader yields ``(ModelConfig, tensors)`` with the canonical names of
docs/architecture.md; ``load_model_dir`` picks the loader."""
from __future__ import annotations

import os
from pathlib import Path

from ..config import ModelConfig
from ..errors import ModelFormatError
from .canonical import Tensor
from .hf import load_hf_dir, tensors_from_state_dict
from .packed import PACKED_FILE, is_packed_file, load_packed
from .ternary import TernaryWeight, absmean_quantize

__all__ = ["load_model_dir", "TernaryWeight", "Tensor", "absmean_quantize", "tensors_from_state_dict"]


def load_model_dir(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Load a model from a HF directory (``config.json`` + safetensors, online or offline),
    a directory written by ``wrinklefree-rt convert`` (holding ``model.wfrt``), or a ``.wfrt``
    file. Raises ``ModelFormatError`` naming the file, tensor and problem."""
    p = Path(path)
    if p.is_dir():
        packed = p / PACKED_FILE
        return load_packed(packed) if packed.is_file() else load_hf_dir(p)
    if p.is_file():
        if is_packed_file(p):
            return load_packed(p)
        raise ModelFormatError(str(p), None, "not a model directory nor a wrinklefree_rt packed file")
    raise ModelFormatError(str(p), None, "no such file or directory")
