"""The batched forward: rows of many sequences, chunked prefill, slot reuse and ISA paths all
give the same logits as the plain one-sequence computation."""
import copy
import gc
import weakref

import numpy as np
import pytest

from engine_helpers import fresh_sequence, hf_and_tensors, make_engine, prefill, random_ids
from wrinklefree_rt._core import kernel_names, quantize_lm_head_i8, ternary_pack
from wrinklefree_rt.formats.ternary import TernaryWeight

CFG = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=250,
           intermediate_size=160, num_hidden_layers=2)


@pytest.fixture(scope="module")
def model():
    _, cfg, tensors = hf_and_tensors(seed=3, **CFG)
    return cfg, tensors


def test_rows_of_three_sequences_in_one_step_equal_each_alone(model):
    cfg, tensors = model
    eng = make_engine(cfg, tensors)
    seqs = [random_ids(cfg, n, seed=n) for n in (5, 23, 40)]
    alone = [prefill(eng, fresh_sequence(eng, len(ids)), ids) for ids in seqs]

    # Interleave the rows of three new sequences in one step: a prefix of each, then the rest.
    slots = [fresh_sequence(eng, len(ids)) for ids in seqs]
    cut = [2, 11, 17]
    got = [[] for _ in seqs]
    for part in (0, 1):
        rows = []
        for j, ids in enumerate(seqs):
            span = range(0, cut[j]) if part == 0 else range(cut[j], len(ids))
            rows += [(j, p) for p in span]
        order = np.random.default_rng(part).permutation(len(rows))
        rows = [rows[i] for i in order]
        _, _, logits = eng.step([slots[j] for j, _ in rows], [p for _, p in rows],
                                [seqs[j][p] for j, p in rows], np.arange(len(rows)), out_mode=2)
        for (j, p), lg in zip(rows, logits):
            got[j].append((p, lg))
    for j in range(3):
        mine = np.stack([lg for _, lg in sorted(got[j], key=lambda t: t[0])])
        np.testing.assert_allclose(mine, alone[j], rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 32])
def test_chunked_prefill_equals_one_shot(model, chunk):
    cfg, tensors = model
    eng = make_engine(cfg, tensors)
    ids = random_ids(cfg, 45, seed=9)
    one = prefill(eng, fresh_sequence(eng, 45), ids)
    chunked = prefill(eng, fresh_sequence(eng, 45), ids, chunk=chunk)
    np.testing.assert_allclose(chunked, one, rtol=0, atol=1e-5)


def test_outputs_only_for_rows_asked(model):
    cfg, tensors = model
    eng = make_engine(cfg, tensors)
    ids = random_ids(cfg, 12, seed=4)
    full = prefill(eng, fresh_sequence(eng, 12), ids)
    slot = fresh_sequence(eng, 12)
    tokens, probs, logits = eng.step(np.full(12, slot), np.arange(12), ids, [11, 3], out_mode=[2, 0])
    assert tokens.shape == (2,) and probs.shape == (2,) and logits.shape == (1, cfg.vocab_size)
    np.testing.assert_allclose(logits[0], full[11], atol=1e-5)
    assert tokens[1] == full[3].argmax() and tokens[0] == full[11].argmax()
    _, _, none = eng.step([slot], [11], [ids[11]], [0])
    assert none is None


def test_decode_after_prefill_equals_prefill_of_everything(model):
    cfg, tensors = model
    eng = make_engine(cfg, tensors)
    ids = random_ids(cfg, 30, seed=5)
    full = prefill(eng, fresh_sequence(eng, 30), ids)
    slot = fresh_sequence(eng, 30)
    prefill(eng, slot, ids[:20])
    steps = np.stack([prefill(eng, slot, ids[p:p + 1], start=p)[0] for p in range(20, 30)])
    np.testing.assert_allclose(steps, full[20:], atol=1e-5)


@pytest.mark.parametrize("attn_block", [1, 32])
def test_reused_slot_equals_fresh_engine(model, attn_block):
    cfg, tensors = model
    eng = make_engine(cfg, tensors, max_slots=1, kv_pages=4)
    old = random_ids(cfg, 100, seed=1)
    slot = fresh_sequence(eng, 100, attn_block)
    prefill(eng, slot, old)
    eng.free_sequence(slot)
    assert eng.pages_free == eng.pages_total and eng.slots_free == 1

    ids = random_ids(cfg, 10, seed=2)
    slot = fresh_sequence(eng, 10, attn_block)
    reused = prefill(eng, slot, ids)
    fresh_eng = make_engine(cfg, tensors, max_slots=1, kv_pages=4)
    fresh = prefill(fresh_eng, fresh_sequence(fresh_eng, 10, attn_block), ids)
    assert np.array_equal(reused, fresh)


@pytest.mark.parametrize("lm_head", ["fp32", "int8", "q4"])
def test_every_isa_matches_generic(model, lm_head):
    cfg, tensors = model
    ids = random_ids(cfg, 40, seed=6)
    results = {}
    for isa in kernel_names():
        eng = make_engine(cfg, tensors, lm_head=lm_head, isa=isa)
        assert eng.isa == isa
        results[isa] = prefill(eng, fresh_sequence(eng, 40, attn_block=4), ids)
    default = make_engine(cfg, tensors, lm_head=lm_head)
    results["default"] = prefill(default, fresh_sequence(default, 40, attn_block=4), ids)
    for isa, logits in results.items():
        np.testing.assert_allclose(logits, results["generic"], rtol=0, atol=1e-4, err_msg=isa)


def test_thread_counts_agree(model):
    cfg, tensors = model
    ids = random_ids(cfg, 33, seed=8)
    outs = []
    for n in (1, 2, 3):
        eng = make_engine(cfg, tensors, num_threads=n)
        assert eng.num_threads == n
        outs.append(prefill(eng, fresh_sequence(eng, 33), ids))
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_prepacked_weights_and_int8_head_used_in_place_give_the_same_logits(model):
    cfg, tensors = model
    packed = {n: (TernaryWeight(ternary_pack(t.data), t.scale, t.shape) if isinstance(t, TernaryWeight) else t)
              for n, t in tensors.items()}
    head = tensors.get("lm_head", tensors["embed_tokens"])
    q, scales = quantize_lm_head_i8(head)
    assert np.abs(q.astype(np.float32) * scales[:, None] - head).max() <= scales.max() / 2 * 1.0001
    packed["lm_head_i8"], packed["lm_head_i8.scales"] = q, scales
    ids = random_ids(cfg, 20, seed=12)
    for lm_head in ("fp32", "int8"):
        a = make_engine(cfg, tensors, lm_head=lm_head)
        # The engine alone keeps the arrays it uses in place alive.
        b = make_engine(cfg, {n: copy.deepcopy(t) for n, t in packed.items()}, lm_head=lm_head)
        gc.collect()
        assert np.array_equal(prefill(a, fresh_sequence(a, 20), ids), prefill(b, fresh_sequence(b, 20), ids))


def test_engine_does_not_keep_what_it_copied(model):
    cfg, tensors = model
    mine = {n: copy.deepcopy(t) for n, t in tensors.items()}
    codes = weakref.ref(mine["layers.0.q_proj"].data)
    norm = weakref.ref(mine["layers.0.input_layernorm"])
    embed = weakref.ref(mine["embed_tokens"])
    eng = make_engine(cfg, mine)
    del mine
    gc.collect()
    assert codes() is None and norm() is None  # packed / copied at load
    assert embed() is not None                 # used in place
    assert eng.pages_total > 0


def test_tied_head_is_embed_tokens_whatever_lm_head_says():
    _, cfg, tensors = hf_and_tensors(seed=4, **dict(CFG, tie_word_embeddings=True))
    assert cfg.tie_word_embeddings and "lm_head" not in tensors
    ids = random_ids(cfg, 10, seed=3)
    a = make_engine(cfg, tensors)
    # transformers ties the head to the embeddings whatever lm_head tensor a checkpoint carries.
    b = make_engine(cfg, dict(tensors, lm_head=np.zeros_like(tensors["embed_tokens"])))
    assert np.array_equal(prefill(a, fresh_sequence(a, 10), ids), prefill(b, fresh_sequence(b, 10), ids))


@pytest.mark.parametrize("steps", [[range(0, 5), range(37, 44)],             # a gap between steps
                                   [[0, 1, 2, 20, 21, 22, 23]],              # a gap inside one step
                                   [range(0, 8), [3, 4, 30, 31], [2, 40]]])  # rewrites below the mark too
def test_reused_pages_read_as_zeros_in_a_gap(model, steps):
    # Keys up to a slot's high-water mark are visible; positions skipped below it (the raw API
    # allows that) read as zeros on pages a previous sequence filled, as on fresh ones.
    cfg, tensors = model
    eng = make_engine(cfg, tensors, max_slots=2, kv_pages=4)
    slot = fresh_sequence(eng, 100)
    prefill(eng, slot, random_ids(cfg, 100, seed=1))
    eng.free_sequence(slot)
    ids = random_ids(cfg, 64, seed=2)

    def run(e):
        s = fresh_sequence(e, 64)
        out = []
        for positions in steps:
            positions = np.asarray(list(positions))
            n = len(positions)
            out.append(e.step(np.full(n, s), positions, ids[positions], np.arange(n), out_mode=2)[2])
        return np.concatenate(out)

    fresh_eng = make_engine(cfg, tensors, max_slots=2, kv_pages=4)
    assert np.array_equal(run(eng), run(fresh_eng))
