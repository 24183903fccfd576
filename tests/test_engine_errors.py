"""Bad input is a typed error that names the problem and leaves the engine serving; a full pool,
no free slot and cancellation are their own error types."""
import threading

import msgspec
import numpy as np
import pytest

from engine_helpers import fresh_sequence, hf_and_tensors, make_engine, prefill, random_ids
from wrinklefree_rt._core import quantize_lm_head_i8
from wrinklefree_rt.errors import (KVCacheFullError, ModelFormatError, NoFreeSlotError,
                                   StepCancelledError, WrinklefreeError)
from wrinklefree_rt.formats.ternary import TernaryWeight

CFG = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=100,
           intermediate_size=96, num_hidden_layers=2)


@pytest.fixture(scope="module")
def model():
    _, cfg, tensors = hf_and_tensors(seed=5, **CFG)
    return cfg, tensors


@pytest.fixture
def eng(model):
    cfg, tensors = model
    return make_engine(cfg, tensors, max_slots=2, kv_pages=6, page_size=8)


V = CFG["vocab_size"]
BAD_STEPS = {
    "unknown slot": (dict(slots=[7]), "slot 7 is not allocated"),
    "negative slot": (dict(slots=[-1]), "slot -1 is not allocated"),
    "position beyond reservation": (dict(positions=[16]), "outside slot 0's reservation of 16"),
    "negative position": (dict(positions=[-3]), "position -3"),
    "token too large": (dict(token_ids=[V]), f"token {V} is outside the vocabulary"),
    "negative token": (dict(token_ids=[-1]), "token -1"),
    "out_row out of range": (dict(out_rows=[1]), "out_row 1 is not a row"),
    "bad out_mode": (dict(out_mode=[3]), "out_mode"),
    "exclude out of range": (dict(exclude=[V]), f"exclude {V}"),
    "negative temperature": (dict(out_mode=[1], temperature=[-1.0]), "temperature"),
    "nan temperature": (dict(out_mode=[1], temperature=[np.nan]), "temperature"),
    "negative top_k": (dict(out_mode=[1], top_k=[-2]), "top_k"),
    "top_p zero": (dict(out_mode=[1], top_p=[0.0]), "top_p"),
    "uniform one": (dict(out_mode=[1], uniform=[1.0]), "uniform"),
    "length mismatch": (dict(positions=[0, 1]), "positions must be a 1-D array of length 1"),
    "scalar slots": (dict(slots=0), "slots must be a 1-D array, got shape"),
    "float tokens": (dict(token_ids=[1.5]), "token_ids must be integers"),
    "token beyond int32": (dict(token_ids=[2 ** 40]), "outside int32"),
}


@pytest.mark.parametrize("case", list(BAD_STEPS))
def test_bad_step_is_value_error_and_kv_untouched(model, eng, case):
    cfg, tensors = model
    ids = random_ids(cfg, 12, seed=1)
    slot = fresh_sequence(eng, 16)
    assert slot == 0
    prefill(eng, slot, ids[:6])
    args = dict(slots=[slot], positions=[6], token_ids=[ids[6]], out_rows=[0])
    overrides, message = BAD_STEPS[case]
    args.update(overrides)
    with pytest.raises(ValueError, match=message):
        eng.step(**args)
    # The engine still serves, and the failed step wrote nothing.
    rest = prefill(eng, slot, ids[6:], start=6)
    ref_eng = make_engine(cfg, tensors)
    ref = prefill(ref_eng, fresh_sequence(ref_eng, 12), ids)
    assert np.array_equal(rest, ref[6:])


def test_failed_step_with_a_valid_row_leaves_that_row_unwritten(model, eng):
    cfg, tensors = model
    ids = random_ids(cfg, 8, seed=2)
    slot = fresh_sequence(eng, 16, attn_block=8)
    # Block-causal: a stray write at position 5 would be visible to position 4.
    with pytest.raises(ValueError):
        eng.step([slot, slot], [5, 99], [3, 3], [0])
    out = prefill(eng, slot, ids[:5])
    ref_eng = make_engine(cfg, tensors)
    ref = prefill(ref_eng, fresh_sequence(ref_eng, 16, attn_block=8), ids[:5])
    assert np.array_equal(out, ref)


def test_duplicate_rows_are_refused(eng):
    slot = fresh_sequence(eng, 8)
    with pytest.raises(ValueError, match="two rows write slot 0 position 3"):
        eng.step([slot, slot], [3, 3], [1, 2], [])


def test_freed_slot_is_unknown(eng):
    slot = fresh_sequence(eng, 8)
    eng.free_sequence(slot)
    with pytest.raises(ValueError, match="not allocated"):
        eng.step([slot], [0], [1], [0])
    with pytest.raises(ValueError, match="not allocated"):
        eng.free_sequence(slot)
    with pytest.raises(ValueError, match="not allocated"):
        eng.reserve(slot, 4)


def test_kv_full_and_no_free_slot_are_typed(eng):
    assert eng.pages_total == 6 and eng.page_size == 8
    a = fresh_sequence(eng, 40)              # 5 pages
    assert eng.pages_free == 1
    b = eng.alloc_sequence()
    assert not eng.can_reserve(b, 16)
    with pytest.raises(KVCacheFullError, match="needs 2 more pages"):
        eng.reserve(b, 16)
    assert eng.pages_free == 1               # a refused reservation takes nothing
    eng.reserve(b, 8)
    with pytest.raises(NoFreeSlotError):
        eng.alloc_sequence()
    assert issubclass(KVCacheFullError, WrinklefreeError) and issubclass(NoFreeSlotError, WrinklefreeError)
    eng.free_sequence(a)
    assert eng.can_reserve(b, 48) and eng.slots_free == 1
    eng.reserve(b, 48)
    assert eng.pages_free == 0


def test_reserve_beyond_max_positions_is_refused(model):
    cfg, tensors = model
    eng = make_engine(cfg, tensors, max_slots=1)
    slot = eng.alloc_sequence()
    assert not eng.can_reserve(slot, cfg.max_position_embeddings + 1)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        eng.reserve(slot, cfg.max_position_embeddings + 1)


def test_bad_engine_options(model):
    cfg, tensors = model
    with pytest.raises(ValueError, match="isa 'nope'"):
        make_engine(cfg, tensors, isa="nope")
    with pytest.raises(ValueError, match="lm_head must be 'int8', 'q4' or 'fp32', got 'fp8'"):
        make_engine(cfg, tensors, lm_head="fp8")
    with pytest.raises(ValueError, match="page_size"):
        make_engine(cfg, tensors, page_size=0)
    with pytest.raises(ValueError, match="attn_block"):
        make_engine(cfg, tensors).alloc_sequence(0)


def _replace(tensors, name, value):
    t = dict(tensors)
    if value is None:
        del t[name]
    else:
        t[name] = value
    return t


def test_bad_tensors_are_model_format_errors(model):
    cfg, tensors = model
    q = tensors["layers.1.q_proj"]
    cases = {
        "missing": ("layers.0.ffn_sub_norm", None, "missing"),
        "missing untied head": ("lm_head", None, "tie_word_embeddings is false"),
        "wrong shape": ("norm", np.ones(7, np.float32), r"expected shape \(64,\)"),
        "wrong dtype": ("embed_tokens", tensors["embed_tokens"].astype(np.int32), "dtype int32"),
        "nan scale": ("layers.1.q_proj", TernaryWeight(q.data, float("nan"), q.shape), "scale"),
        "bad code": ("layers.1.q_proj", TernaryWeight(np.full_like(q.data, 2), q.scale, q.shape), "not in"),
        "short packed": ("layers.1.q_proj", TernaryWeight(np.zeros(10, np.uint8), q.scale, q.shape), "bytes"),
        "nan norm": ("layers.0.attn_sub_norm", np.full(64, np.nan, np.float32), "non-finite"),
        "not a tensor": ("norm", [1.0] * 64, "neither a numpy array"),
        "extra layer": ("layers.2.input_layernorm", np.ones(64, np.float32), "not a tensor of this model"),
    }
    for case, (name, value, message) in cases.items():
        with pytest.raises(ModelFormatError, match=message) as info:
            make_engine(cfg, _replace(tensors, name, value))
        assert info.value.tensor == name, case


def test_q4_head_needs_finite_float_weights(model):
    cfg, tensors = model
    assert "lm_head" in tensors  # untied: the float head is its own tensor
    head = tensors["lm_head"]
    q, scales = quantize_lm_head_i8(head)
    only_i8 = dict(_replace(tensors, "lm_head", None), lm_head_i8=q, **{"lm_head_i8.scales": scales})
    make_engine(cfg, only_i8, lm_head="int8")  # the int8 head runs on it as it is
    for lm_head in ("q4", "fp32"):
        with pytest.raises(ModelFormatError, match=f"the {lm_head} head needs the float weights") as info:
            make_engine(cfg, only_i8, lm_head=lm_head)
        assert info.value.tensor == "lm_head"
    bad = head.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ModelFormatError, match="row 3, column 5 is not finite") as info:
        make_engine(cfg, _replace(tensors, "lm_head", bad), lm_head="q4")
    assert info.value.tensor == "lm_head"


def test_inconsistent_config_is_value_error(model):
    cfg, tensors = model
    with pytest.raises(ValueError, match="head_dim"):
        make_engine(msgspec.structs.replace(cfg, head_dim=8), tensors)


def test_cancel_stops_a_running_step(model):
    cfg, tensors = model
    eng = make_engine(cfg, tensors, max_slots=1)
    slot = fresh_sequence(eng, 256)
    ids = random_ids(cfg, 256, seed=3)
    errors = []

    def run():
        try:
            for _ in range(50):
                eng.step(np.full(256, slot), np.arange(256), ids, [255])
        except StepCancelledError as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    while t.is_alive():
        eng.cancel()
        t.join(0.001)
    assert len(errors) == 1
    # The engine serves the next step normally.
    tokens, _, _ = eng.step([slot], [0], [ids[0]], [0])
    assert tokens.shape == (1,)


def test_config_must_be_a_checked_model_config(model):
    # ModelConfig.validate() is the one check of config relations; the core takes nothing else.
    cfg, tensors = model
    with pytest.raises(TypeError, match="ModelConfig"):
        make_engine(msgspec.structs.asdict(cfg), tensors)
    with pytest.raises(ModelFormatError, match="num_key_value_heads"):
        make_engine(msgspec.structs.replace(cfg, num_key_value_heads=3), tensors)
