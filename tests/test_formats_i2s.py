"""bitnet.cpp I2_S GGUF files. The primary evidence is ../shared/fixtures/i2s-tiny: a file written
by bitnet.cpp's own ``llama-quantize`` from an HF checkpoint, with transformers' and bitnet.cpp's
logits beside it (its README.md documents how it was made). The ARM layout, which no fixture
holds, is built here by repacking that file's codes the way bitnet.cpp's NEON ``quantize_i2_s``
does."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from test_reference_logits import engine_logits
from wrinklefree_rt import Engine
from wrinklefree_rt.errors import ModelFormatError
from wrinklefree_rt.formats import TernaryWeight, load_model_dir
from wrinklefree_rt.formats.gguf_file import GGUFFile
from wrinklefree_rt.formats.i2s import I2S_TYPE, i2s_nbytes, pack_i2s, unpack_i2s_codes

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "i2s-tiny"
I2S = FIXTURE / "ggml-model-i2s-bitnet.gguf"
F32 = FIXTURE / "ggml-model-f32-bitnet.gguf"


@pytest.fixture(scope="module")
def expected():
    return json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture(scope="module")
def hf():
    return load_model_dir(FIXTURE / "hf")


def test_fixture_is_there_and_is_i2s():
    f = GGUFFile(I2S)  # CI checks ../shared out beside the clone: a missing fixture fails here
    types = {i.ggml_type for n, i in f.tensors.items() if n.startswith("blk.") and "norm" not in n}
    assert types == {I2S_TYPE} and len([n for n in f.tensors if "norm" not in n]) == 15
    assert f.fields["general.architecture"] == "bitnet-25"


def test_fixture_same_ternary_tensors_as_hf_and_f32(hf):
    cfg_hf, t_hf = hf
    cfg, t = load_model_dir(I2S)
    _, t_f32 = load_model_dir(F32)
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rope_theta", "tie_word_embeddings", "bos_token_id",
                  "eos_token_ids"):
        assert getattr(cfg, field) == getattr(cfg_hf, field), field
    assert t.keys() == t_hf.keys()
    n_ternary = 0
    for name, ref in t_hf.items():
        if isinstance(ref, TernaryWeight):
            n_ternary += 1
            # the codes are exactly transformers' online absmean quantization of the bf16 weights
            np.testing.assert_array_equal(t[name].data, ref.data, err_msg=name)
            np.testing.assert_array_equal(t[name].data, t_f32[name].data, err_msg=name)
            assert t[name].scale == t_f32[name].scale, name
            assert t[name].scale == pytest.approx(ref.scale, rel=3e-7), name  # f32 vs double mean
        elif name == "embed_tokens":  # F16 in the I2_S file (llama-quantize's choice for a tied head)
            np.testing.assert_allclose(t[name], ref, rtol=2**-11, atol=2**-25)  # f16 rounding, subnormals
        else:
            np.testing.assert_array_equal(t[name], ref, err_msg=name)
    assert n_ternary == 14


def test_fixture_logits_equal_transformers(expected):
    prompt = np.array(expected["prompt_ids"])
    ref = np.array(expected["last_logits_transformers"])
    for path in (I2S, F32):
        got = engine_logits(path, prompt)[-1]
        # expected.json rounds to 5 decimals; bitnet.cpp itself is 0.023 away (int8 activations)
        assert np.abs(got - ref).max() < 2e-5, path.name
        assert list(np.argsort(-got)[:5]) == list(np.argsort(-ref)[:5])


def test_fixture_greedy_tokens(expected):
    with Engine.from_pretrained(I2S, num_threads=1) as engine:  # the default int8 LM head
        out = engine.generate_batch([expected["prompt_ids"]], dict(max_tokens=16, ignore_eos=True))[0]
    # transformers and bitnet.cpp agree on 6 tokens, then part on near-ties (README.md)
    assert out.token_ids[:6] == expected["greedy_ids_transformers"][:6]
    assert out.token_ids == expected["greedy_ids_bitnet_cpp"]


# ------------------------------------------------------------------------------ the ARM layout

def repacked_fixture(tmp_path: Path, layout: str) -> Path:
    """The fixture with every I2_S payload rewritten in ``layout`` (same sizes, same offsets)."""
    f = GGUFFile(I2S)
    raw = bytearray(I2S.read_bytes())
    for info in f.tensors.values():
        if info.ggml_type != I2S_TYPE:
            continue
        n = int(np.prod(info.shape))
        codes = unpack_i2s_codes(f.data[info.offset:info.offset + n // 4], 32)
        scale = f.data[info.offset + n // 4:info.offset + n // 4 + 4].view("<f4")[0]
        raw[info.offset:info.offset + i2s_nbytes(n)] = pack_i2s(codes, scale, layout).tobytes()
    out = tmp_path / f"{layout}.gguf"
    out.write_bytes(bytes(raw))
    return out


def _arm_reference_pack(codes: np.ndarray) -> np.ndarray:
    """bitnet.cpp's NEON quantize_i2_s loop, transcribed literally (QK_I2_S 64, 16-byte blocks)."""
    q8 = codes.reshape(-1).astype(np.int64) + 1
    out = np.zeros(q8.size // 4, np.uint8)
    for i in range(q8.size // 64):
        for j in range(64):
            out[i * 16 + j % 16] |= q8[i * 64 + j] << (6 - 2 * (j // 16))
    return out


def test_pack_matches_bitnet_cpp_loops():
    codes = np.random.default_rng(0).integers(-1, 2, 4 * 128).astype(np.int8)
    np.testing.assert_array_equal(pack_i2s(codes, 1.0, "arm")[:-32], _arm_reference_pack(codes))
    x86 = np.zeros(codes.size // 4, np.uint8)
    for i in range(codes.size // 128):  # the x86 (ACT_PARALLEL) loop
        for j in range(128):
            x86[i * 32 + j % 32] |= (int(codes[i * 128 + j]) + 1) << (6 - 2 * (j // 32))
    np.testing.assert_array_equal(pack_i2s(codes, 1.0, "x86")[:-32], x86)
    assert pack_i2s(codes, 0.5)[-32:-28].view("<f4")[0] == 0.5


def test_arm_layout_loads_to_the_same_model(tmp_path, expected):
    arm = repacked_fixture(tmp_path, "arm")
    _, want = load_model_dir(I2S)
    _, got = load_model_dir(arm, i2s_layout="arm")
    for name, ref in want.items():
        if isinstance(ref, TernaryWeight):
            np.testing.assert_array_equal(got[name].data, ref.data, err_msg=name)
            assert got[name].scale == ref.scale
    prompt = np.array(expected["prompt_ids"])
    np.testing.assert_array_equal(engine_logits(arm, prompt, i2s_layout="arm"), engine_logits(I2S, prompt))


# -------------------------------------------------------------------------- refused I2_S files

def _gguf(path: Path, tensors: dict[str, tuple[int, tuple[int, ...], bytes]], hidden=128, inter=64,
          heads=2, arch="bitnet-b1.58") -> Path:
    """A minimal GGUF v3 (the ``gguf`` package cannot write type 36): metadata for a one-layer
    model and the given tensors ``name -> (ggml type, numpy shape, payload)``."""
    meta = {f"{arch}.embedding_length": hidden, f"{arch}.feed_forward_length": inter, f"{arch}.block_count": 1,
            f"{arch}.attention.head_count": heads, f"{arch}.vocab_size": 16}

    def string(s: str) -> bytes:
        b = s.encode()
        return struct.pack("<Q", len(b)) + b

    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta) + 1)
    out += string("general.architecture") + struct.pack("<I", 8) + string(arch)
    for k, v in meta.items():
        out += string(k) + struct.pack("<II", 4, v)
    offset, data = 0, b""
    for name, (gtype, shape, payload) in tensors.items():
        out += string(name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *reversed(shape))
        out += struct.pack("<IQ", gtype, offset)
        pad = (-len(payload)) % 32
        data += payload + b"\0" * pad
        offset += len(payload) + pad
    out += b"\0" * ((-len(out)) % 32)
    path.write_bytes(out + data)
    return path


def _one_layer(hidden=128, inter=64, layout="x86", ffn_down: bytes | None = None) -> dict:
    """Tensors of a one-layer model (head_dim 64), I2_S linears in ``layout``."""
    rng = np.random.default_rng(1)
    f32 = lambda *s: (0, s, rng.standard_normal(s).astype(np.float32).tobytes())  # noqa: E731
    t = {"token_embd.weight": f32(16, hidden), "output_norm.weight": f32(hidden)}
    for norm, n in (("attn_norm", hidden), ("ffn_norm", hidden), ("attn_sub_norm", hidden),
                    ("ffn_sub_norm", inter)):
        t[f"blk.0.{norm}.weight"] = f32(n)
    for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (hidden, hidden)), ("attn_v", (hidden, hidden)),
                        ("attn_output", (hidden, hidden)), ("ffn_gate", (inter, hidden)),
                        ("ffn_up", (inter, hidden)), ("ffn_down", (hidden, inter))):
        payload = ffn_down if name == "ffn_down" and ffn_down is not None else \
            pack_i2s(rng.integers(-1, 2, shape).astype(np.int8), 0.25, layout).tobytes()
        t[f"blk.0.{name}.weight"] = (I2S_TYPE, shape, payload)
    return t


def _refused(path, tensor, problem, **kw):
    with pytest.raises(ModelFormatError, match=problem) as e:
        load_model_dir(path, **kw)
    assert e.value.file == str(path) and e.value.tensor == tensor


def test_synthetic_file_loads(tmp_path):
    cfg, t = load_model_dir(_gguf(tmp_path / "ok.gguf", _one_layer()))
    assert t["layers.0.down_proj"].scale == 0.25 and t["layers.0.down_proj"].data.shape == (128, 64)
    assert cfg.hidden_size == 128 and cfg.tie_word_embeddings


def test_size_the_layout_cannot_hold_is_refused_naming_the_option(tmp_path):
    # hidden 64, FFN 65: the FFN's 64 x 65 = 4160 elements are whole 64-blocks (ARM), not 128-blocks (x86)
    path = _gguf(tmp_path / "odd.gguf", _one_layer(64, 65, "arm"), hidden=64, inter=65, heads=1)
    _refused(path, "blk.0.ffn_gate.weight", r"cannot be in the x86 layout.*i2s_layout='arm'")
    _, t = load_model_dir(path, i2s_layout="arm")
    assert t["layers.0.down_proj"].data.shape == (64, 65)


def test_bad_codes_scale_and_truncation_refused(tmp_path):
    good = pack_i2s(np.zeros((128, 64), np.int8), 1.0)
    three = good.copy()
    three[5] = 0xFF
    _refused(_gguf(tmp_path / "c.gguf", _one_layer(ffn_down=three.tobytes())), "blk.0.ffn_down.weight", "code 3")
    nan = good.copy()
    nan[-32:-28] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)
    nan[0] = 0b10_01_01_01  # one +1 code, so the scale matters
    _refused(_gguf(tmp_path / "n.gguf", _one_layer(ffn_down=nan.tobytes())), "blk.0.ffn_down.weight",
             "finite and positive")
    cut = _gguf(tmp_path / "t.gguf", _one_layer())
    cut.write_bytes(cut.read_bytes()[:-3000])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_model_dir(cut)
    with pytest.raises(ValueError, match="i2s_layout"):
        load_model_dir(cut, i2s_layout="x64")
