"""Config parsing, the safetensors reader, HF online/offline checkpoints and every hostile-file
error path, at the tensor level (no engine needed)."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import load_file as torch_load_file
from transformers.integrations.bitnet import pack_weights, unpack_weights

from tiny_models import make_hf_model, quantization_config, save_hf_model
from wrinklefree_rt.config import ModelConfig, load_config, parse_config
from wrinklefree_rt.errors import ModelFormatError
from wrinklefree_rt.formats import TernaryWeight, absmean_quantize, load_model_dir
from wrinklefree_rt.formats.hf import hf_name, load_hf_dir
from wrinklefree_rt.formats.safetensors import SafetensorsFile
from wrinklefree_rt.formats.ternary import unpack_hf_rows

BASE = {"model_type": "bitnet", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


def cfg_with(**kw) -> dict:
    d = dict(BASE)
    d.update(kw)
    return d


# ---------------------------------------------------------------- config.json


def test_config_defaults_and_extras_tolerated():
    c = parse_config(json.dumps(cfg_with(torch_dtype="bfloat16", architectures=["BitNetForCausalLM"],
                                         some_future_key={"a": 1})))
    assert (c.head_dim, c.num_key_value_heads, c.hidden_act) == (16, 2, "relu2")
    assert c.rope_theta == 500000.0  # transformers' BitNetConfig.default_theta
    assert c.eos_token_ids == () and c.bos_token_id is None
    assert c.mask_token_id is None and c.bd_size is None and c.shift is None
    assert c.quantization is None and not c.tie_word_embeddings


@pytest.mark.parametrize("eos, want", [(7, (7,)), ([7, 9], (7, 9)), ([9, 9, 7], (9, 7)), (None, ())])
def test_config_eos_int_or_list(eos, want):
    assert parse_config(cfg_with(eos_token_id=eos)).eos_token_ids == want


def test_config_rope_theta_locations():
    assert parse_config(cfg_with(rope_theta=1234.0)).rope_theta == 1234.0
    nested = cfg_with(rope_parameters={"rope_type": "default", "rope_theta": 777.0})
    assert parse_config(nested).rope_theta == 777.0
    with pytest.raises(ModelFormatError, match=r"rope_parameters\.rope_type.*'llama3'"):
        parse_config(cfg_with(rope_parameters={"rope_type": "llama3", "rope_theta": 1.0}))
    with pytest.raises(ModelFormatError, match=r"rope_scaling\.rope_type"):
        parse_config(cfg_with(rope_scaling={"type": "linear", "factor": 2.0}))
    assert parse_config(cfg_with(rope_scaling={"type": "linear", "factor": 1.0})).rope_theta == 500000.0
    with pytest.raises(ModelFormatError, match="rope_theta"):
        parse_config(cfg_with(rope_theta=-1.0))


def test_config_head_dim_explicit_or_derived():
    assert parse_config(cfg_with(hidden_size=128, num_attention_heads=2, num_key_value_heads=1)).head_dim == 64
    assert parse_config(cfg_with(head_dim=16)).head_dim == 16
    with pytest.raises(ModelFormatError, match=r"\$\.head_dim.*!= hidden_size 64"):
        parse_config(cfg_with(head_dim=32))


def test_config_real_2b4t_shape():
    c = parse_config(cfg_with(vocab_size=128256, hidden_size=2560, intermediate_size=6912,
                              num_hidden_layers=30, num_attention_heads=20, num_key_value_heads=5,
                              max_position_embeddings=4096, bos_token_id=128000,
                              eos_token_id=[128001, 128009], tie_word_embeddings=True,
                              rope_theta=500000.0,
                              quantization_config={"quant_method": "bitnet", "linear_class": "bitlinear",
                                                   "quantization_mode": "offline"}))
    assert (c.head_dim, c.eos_token_ids, c.tie_word_embeddings) == (128, (128001, 128009), True)
    assert c.quantization.quantization_mode == "offline" and c.quantization.linear_class == "bitlinear"


def test_config_dlm_fields(tmp_path):
    c = parse_config(cfg_with(mask_token_id=299, bd_size=32, shift=True))
    assert (c.mask_token_id, c.bd_size, c.shift) == (299, 32, True)
    (tmp_path / "config.json").write_text(json.dumps(cfg_with(vocab_size=301)))
    (tmp_path / "dlm_config.json").write_text(json.dumps({"bd_size": 32, "mask_token": "|<MASK>|",
                                                          "mask_token_id": 300}))
    c = load_config(tmp_path)
    assert (c.mask_token_id, c.bd_size) == (300, 32)


@pytest.mark.parametrize("bad, field, msg", [
    ({"hidden_act": "silu"}, "hidden_act", "relu2"),
    ({"model_type": "llama"}, "model_type", "not 'bitnet'"),
    ({"num_key_value_heads": 3}, "num_key_value_heads", "does not divide"),
    ({"hidden_size": -4}, "hidden_size", "out of range"),
    ({"vocab_size": 1 << 40}, "vocab_size", "out of range"),
    ({"num_hidden_layers": 0}, "num_hidden_layers", "out of range"),
    ({"rms_norm_eps": 0.0}, "rms_norm_eps", "positive"),
    ({"eos_token_id": [5, 300]}, r"eos_token_id\[1\]", "outside the vocabulary"),
    ({"mask_token_id": -1}, "mask_token_id", "outside the vocabulary"),
    ({"attention_bias": True}, "attention_bias", "not supported"),
    ({"hidden_size": "64"}, "hidden_size", "Expected `int | null`, got `str`"),
    ({"eos_token_id": "x"}, "eos_token_id", "got `str`"),
    ({"quantization_config": {"quant_method": "bitnet", "linear_class": "nope"}},
     r"quantization_config\.linear_class", "Invalid enum value"),
    ({"quantization_config": {"quant_method": "bitnet", "use_rms_norm": True}},
     r"quantization_config\.use_rms_norm", "not supported"),
    ({"quantization_config": {"quant_method": "bitnet", "modules_to_not_convert": ["lm_head", "model.layers.0.mlp"]}},
     r"quantization_config\.modules_to_not_convert", "unquantized"),
])
def test_config_errors_name_the_field(bad, field, msg):
    with pytest.raises(ModelFormatError, match=rf"config\.json.*\$\.{field}.*{msg}") as e:
        parse_config(json.dumps(cfg_with(**bad)), "config.json")
    assert e.value.file == "config.json" and e.value.tensor is None


def test_config_missing_required_and_bad_json():
    d = cfg_with()
    del d["intermediate_size"]
    with pytest.raises(ModelFormatError, match=r"\$\.intermediate_size.*missing"):
        parse_config(d)
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        parse_config(b"{\"model_type\": ")
    with pytest.raises(ModelFormatError, match="cannot read config"):
        load_config("/nonexistent/dir")


def test_config_json_round_trip():
    c = parse_config(cfg_with(eos_token_id=[1, 2], mask_token_id=5, bd_size=8, shift=False,
                              quantization_config=quantization_config()))
    assert ModelConfig.from_json(c.to_json()) == c
    assert parse_config(json.dumps(c.to_hf_dict())) == c  # a config.json we write reads back equal


# ---------------------------------------------------------------- quantizer and HF packing


def test_absmean_matches_transformers_weightquant():
    g = torch.Generator().manual_seed(3)
    for shape in [(7, 13), (64, 160), (250, 64)]:
        w = torch.randn(shape, generator=g) * 0.05
        inv = 1.0 / w.abs().mean().clamp(min=1e-5)
        want = (w * inv).round().clamp(-1, 1)
        codes, s = absmean_quantize(w.numpy())
        assert codes.dtype == np.int8
        np.testing.assert_array_equal(codes, want.numpy().astype(np.int8))
        assert s == pytest.approx(float(1.0 / inv), rel=1e-6)
    codes, s = absmean_quantize(np.zeros((4, 4), np.float32))
    assert s == pytest.approx(1e-5) and not codes.any()


def test_absmean_rounds_half_to_even():
    # mean |w| = 1 exactly, so w * (1/s) = w: 0.5 -> 0, 1.5 -> 2 -> clamp 1, -0.5 -> 0
    w = np.array([[0.5, -0.5, 1.5, -1.5, 1.0, 1.0, 1.0, 1.0]], np.float32)
    codes, s = absmean_quantize(w)
    assert s == 1.0
    np.testing.assert_array_equal(codes, [[0, 0, 1, -1, 1, 1, 1, 1]])


@pytest.mark.parametrize("out_f", [4, 6, 8, 10, 12, 64, 160])  # 6, 10: HF pads the packed rows
def test_unpack_hf_rows_inverts_transformers_pack_weights(out_f):
    g = torch.Generator().manual_seed(out_f)
    q = torch.randint(-1, 2, (out_f, 24), generator=g, dtype=torch.int8)
    packed = pack_weights(q.clone())
    np.testing.assert_array_equal(unpack_hf_rows(packed.numpy(), out_f), q.numpy())
    # and agrees with transformers' own unpacker (which returns the padded rows too)
    np.testing.assert_array_equal(unpack_weights(packed, dtype=torch.float32).numpy().astype(np.int8)[:out_f],
                                  q.numpy())


# ---------------------------------------------------------------- safetensors reader


def test_safetensors_reader_matches_library(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1, 2, 255], np.uint8),
              "c": np.array([-3, 4], np.int8), "d": np.linspace(-2, 2, 5).astype(np.float16),
              "empty": np.zeros((0, 3), np.float32)}
    np_save_file(arrays, str(tmp_path / "x.safetensors"), metadata={"format": "np"})
    f = SafetensorsFile(tmp_path / "x.safetensors")
    assert set(f) == set(arrays) and f.metadata == {"format": "np"}
    for k, v in arrays.items():
        assert f[k].dtype == v.dtype and f[k].shape == v.shape
        np.testing.assert_array_equal(f[k], v)
    # bf16 is widened exactly
    t = torch.randn(5, 7).to(torch.bfloat16)
    from safetensors.torch import save_file
    save_file({"w": t}, str(tmp_path / "bf.safetensors"))
    got = SafetensorsFile(tmp_path / "bf.safetensors")["w"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, t.float().numpy())


def _write_raw(path, header: dict | bytes, data: bytes = b"", header_len: int | None = None):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h) if header_len is None else header_len) + h + data)
    return path


@pytest.mark.parametrize("header, data, header_len, problem", [
    (b"", b"", None, "bad header JSON"),
    (b"{not json", b"", None, "bad header JSON"),
    (b"[1, 2]", b"", None, "not an object"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "outside the data block"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "expected 12"),
    ({"w": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unknown dtype 'Q4_K'"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "bad shape"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, None, "outside the data block"),
    ({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, "bad data_offsets"),
    ({"w": 5}, b"", None, "not an object"),
    (b"{}", b"", 1 << 40, "header length"),
])
def test_safetensors_hostile_headers(tmp_path, header, data, header_len, problem):
    p = _write_raw(tmp_path / "m.safetensors", header, data, header_len)
    with pytest.raises(ModelFormatError, match=problem) as e:
        SafetensorsFile(p)
    assert e.value.file == str(p)


def test_safetensors_too_short(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ModelFormatError, match="truncated"):
        SafetensorsFile(tmp_path / "m.safetensors")


# ---------------------------------------------------------------- HF directories


@pytest.fixture(scope="module")
def model():
    return make_hf_model(11, storage_dtype="bfloat16")


def _assert_same_tensors(a: dict, b: dict, scale_rtol: float):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], TernaryWeight):
            np.testing.assert_array_equal(a[k].data, b[k].data, err_msg=k)
            assert a[k].shape == b[k].shape
            assert a[k].scale == pytest.approx(b[k].scale, rel=scale_rtol), k
        else:
            assert a[k].dtype == np.float32 and a[k].flags.c_contiguous
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_online_dir_in_every_float_dtype(tmp_path, model, dtype):
    save_hf_model(model, tmp_path, dtype=dtype)
    cfg, t = load_model_dir(tmp_path)
    assert cfg.quantization.quantization_mode == "online"
    sd = model.state_dict()
    for name, tensor in t.items():
        ref = sd[hf_name(name)].float().numpy()
        if isinstance(tensor, TernaryWeight):
            codes, s = absmean_quantize(ref)
            np.testing.assert_array_equal(tensor.data, codes)
            assert tensor.scale == s
        else:
            np.testing.assert_array_equal(tensor, ref)  # bf16-exact values survive any dtype


@pytest.mark.parametrize("linear_class", ["autobitlinear", "bitlinear"])
def test_offline_loads_the_same_tensors_as_online(tmp_path, model, linear_class):
    save_hf_model(model, tmp_path / "on")
    save_hf_model(model, tmp_path / "off", mode="offline", linear_class=linear_class)
    _, online = load_model_dir(tmp_path / "on")
    cfg, offline = load_model_dir(tmp_path / "off")
    assert cfg.quantization.linear_class == linear_class
    # fp32 scales: mean|W| vs 1/(1/mean|W|) differ by at most an ulp or two
    _assert_same_tensors(online, offline, scale_rtol=3e-7)


def test_sharded_index(tmp_path, model):
    save_hf_model(model, tmp_path / "one")
    save_hf_model(model, tmp_path / "sh", shards=3)
    assert not (tmp_path / "sh" / "model.safetensors").exists()
    _assert_same_tensors(load_model_dir(tmp_path / "one")[1], load_model_dir(tmp_path / "sh")[1], 0)


def test_tied_head_is_absent(tmp_path):
    m = make_hf_model(2, tie_word_embeddings=True)
    save_hf_model(m, tmp_path)
    cfg, t = load_model_dir(tmp_path)
    assert cfg.tie_word_embeddings and "lm_head" not in t and "embed_tokens" in t


# ---------------------------------------------------------------- hostile HF directories


def _rewrite(path, mutate):
    """Load model.safetensors as torch tensors, let `mutate` edit the dict, save it back."""
    from safetensors.torch import save_file
    f = path / "model.safetensors"
    d = torch_load_file(str(f))
    mutate(d)
    save_file(d, str(f))


def _expect_error(path, file_suffix, tensor, problem):
    with pytest.raises(ModelFormatError, match=problem) as e:
        load_hf_dir(path)
    assert e.value.file.endswith(file_suffix)
    assert e.value.tensor == tensor
    return e.value


Q0 = "model.layers.0.self_attn.q_proj.weight"


def test_missing_tensor(tmp_path, model):
    save_hf_model(model, tmp_path)
    _rewrite(tmp_path, lambda d: d.pop("model.layers.1.mlp.ffn_sub_norm.weight"))
    _expect_error(tmp_path, "model.safetensors", "model.layers.1.mlp.ffn_sub_norm.weight", "missing tensor")


def test_wrong_shape(tmp_path, model):
    save_hf_model(model, tmp_path)
    _rewrite(tmp_path, lambda d: d.__setitem__(Q0, d[Q0][:, :-1].contiguous()))
    _expect_error(tmp_path, "model.safetensors", Q0, r"shape \(64, 63\), expected \(64, 64\)")


def test_untied_model_without_lm_head(tmp_path, model):
    save_hf_model(model, tmp_path)
    _rewrite(tmp_path, lambda d: d.pop("lm_head.weight"))
    _expect_error(tmp_path, "model.safetensors", "lm_head.weight", "missing tensor")


def test_nan_weights_and_norms(tmp_path, model):
    save_hf_model(model, tmp_path)

    def poison(d):
        d[Q0][3, 5] = float("nan")
    _rewrite(tmp_path, poison)
    _expect_error(tmp_path, "model.safetensors", Q0, "NaN or inf")
    save_hf_model(model, tmp_path)
    _rewrite(tmp_path, lambda d: d["model.norm.weight"].__setitem__(0, float("inf")))
    _expect_error(tmp_path, "model.safetensors", "model.norm.weight", "NaN or inf")


def test_int_dtype_where_float_expected(tmp_path, model):
    save_hf_model(model, tmp_path)
    _rewrite(tmp_path, lambda d: d.__setitem__("model.norm.weight", torch.ones(64, dtype=torch.int8)))
    _expect_error(tmp_path, "model.safetensors", "model.norm.weight", "dtype int8")


@pytest.mark.parametrize("scale, problem", [(float("nan"), "finite and positive"),
                                            (float("inf"), "finite and positive"),
                                            (0.0, "finite and positive"), (-1.0, "finite and positive")])
def test_offline_bad_scale(tmp_path, model, scale, problem):
    save_hf_model(model, tmp_path, mode="offline")
    name = Q0.replace(".weight", ".weight_scale")
    _rewrite(tmp_path, lambda d: d.__setitem__(name, torch.tensor([scale])))
    _expect_error(tmp_path, "model.safetensors", name, problem)


def test_offline_missing_scale_bad_packing_and_dtype(tmp_path, model):
    name = Q0.replace(".weight", ".weight_scale")
    save_hf_model(model, tmp_path, mode="offline")
    _rewrite(tmp_path, lambda d: d.pop(name))
    _expect_error(tmp_path, "model.safetensors", name, "missing tensor")

    save_hf_model(model, tmp_path, mode="offline")
    _rewrite(tmp_path, lambda d: d.__setitem__(Q0, torch.full_like(d[Q0], 0xFF)))
    _expect_error(tmp_path, "model.safetensors", Q0, "code 3")

    save_hf_model(model, tmp_path, mode="offline")
    _rewrite(tmp_path, lambda d: d.__setitem__(Q0, torch.zeros((64, 64), dtype=torch.uint8)))
    _expect_error(tmp_path, "model.safetensors", Q0, r"expected packed \(16, 64\)")

    # an offline config over float weights: refused, not silently treated as ternary
    save_hf_model(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"]["quantization_mode"] = "offline"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    _expect_error(tmp_path, "model.safetensors", Q0, "packed uint8")

    # and packed bytes under an online config
    save_hf_model(model, tmp_path, mode="offline")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"]["quantization_mode"] = "online"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    _expect_error(tmp_path, "model.safetensors", Q0, "float master weights")


def test_truncated_safetensors_in_dir(tmp_path, model):
    save_hf_model(model, tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ModelFormatError, match="outside the data block") as e:
        load_model_dir(tmp_path)
    assert e.value.file == str(f) and e.value.tensor is not None


def test_sharded_index_errors(tmp_path, model):
    save_hf_model(model, tmp_path, shards=2)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())

    bad = dict(index, weight_map=dict(index["weight_map"], **{"extra.weight": "model-00002-of-00002.safetensors"}))
    index_path.write_text(json.dumps(bad))
    with pytest.raises(ModelFormatError, match="missing tensor") as e:
        load_model_dir(tmp_path)
    assert e.value.tensor == "extra.weight" and e.value.file.endswith("model-00002-of-00002.safetensors")

    gone = {k: v for k, v in index["weight_map"].items() if k != "model.norm.weight"}
    index_path.write_text(json.dumps(dict(index, weight_map=gone)))
    with pytest.raises(ModelFormatError, match="missing tensor") as e:
        load_model_dir(tmp_path)
    assert e.value.tensor == "model.norm.weight" and e.value.file == str(index_path)

    index_path.write_text(json.dumps(dict(index, weight_map=dict(index["weight_map"], x="../evil.safetensors"))))
    with pytest.raises(ModelFormatError, match="not a file name"):
        load_model_dir(tmp_path)

    index_path.write_text("{")
    with pytest.raises(ModelFormatError, match="bad index JSON"):
        load_model_dir(tmp_path)

    index_path.write_text(json.dumps(index))
    (tmp_path / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="cannot open"):
        load_model_dir(tmp_path)


def test_not_a_model(tmp_path):
    with pytest.raises(ModelFormatError, match="no such file"):
        load_model_dir(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps(cfg_with()))
    with pytest.raises(ModelFormatError, match="no model.safetensors"):
        load_model_dir(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"garbage")
    with pytest.raises(ModelFormatError, match="not a model directory, nor a .wfrt, GGUF or SGLBITNT file"):
        load_model_dir(tmp_path / "weights.bin")
