"""End to end: a saved HF directory (online / offline / sharded / bf16) or its converted ``.wfrt``
-> ``load_model_dir`` -> ``BitNetBatchEngine`` logits, held to transformers' ``BitNetForCausalLM``
(fp32, eager attention, online AutoBitLinear)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny_models import make_hf_model, save_hf_model
from wrinklefree_rt.formats import load_model_dir

from wrinklefree_rt import _core
from wrinklefree_rt.verify import prefill_logits

PROMPT_LEN = 24


def engine_logits(path, prompt: np.ndarray, lm_head: str = "fp32", isa: str = "",
                  i2s_layout: str = "x86") -> np.ndarray:
    """Full logits for every position of one causal prefill."""
    cfg, tensors = load_model_dir(path, i2s_layout)
    return prefill_logits(_core.BitNetBatchEngine(cfg, tensors, num_threads=1, max_slots=2, lm_head=lm_head, isa=isa),
                          prompt)


def hf_logits(model, prompt: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(prompt[None].astype(np.int64))).logits[0].float().numpy()


def prompt_for(model, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, model.config.vocab_size, PROMPT_LEN)


def assert_close_to_reference(got: np.ndarray, ref: np.ndarray):
    # Issue 2: max abs logit difference within 1e-3 of the logit scale.
    scale = np.abs(ref).max()
    err = np.abs(got - ref).max()
    assert err <= 1e-3 * scale, f"max |diff| {err:.3g} > 1e-3 * logit scale {scale:.3g}"


CONFIGS = {
    "gqa2_untied": {},
    "mha_tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "gqa4_hd32": dict(num_attention_heads=4, num_key_value_heads=1, head_dim=32),
    "gqa2_hd64_tied": dict(num_attention_heads=2, num_key_value_heads=1, head_dim=64, tie_word_embeddings=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_online_dir_matches_transformers(tmp_path, name):
    model = make_hf_model(5, **CONFIGS[name])
    save_hf_model(model, tmp_path)
    prompt = prompt_for(model)
    assert_close_to_reference(engine_logits(tmp_path, prompt), hf_logits(model, prompt))


@pytest.mark.parametrize("linear_class", ["autobitlinear", "bitlinear"])
def test_offline_dir_equals_online(tmp_path, linear_class):
    model = make_hf_model(6)
    save_hf_model(model, tmp_path / "on")
    save_hf_model(model, tmp_path / "off", mode="offline", linear_class=linear_class)
    prompt = prompt_for(model, 1)
    online = engine_logits(tmp_path / "on", prompt)
    offline = engine_logits(tmp_path / "off", prompt)
    # same codes; scales differ by an ulp (mean vs 1/(1/mean)), nothing else
    np.testing.assert_allclose(offline, online, rtol=0, atol=1e-5 * np.abs(online).max())
    assert_close_to_reference(offline, hf_logits(model, prompt))


def test_bf16_sharded_dir_matches_transformers(tmp_path):
    model = make_hf_model(7, storage_dtype="bfloat16", tie_word_embeddings=True)
    save_hf_model(model, tmp_path, dtype="bfloat16", shards=3)
    prompt = prompt_for(model, 2)
    assert_close_to_reference(engine_logits(tmp_path, prompt), hf_logits(model, prompt))


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("lm_head", ["fp32", "int8"])
def test_converted_file_gives_identical_logits(tmp_path, tied, lm_head):
    from wrinklefree_rt.convert import main
    model = make_hf_model(8, tie_word_embeddings=tied)
    save_hf_model(model, tmp_path / "hf", mode="offline")
    assert main(["-q", str(tmp_path / "hf"), str(tmp_path / "packed")]) == 0
    assert (tmp_path / "packed" / "model.wfrt").is_file()
    prompt = prompt_for(model, 3)
    want = engine_logits(tmp_path / "hf", prompt, lm_head)
    got = engine_logits(tmp_path / "packed", prompt, lm_head)
    # int8: the file's pre-quantized head must be bit-identical to the engine quantizing at load
    np.testing.assert_array_equal(got, want)

