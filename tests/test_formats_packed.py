"""The runtime's own packed format (``.wfrt``) and ``wrinklefree-rt convert``: round trip,
zero-copy loading, and every way a file can be corrupt (load time is measured in bench/)."""
from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest

from tiny_models import make_hf_model, save_hf_model
from wrinklefree_rt.config import parse_config
from wrinklefree_rt.convert import convert, main
from wrinklefree_rt.errors import ModelFormatError
from wrinklefree_rt.formats import TernaryWeight, load_model_dir
from wrinklefree_rt.formats.canonical import LINEAR_NAMES, canonical_names
from wrinklefree_rt.formats.packed import load_packed, write_packed

from wrinklefree_rt import _core

PREFIX = struct.Struct("<8sIIQ")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    save_hf_model(make_hf_model(21), path, mode="offline")
    (path / "tokenizer.json").write_text("{}")
    return path


@pytest.fixture(scope="module")
def packed(hf_dir, tmp_path_factory):
    return convert(hf_dir, tmp_path_factory.mktemp("out") / "m.wfrt")


def test_round_trip_tensors(hf_dir, packed):
    cfg_hf, hf = load_model_dir(hf_dir)
    cfg, t = load_packed(packed)
    assert cfg == cfg_hf
    assert set(t) == set(hf) | {"lm_head_i8", "lm_head_i8.scales"}
    for name, ref in hf.items():
        if isinstance(ref, TernaryWeight):
            got = t[name]
            assert got.is_packed and got.scale == ref.scale and got.shape == ref.shape
            np.testing.assert_array_equal(_core.ternary_unpack(got.data, *got.shape), ref.data)
        else:
            np.testing.assert_array_equal(t[name], ref)
    q, s = _core.quantize_lm_head_i8(hf["lm_head"])
    np.testing.assert_array_equal(t["lm_head_i8"], q)
    np.testing.assert_array_equal(t["lm_head_i8.scales"], s)


def _assert_mapped(t, names):
    """Each tensor is a read-only view into the file's memory map: nothing was read or copied."""
    for name in names:
        arr = t[name].data if isinstance(t[name], TernaryWeight) else t[name]
        assert not arr.flags.owndata and not arr.flags.writeable, name
        assert isinstance(arr.base, np.memmap) or isinstance(arr.base.base, np.memmap), name


def test_load_is_zero_copy(packed):
    _, t = load_packed(packed)
    _assert_mapped(t, ("embed_tokens", "lm_head_i8", "layers.0.q_proj"))


def test_head_i8_rule_edge_cases():
    # the engine's rule the file relies on: per row max|w|/127 (1 for a zero row), rint half-even
    w = np.array([[0.0, 0.0, 0.0], [1.0, -0.5, 0.25], [-3.0, 1.5, 0.0]], np.float32)
    q, s = _core.quantize_lm_head_i8(w)
    np.testing.assert_array_equal(s, np.float32([1.0, 1 / 127, 3 / 127]))
    np.testing.assert_array_equal(q, [[0, 0, 0], [127, -64, 32], [-127, 64, 0]])  # rint: 63.5 -> 64


def test_convert_dir_copies_side_files_and_reports_progress(hf_dir, tmp_path):
    stream = io.StringIO()
    out = convert(hf_dir, tmp_path / "conv", progress_stream=stream)
    assert out == tmp_path / "conv" / "model.wfrt"
    assert (tmp_path / "conv" / "tokenizer.json").is_file() and (tmp_path / "conv" / "config.json").is_file()
    last = stream.getvalue().replace("\n", "\r").strip("\r").split("\r")[-1]
    assert last.startswith("convert: 100%") and " 27/27 " in last  # 2 layers x 11, embed, norm, head, int8 head + scales
    cfg, t = load_model_dir(tmp_path / "conv")  # the directory now loads from model.wfrt
    assert t["embed_tokens"].base is not None and "lm_head_i8" in t


def test_reconvert_and_refuse_foreign_tensors(packed, tmp_path):
    again = convert(packed, tmp_path / "again.wfrt")
    _, t0 = load_packed(packed)
    _, t1 = load_packed(again)
    assert t0.keys() == t1.keys()
    for name in t0:
        a, b = (t0[name].data, t1[name].data) if isinstance(t0[name], TernaryWeight) else (t0[name], t1[name])
        np.testing.assert_array_equal(a, b, err_msg=name)
    cfg, t = load_packed(packed)
    items = list(t.items())
    for bad, problem in [
        ([*items, ("layers.9.q_proj", t["layers.0.q_proj"])], "'layers.9.q_proj' is not a canonical tensor"),
        ([*items, items[0]], "'embed_tokens' given twice"),
        ([i for i in items if i[0] != "layers.1.up_proj"], "'layers.1.up_proj' missing"),
        ([(n, t["norm"][:-1] if n == "norm" else v) for n, v in items], r"'norm': expected float32 \(64,\)"),
        ([(n, t["layers.0.k_proj"] if n == "layers.0.q_proj" else v) for n, v in items],
         r"'layers.0.q_proj': expected a \(64, 64\) TernaryWeight"),
    ]:
        with pytest.raises(ValueError, match=problem):
            write_packed(tmp_path / "x.wfrt", cfg, bad)
        assert list(tmp_path.glob("x.wfrt*")) == []  # no partial file left behind


def test_convert_cli_errors(tmp_path, capsys):
    assert main(["-q", str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    assert "no such file or directory" in capsys.readouterr().err


def test_real_layer_shapes_load_zero_copy(tmp_path):
    """2B-4T layer shapes (4 of the 30 layers, small vocab; K = 6912 pads to the kernels' block):
    every tensor comes back mapped in place, so opening a 2B file reads only its header."""
    cfg = parse_config(dict(model_type="bitnet", vocab_size=4096, hidden_size=2560, intermediate_size=6912,
                            num_hidden_layers=4, num_attention_heads=20, num_key_value_heads=5,
                            tie_word_embeddings=True))
    path = tmp_path / "big.wfrt"
    write_packed(path, cfg, synthetic_tensors(cfg))
    _, t = load_packed(path)
    assert len(t) == len(canonical_names(cfg)) + 2
    _assert_mapped(t, list(t))


def synthetic_tensors(cfg):
    """Random canonical tensors, ternary ones already packed (as a converter would hand over)."""
    rng = np.random.default_rng(0)
    for name, shape in canonical_names(cfg).items():
        if name.rsplit(".", 1)[-1] in LINEAR_NAMES:
            nbytes = _core.ternary_packed_bytes(*shape)
            yield name, TernaryWeight(rng.integers(0, 256, nbytes, dtype=np.uint8) & 0x55, 0.02, shape)
        else:
            yield name, rng.standard_normal(shape, dtype=np.float32)


# ---------------------------------------------------------------- corrupt files


def read_file(path):
    raw = path.read_bytes()
    magic, version, layout, hlen = PREFIX.unpack_from(raw)
    header = json.loads(raw[PREFIX.size:PREFIX.size + hlen])
    blobs = [raw[e["offset"]:e["offset"] + e["nbytes"]] for e in header["tensors"]]
    return (magic, version, layout), header, blobs


def rebuild(src, dst, mutate=None, magic=None, version=None, layout=None):
    """Re-write ``src`` to ``dst`` by the documented layout (an independent writer), leaving 4 KiB
    of room after the header so that ``mutate(header)`` may change it freely."""
    (m0, v0, l0), header, blobs = read_file(src)
    hlen0 = len(json.dumps(header).encode())
    offset = (PREFIX.size + hlen0 + 4 + 4096 + 63) // 64 * 64
    placed = []
    for e, blob in zip(header["tensors"], blobs):
        e["offset"] = offset
        placed.append((offset, blob))
        offset = (offset + len(blob) + 63) // 64 * 64
    if mutate:
        mutate(header)
    h = json.dumps(header).encode()
    prefix = PREFIX.pack(magic or m0, version or v0, l0 if layout is None else layout, len(h)) + h
    data = bytearray(prefix + struct.pack("<I", zlib.crc32(prefix)))
    data.extend(b"\0" * (offset - len(data)))
    for off, blob in placed:
        data[off:off + len(blob)] = blob
    dst.write_bytes(bytes(data))
    return dst


def entry(header, name):
    return next(e for e in header["tensors"] if e["name"] == name)


def test_rebuilt_file_still_loads(packed, tmp_path):
    _, t0 = load_packed(packed)
    _, t1 = load_packed(rebuild(packed, tmp_path / "r.wfrt"))
    np.testing.assert_array_equal(t0["layers.1.down_proj"].data, t1["layers.1.down_proj"].data)


CORRUPTIONS = {
    "bad magic": (dict(magic=b"GGUF\0\0\0\0"), None, "bad magic"),
    "format version": (dict(version=99), None, "format version 99"),
    "layout version": (dict(layout=77), None, "kernel layout version 77"),
    "missing tensor": (dict(mutate=lambda h: h["tensors"].remove(entry(h, "layers.1.ffn_sub_norm"))),
                       "layers.1.ffn_sub_norm", "missing tensor"),
    "unknown tensor": (dict(mutate=lambda h: entry(h, "norm").update(name="nrom")), "nrom", "unexpected tensor"),
    "duplicate": (dict(mutate=lambda h: h["tensors"].append(dict(entry(h, "norm")))), "norm", "stored twice"),
    "wrong shape": (dict(mutate=lambda h: entry(h, "norm").update(shape=[32])), "norm", r"shape \(32,\)"),
    "wrong dtype": (dict(mutate=lambda h: entry(h, "norm").update(dtype="i8")), "norm", "dtype i8, expected f32"),
    "unknown dtype": (dict(mutate=lambda h: entry(h, "norm").update(dtype="q4")), None, "bad header"),
    "wrong nbytes": (dict(mutate=lambda h: entry(h, "layers.0.q_proj").update(nbytes=10)),
                     "layers.0.q_proj", "10 bytes, expected"),
    "misaligned": (dict(mutate=lambda h: entry(h, "norm").update(offset=entry(h, "norm")["offset"] + 4)),
                   "norm", "misaligned or outside"),
    "offset past end": (dict(mutate=lambda h: entry(h, "embed_tokens").update(offset=1 << 40)),
                        "embed_tokens", "misaligned or outside"),
    "offset in header": (dict(mutate=lambda h: entry(h, "norm").update(offset=0)), "norm", "misaligned or outside"),
    "negative scale": (dict(mutate=lambda h: entry(h, "layers.0.k_proj").update(scale=-0.5)),
                       "layers.0.k_proj", "finite and positive"),
    "zero scale": (dict(mutate=lambda h: entry(h, "layers.0.k_proj").update(scale=0.0)),
                   "layers.0.k_proj", "finite and positive"),
    "non-JSON scale": (dict(mutate=lambda h: entry(h, "layers.0.k_proj").update(scale=float("nan"))),
                       None, "bad header"),
    "no scale": (dict(mutate=lambda h: entry(h, "layers.0.k_proj").update(scale=None)),
                 "layers.0.k_proj", "finite and positive"),
    "bad config": (dict(mutate=lambda h: h["config"].update(hidden_act="silu")), None, "hidden_act"),
    "config type": (dict(mutate=lambda h: h["config"].update(hidden_size="64")), None, "bad header"),
}


@pytest.mark.parametrize("what", list(CORRUPTIONS))
def test_corrupt_file_refused(packed, tmp_path, what):
    kw, tensor, problem = CORRUPTIONS[what]
    bad = rebuild(packed, tmp_path / "bad.wfrt", **kw)
    with pytest.raises(ModelFormatError, match=problem) as e:
        load_packed(bad)
    assert e.value.file == str(bad) and e.value.tensor == tensor


def test_header_checksum_and_truncation(packed, tmp_path):
    raw = bytearray(packed.read_bytes())
    hlen = PREFIX.unpack_from(raw)[3]
    flipped = bytearray(raw)
    i = PREFIX.size + hlen // 2
    flipped[i] ^= 0x01
    (tmp_path / "crc.wfrt").write_bytes(bytes(flipped))
    with pytest.raises(ModelFormatError, match="checksum"):
        load_packed(tmp_path / "crc.wfrt")
    for keep, problem in [(5, "truncated"), (PREFIX.size + 10, "truncated"), (len(raw) - 1, "outside")]:
        (tmp_path / "t.wfrt").write_bytes(bytes(raw[:keep]))
        with pytest.raises(ModelFormatError, match=problem):
            load_packed(tmp_path / "t.wfrt")
