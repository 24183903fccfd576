"""Corrupted checkpoints of every format: whatever the damage, loading either succeeds or raises
ModelFormatError, never another exception (nor a crash)."""
from __future__ import annotations

import numpy as np
import pytest

from tiny_models import make_hf_model, save_gguf, save_hf_model, save_sglbin
from wrinklefree_rt.errors import ModelFormatError
from wrinklefree_rt.formats import load_model_dir

MUTATIONS = 80


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from wrinklefree_rt.convert import convert
    d = tmp_path_factory.mktemp("fuzz")
    m = make_hf_model(1, hidden_size=128, intermediate_size=256, num_attention_heads=4,
                      num_key_value_heads=2, num_hidden_layers=1, vocab_size=64)
    save_hf_model(m, d / "hf")
    return {"safetensors": (d / "hf" / "model.safetensors", d / "hf"),
            "wfrt": (convert(d / "hf", d / "m.wfrt"),) * 2,
            "gguf": (save_gguf(m, d / "m.gguf"),) * 2,
            "sglbin": (save_sglbin(m, d / "m.bin"),) * 2}


def mutate(data: bytearray, rng: np.random.Generator) -> bytearray:
    """1-3 random edits, mostly in the first 4 KiB where headers and metadata live."""
    for _ in range(rng.integers(1, 4)):
        if not data:
            break
        head = min(len(data), 4096)
        kind = rng.integers(0, 3)
        if kind == 0:
            data[rng.integers(0, head)] = rng.integers(0, 256)
        elif kind == 1:
            data = data[:rng.integers(0, len(data))]
        else:
            i = rng.integers(0, head)
            data[i:i] = rng.integers(0, 256, rng.integers(1, 9)).astype(np.uint8).tobytes()
    return data


@pytest.mark.parametrize("kind", ["safetensors", "wfrt", "gguf", "sglbin"])
def test_random_corruption_is_a_model_format_error(files, kind):
    file, target = files[kind]
    original = file.read_bytes()
    rng = np.random.default_rng(list(files).index(kind))
    refused = 0
    try:
        for _ in range(MUTATIONS):
            file.write_bytes(bytes(mutate(bytearray(original), rng)))
            try:
                load_model_dir(target)
            except ModelFormatError:
                refused += 1
    finally:
        file.write_bytes(original)
    assert refused > MUTATIONS // 2  # most edits of a header must be caught
