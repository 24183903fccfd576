"""Scheduler and DLM decoding against the slow reference decoders (tests/reference_dlm.py).

Every engine here uses the fp32 LM head, the exactness reference, except where a test says
otherwise. Each test runs under asyncio and trio.
"""
from __future__ import annotations

import itertools

import anyio
import numpy as np
import pytest
import torch
from reference_dlm import reference_ar, reference_dlm
from tiny_models import make_hf_model, save_hf_model

from wrinklefree_rt import DiffusionParams, Engine, SamplingParams

MASK = 249          # the tiny models' last token id serves as the mask token
EOS = {2, 3}        # tiny_models' eos_token_id


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return make_hf_model(seed=0)


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    return save_hf_model(model, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def engine(model_dir):
    return Engine.from_pretrained(model_dir, lm_head="fp32", max_num_seqs=64)


def prompt(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, MASK, (n,), generator=g).tolist()


def dlm(block, sub=None, threshold=0.9, shift=True, block_causal=False, **kw) -> DiffusionParams:
    return DiffusionParams(block_size=block, sub_block_size=sub or block, threshold=threshold,
                           mask_token_id=MASK, shift=shift,
                           attention="block" if block_causal else "causal", **kw)


_refs: dict = {}


def ref(model, p, params: SamplingParams, d: DiffusionParams | None):
    """The reference decoder's tokens (memoised: each test runs under two backends)."""
    key = (id(model), tuple(p), repr(params), repr(d))
    if key not in _refs:
        _refs[key] = _reference(model, p, params, d)
    return _refs[key]


def _reference(model, p, params: SamplingParams, d: DiffusionParams | None):
    stops = set(params.stop_token_ids) | (set() if params.ignore_eos else EOS)
    if d is None:
        return reference_ar(model, p, params.max_tokens, stops, MASK)
    return reference_dlm(model, p, block=d.block_size, sub_block=d.sub_block_size, threshold=d.threshold,
                         mask_id=MASK, shift=d.shift, block_causal=d.attention == "block",
                         max_tokens=params.max_tokens, stop_ids=stops, fuse_commit=d.fuse_commit)


async def run_all(engine, requests):
    """Run (prompt, params, diffusion) requests concurrently; final outputs in order."""
    results = [None] * len(requests)

    async def one(i, p, sp, d):
        results[i] = await engine.generate(p, sp, diffusion=d)

    async with anyio.create_task_group() as tg:
        for i, (p, sp, d) in enumerate(requests):
            tg.start_soon(one, i, p, sp, d)
    return results


def assert_idle(engine):
    s = engine.stats()
    assert (s.running, s.waiting, s.kv_pages_used) == (0, 0, 0)
    assert engine.core.slots_free == engine.config.max_num_seqs


# shift, block size, sub-block divisor, threshold, block-causal: the whole grid of the issue.
GRID = list(itertools.product([False, True], [4, 8], [1, 2], [0.0, 0.5, 1.5], [False, True]))


def grid_request(i, case):
    shift, block, div, threshold, block_causal = case
    p = prompt([5, 8, 11, 3][i % 4], seed=i)
    return p, SamplingParams(max_tokens=9 + i % 7), dlm(block, block // div, threshold, shift, block_causal)


@pytest.mark.anyio
async def test_dlm_grid_matches_reference(engine, model):
    requests = [grid_request(i, c) for i, c in enumerate(GRID)]
    async with engine:
        outs = await run_all(engine, requests)
        assert_idle(engine)
    for i, ((p, sp, d), out) in enumerate(zip(requests, outs)):
        assert out.token_ids == ref(model, p, sp, d), f"case {GRID[i]}"
        assert MASK not in out.token_ids
        assert out.finish_reason == ("stop" if out.token_ids[-1] in EOS else "length")
    # Every denoising step of every request shared forwards: far fewer than one per token.
    assert engine.stats().forwards < sum(len(o.token_ids) for o in outs) / 4


# The named approximation: shift with the commit fused into the next block's first step.
FUSED = list(itertools.product([4, 8], [0.5, 1.5], [False, True]))


@pytest.mark.anyio
async def test_fused_commit_matches_its_reference(engine, model):
    requests = [(prompt(5 + 3 * i, seed=60 + i), SamplingParams(max_tokens=14 + i),
                 dlm(block, block // 2, threshold, True, block_causal, fuse_commit=True))
                for i, (block, threshold, block_causal) in enumerate(FUSED)]
    async with engine:
        outs = await run_all(engine, requests)
    for (p, sp, d), out in zip(requests, outs):
        assert out.token_ids == ref(model, p, sp, d), d


@pytest.mark.anyio
async def test_ar_greedy_matches_reference(engine, model):
    requests = [(prompt(n, seed=n), SamplingParams(max_tokens=12, ignore_eos=True), None) for n in (1, 4, 17)]
    async with engine:
        outs = await run_all(engine, requests)
    for (p, sp, _), out in zip(requests, outs):
        assert out.token_ids == ref(model, p, sp, None)
        assert out.metrics.forwards == 12 and out.metrics.tokens_per_forward == 1.0


@pytest.mark.anyio
async def test_max_tokens_exact(engine, model):
    requests = [(prompt(6, seed=n), SamplingParams(max_tokens=n, ignore_eos=True), d)
                for n in (1, 2, 7, 8, 9, 13) for d in (None, dlm(8, 4, 0.5), dlm(4, block_causal=True, shift=False))]
    async with engine:
        outs = await run_all(engine, requests)
    for (p, sp, d), out in zip(requests, outs):
        assert len(out.token_ids) == sp.max_tokens and out.finish_reason == "length"
        assert out.token_ids == ref(model, p, sp, d)


def _first_fresh_token(tokens, prompt_len, block):
    """An index k >= 2 of a token that did not occur before, at a position strictly inside a
    block (neither its first nor its last position)."""
    return next(k for k in range(2, len(tokens))
                if tokens[k] not in tokens[:k] and (prompt_len + k) % block not in (0, block - 1))


@pytest.mark.anyio
@pytest.mark.parametrize("d", [None, dlm(8, 4, 0.5), dlm(8, 8, 0.3, block_causal=True)],
                         ids=["ar", "dlm-causal", "dlm-block"])
async def test_stop_token_inside_block(engine, model, d):
    p = prompt(7, seed=3)
    async with engine:
        base = await engine.generate(p, SamplingParams(max_tokens=30, ignore_eos=True), diffusion=d)
        k = _first_fresh_token(base.token_ids, len(p), 8)
        stop = base.token_ids[k]
        sp = SamplingParams(max_tokens=30, ignore_eos=True, stop_token_ids=[stop])
        out = await engine.generate(p, sp, diffusion=d)
    assert len(p) + k > 8  # inside a block after the first
    assert out.token_ids == base.token_ids[:k + 1] == ref(model, p, sp, d)
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)
    assert out.metrics.forwards <= base.metrics.forwards


@pytest.fixture(scope="module")
def mask_loving_engine(tmp_path_factory):
    """A model that would predict the mask token at most positions (as a non-DLM-trained
    checkpoint did, p=0.98): the decoder must never emit it."""
    torch.set_num_threads(1)
    m = make_hf_model(seed=1)
    x = torch.randint(4, 240, (8, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mu = m.model(x).last_hidden_state.reshape(-1, m.config.hidden_size).mean(0)
        m.lm_head.weight[MASK] = mu / mu.norm() ** 2 * 80
        assert (m(x).logits.argmax(-1) == MASK).float().mean() > 0.5
    d = save_hf_model(m, tmp_path_factory.mktemp("maskloving"))
    # The engine-wide mask id also keeps AR requests from choosing it.
    return m, Engine.from_pretrained(d, lm_head="fp32", diffusion={"mask_token_id": MASK})


@pytest.mark.anyio
async def test_mask_token_never_emitted(mask_loving_engine):
    m, engine = mask_loving_engine
    requests = [(prompt(5, seed=s), SamplingParams(max_tokens=16, ignore_eos=True), d)
                for s, d in enumerate([None, dlm(8, 4, 0.0), dlm(4, 4, 0.9, shift=False, block_causal=True)])]
    requests.append((prompt(5, seed=9), SamplingParams(max_tokens=16, ignore_eos=True, temperature=1.0, seed=1), None))
    async with engine:
        outs = await run_all(engine, requests)
    for (p, sp, d), out in zip(requests, outs):
        assert MASK not in out.token_ids and len(out.token_ids) == 16
        if sp.temperature == 0:
            assert out.token_ids == ref(m, p, sp, d)


def mixed_requests():
    """16 requests: AR greedy, AR sampled (seeded), causal DLM with shift, block-causal DLM
    without shift; different prompt lengths, block sizes, thresholds and lengths."""
    reqs = []
    for i in range(16):
        p = prompt(3 + 5 * i % 37, seed=100 + i)
        n = 6 + 3 * i % 17
        kind = i % 4
        if kind == 0:
            reqs.append((p, SamplingParams(max_tokens=n), None))
        elif kind == 1:
            reqs.append((p, SamplingParams(max_tokens=n, temperature=0.8, top_k=40, top_p=0.9, seed=i), None))
        elif kind == 2:
            reqs.append((p, SamplingParams(max_tokens=n), dlm(8, 4, 0.5 if i % 8 == 2 else 1.5)))
        else:
            reqs.append((p, SamplingParams(max_tokens=n), dlm(4, 2, 0.7, shift=False, block_causal=True)))
    return reqs


@pytest.fixture(scope="module")
def int8_engine(model_dir):
    return Engine.from_pretrained(model_dir, max_num_seqs=16)  # default int8 LM head


_alone: dict = {}


@pytest.mark.anyio
async def test_sixteen_concurrent_equal_alone(int8_engine):
    engine = int8_engine
    reqs = mixed_requests()
    async with engine:
        if not _alone:
            for i, (p, sp, d) in enumerate(reqs):
                out = await engine.generate(p, sp, diffusion=d)
                _alone[i] = (out.token_ids, out.metrics.forwards)
        before = engine.stats().forwards
        outs = await run_all(engine, reqs)
        shared = engine.stats().forwards - before
        assert_idle(engine)
    for i, out in enumerate(outs):
        assert out.token_ids == _alone[i][0], f"request {i}"
    alone_forwards = sum(f for _, f in _alone.values())
    assert shared < alone_forwards / 4, (shared, alone_forwards)


async def wait_until(pred, timeout=20.0):
    with anyio.fail_after(timeout):
        while not pred():
            await anyio.sleep(0.0005)


def find_seq(engine, request_id):
    return next((s for s in engine._scheduler.running if s.request_id == request_id), None)


@pytest.fixture(scope="module")
def small_budget_engine(model_dir):
    # 8 rows per forward: a 120-token prompt takes 15 prefill chunks.
    return Engine.from_pretrained(model_dir, lm_head="fp32", max_num_seqs=8, max_num_batched_tokens=8)


@pytest.mark.anyio
async def test_cancel_mid_prefill_and_mid_block(small_budget_engine, model):
    engine = small_budget_engine
    others = [(prompt(9, seed=7), SamplingParams(max_tokens=20, ignore_eos=True), dlm(4, 2, 1.5)),
              (prompt(4, seed=8), SamplingParams(max_tokens=25, ignore_eos=True), None)]
    results = {}

    async def prefill_victim(scope):
        with scope:
            async for _ in engine.generate_async(prompt(120, seed=1), SamplingParams(max_tokens=8),
                                                 request_id="prefill"):
                pass
        results["prefill"] = "cancelled" if scope.cancelled_caught else "finished"

    async def block_victim():
        async with engine.generate_async(prompt(6, seed=2), SamplingParams(max_tokens=64, ignore_eos=True),
                                         diffusion=dlm(8, 4, 1.5), request_id="block") as stream:
            async for out in stream:
                seq = find_seq(engine, "block")
                # First block streamed; stop while the next one is partly unmasked.
                await wait_until(lambda: sum(t == MASK for t in seq.tokens[seq.block_start:]) in range(1, 7))
                results["block"] = len(out.token_ids)
                break

    async with engine:
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()
            tg.start_soon(prefill_victim, scope)
            tg.start_soon(block_victim)
            tg.start_soon(_collect, engine, others, results)
            await wait_until(lambda: (s := find_seq(engine, "prefill")) is not None and 16 <= s.kv_valid < 100)
            scope.cancel()
        await wait_until(lambda: engine.stats().running == 0)
        assert_idle(engine)
    assert results["prefill"] == "cancelled"
    assert (results["block"] - 2) % 8 == 0  # whole blocks only (the first holds 2 new positions)
    for (p, sp, d), out in zip(others, results["others"]):
        assert out.token_ids == ref(model, p, sp, d)


async def _collect(engine, requests, results):
    results["others"] = await run_all(engine, requests)


@pytest.mark.anyio
async def test_failing_request_fails_alone(engine, model, monkeypatch):
    good = [(prompt(5, seed=s), SamplingParams(max_tokens=10, ignore_eos=True), d)
            for s, d in enumerate([None, dlm(4, 2, 0.5)])]
    make = engine._intake.make_sequence

    def poisoned(request, ids):
        seq = make(request, ids)
        if request.request_id == "bad":  # corrupt its state the way a bug would: a token outside the vocabulary
            seq.tokens[0] = 10_000
        return seq

    monkeypatch.setattr(engine._intake, "make_sequence", poisoned)
    results = {}

    async def bad():
        try:
            await engine.generate(prompt(5, seed=5), SamplingParams(max_tokens=10), request_id="bad")
        except ValueError as e:
            results["bad"] = e

    async with engine:
        async with anyio.create_task_group() as tg:
            tg.start_soon(bad)
            tg.start_soon(_collect, engine, good, results)
        assert_idle(engine)
    assert "10000" in str(results["bad"])
    for (p, sp, d), out in zip(good, results["others"]):
        assert out.token_ids == ref(model, p, sp, d)


@pytest.mark.anyio
async def test_decoding_request_gone_bad_fails_alone(engine, model, monkeypatch):
    # The core refuses the rows of one decoding AR request from its fifth token on, in steps
    # it shares with other decoders (streaming and final-only): the step fails, each request
    # reruns alone, and only that one ends, with the core's error; the others are exact.
    good = [(prompt(5 + s, seed=s), SamplingParams(max_tokens=12, ignore_eos=True), None) for s in range(3)]
    make = engine._intake.make_sequence
    bad_seq = []

    def recording(request, ids):
        seq = make(request, ids)
        if request.request_id == "bad":
            bad_seq.append(seq)
        return seq

    class RefusingCore:
        def __init__(self, core):
            self._core = core

        def step(self, slots, positions, *args, **kwargs):
            bad = bad_seq[0]
            if np.any((np.asarray(slots) == bad.slot_id) & (np.asarray(positions) >= bad.prompt_len + 3)):
                raise ValueError("row refused: slot poisoned")
            return self._core.step(slots, positions, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._core, name)

    monkeypatch.setattr(engine._intake, "make_sequence", recording)
    monkeypatch.setattr(engine._scheduler, "core", RefusingCore(engine._scheduler.core))
    results = {}

    async def bad():
        try:
            await engine.generate(prompt(6, seed=9), SamplingParams(max_tokens=12, ignore_eos=True),
                                  request_id="bad")
        except ValueError as e:
            results["bad"] = e

    async def streamed():
        p, sp, _ = good[0]
        async for out in engine.generate_async(p, sp):
            results["streamed"] = out

    async with engine:
        async with anyio.create_task_group() as tg:
            tg.start_soon(bad)
            tg.start_soon(streamed)
            tg.start_soon(_collect, engine, good[1:], results)
        assert_idle(engine)
    assert "poisoned" in str(results["bad"]) and len(bad_seq[0].output_ids) == 4
    assert results["streamed"].token_ids == ref(model, *good[0])
    for (p, sp, d), out in zip(good[1:], results["others"]):
        assert out.token_ids == ref(model, p, sp, d)


@pytest.mark.anyio
async def test_requests_wait_for_slots_and_pages(model_dir, model):
    # 2 slots and 4 pages of 32 positions: each request below needs 2 pages (up to 64 positions),
    # so at most two run at once and the rest wait (FCFS) instead of failing.
    engine = Engine.from_pretrained(model_dir, lm_head="fp32", max_num_seqs=2, kv_cache_tokens=128)
    reqs = [(prompt(10 + i, seed=50 + i), SamplingParams(max_tokens=30, ignore_eos=True),
             dlm(8, 4, 0.5) if i % 2 else None) for i in range(6)]
    peak = {"running": 0, "waiting": 0}
    results = {}

    async def watch():
        while "others" not in results:
            s = engine.stats()
            peak["running"] = max(peak["running"], s.running)
            peak["waiting"] = max(peak["waiting"], s.waiting)
            assert s.kv_pages_used <= 4
            await anyio.sleep(0.0005)

    async with engine:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await _collect(engine, reqs, results)
        assert_idle(engine)
    assert peak["running"] == 2 and peak["waiting"] >= 3
    for (p, sp, d), out in zip(reqs, results["others"]):
        assert out.token_ids == ref(model, p, sp, d)


@pytest.mark.anyio
async def test_random_cancellations_leave_no_trace(small_budget_engine, model):
    """Requests cancelled at random moments (queued, prefilling, decoding, between blocks) return
    every slot and page, and the requests left alone produce their reference outputs."""
    engine = small_budget_engine
    rng = torch.Generator().manual_seed(7)
    reqs = [(prompt(int(torch.randint(1, 40, (1,), generator=rng)), seed=200 + i),
             SamplingParams(max_tokens=int(torch.randint(4, 24, (1,), generator=rng)), ignore_eos=True),
             [None, dlm(4, 2, 0.5), dlm(8, 4, 0.9, shift=False, block_causal=True)][i % 3]) for i in range(12)]
    delays = [float(torch.rand(1, generator=rng)) * 0.03 if i % 2 else None for i in range(12)]
    done = {}

    async def one(i):
        p, sp, d = reqs[i]
        with anyio.move_on_after(delays[i] if delays[i] is not None else 60):
            done[i] = await engine.generate(p, sp, diffusion=d)

    async with engine:
        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(one, i)
        await wait_until(lambda: engine.stats().running == 0 and engine.stats().waiting == 0)
        assert_idle(engine)
    for i in range(0, 12, 2):  # never cancelled
        p, sp, d = reqs[i]
        assert done[i].token_ids == ref(model, p, sp, d)
