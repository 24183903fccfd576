"""WrinkleFree ``SGLBITNT`` ``.bin`` files: both writers' conventions, the same tensors and logits
as the HF checkpoint, and hostile files."""
from __future__ import annotations

import numpy as np
import pytest

from tiny_models import make_hf_model, pack_sgl_rows, save_hf_model, save_sglbin
from wrinklefree_rt.errors import ModelFormatError
from wrinklefree_rt.formats import TernaryWeight, load_model_dir
from wrinklefree_rt.formats.sglbin import load_sglbin, unpack_sgl_rows

# the layout packs inputs in blocks of 128
SHAPE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
Q0 = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def model():
    return make_hf_model(41, storage_dtype="bfloat16", **SHAPE)


@pytest.fixture(scope="module")
def hf(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    save_hf_model(model, path)
    return load_model_dir(path)


def test_unpack_inverts_pack():
    codes = np.random.default_rng(0).integers(-1, 2, (5, 384)).astype(np.int8)
    packed = pack_sgl_rows(codes)
    assert packed.shape == (5, 96)
    # byte j of a block: input j in bits 6-7
    assert packed[0, 0] >> 6 == codes[0, 0] + 1 and packed[0, 0] & 3 == codes[0, 96] + 1
    np.testing.assert_array_equal(unpack_sgl_rows(packed), codes)


@pytest.mark.parametrize("stored", [False, True], ids=["scale-omitted", "scale-stored"])
@pytest.mark.parametrize("float_dtype", ["float32", "bfloat16", "float16"])
def test_both_writers_load_the_hf_tensors(model, hf, tmp_path, stored, float_dtype):
    path = save_sglbin(model, tmp_path / "m.bin", unflagged_scale_stored=stored, float_dtype=float_dtype)
    cfg, t = load_model_dir(path)
    cfg_hf, t_hf = hf
    assert cfg.hidden_size == cfg_hf.hidden_size and cfg.eos_token_ids == cfg_hf.eos_token_ids
    assert t.keys() == t_hf.keys()
    for name, ref in t_hf.items():
        if isinstance(ref, TernaryWeight):
            np.testing.assert_array_equal(t[name].data, ref.data, err_msg=name)
            assert t[name].scale == ref.scale
        else:
            np.testing.assert_array_equal(t[name], ref, err_msg=name)  # bf16-exact values


def test_engine_logits_equal_hf_dir(model, tmp_path):
    from test_reference_logits import engine_logits
    save_hf_model(model, tmp_path / "hf")
    path = save_sglbin(model, tmp_path / "m.bin")
    prompt = np.random.default_rng(6).integers(0, model.config.vocab_size, 20)
    np.testing.assert_array_equal(engine_logits(path, prompt), engine_logits(tmp_path / "hf", prompt))


def _refused(path, tensor, problem):
    with pytest.raises(ModelFormatError, match=problem) as e:
        load_sglbin(path)
    assert e.value.file == str(path) and e.value.tensor == tensor


def _set(name, index, value):
    def mutate(records):
        next(r for r in records if r[0] == name)[index] = value
    return mutate


def test_unflagged_scale_undecidable_or_inconsistent(model, tmp_path):
    # the first unscaled tensor's size field matches neither reading
    first_float = "model.embed_tokens.weight"
    _refused(save_sglbin(model, tmp_path / "a.bin", mutate=_set(first_float, 5, 12345)),
             first_float, "cannot tell whether an unflagged scale is stored")
    # decided (scale omitted) by the first one, contradicted by a later one that stores it
    def extra(records):
        norm = next(i for i, r in enumerate(records) if r[0] == "model.norm.weight")
        records.insert(norm, ["model.extra", 1, [1], 0, 0.0, 4, b"\0\0\0\0"])
    path = save_sglbin(model, tmp_path / "b.bin", mutate=extra)
    raw = bytearray(path.read_bytes())
    # after the name: dtype, ndim, one dim, flag (4 bytes each), then the size field
    i = raw.index(b"model.extra") + len(b"model.extra") + 16
    raw[i:i] = b"\0\0\0\0"
    path.write_bytes(bytes(raw))
    _refused(path, "model.extra", "data size is not the 4 bytes")


@pytest.mark.parametrize("mutate, tensor, problem", [
    (_set(Q0, 4, float("nan")), Q0, "finite and positive"),
    (_set(Q0, 4, -1.0), Q0, "finite and positive"),
    (_set(Q0, 1, 1), Q0, "need"),                       # packed bytes claimed as f32
    (_set(Q0, 1, 9), Q0, "unknown dtype code 9"),
    (_set(Q0, 2, [128, 16]), Q0, "need"),
    (_set(Q0, 6, b"\xff" * 128 * 32), Q0, "code 3"),
    (lambda rs: rs.remove(next(r for r in rs if r[0] == Q0)), Q0, "missing tensor"),
    (_set("model.norm.weight", 2, [64]), "model.norm.weight", "need"),
])
def test_hostile_tensors(model, tmp_path, mutate, tensor, problem):
    _refused(save_sglbin(model, tmp_path / "m.bin", mutate=mutate), tensor, problem)


def test_hostile_headers(model, tmp_path):
    good = save_sglbin(model, tmp_path / "m.bin").read_bytes()
    cases = {"magic": (b"SGLBITNX" + good[8:], "bad magic"),
             "version": (good[:8] + b"\x02\0\0\0" + good[12:], "version 2"),
             "short": (good[:10], "truncated"),
             "cut": (good[:-7], "truncated"),
             "config": (good[:16] + b"}" + good[17:], "config is not valid JSON")}
    for what, (data, problem) in cases.items():
        (tmp_path / f"{what}.bin").write_bytes(data)
        with pytest.raises(ModelFormatError, match=problem):
            load_sglbin(tmp_path / f"{what}.bin")
