"""Overload and cancellation storms: a thousand requests at once on a tiny model whose KV pool
holds eight of them. Every request completes with its solo output (or, when cancelled, frees
everything it held); none is lost or duplicated; admission is first come, first served; memory,
tasks and threads do not grow."""
from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable

import anyio
import pytest
import torch

from storm_helpers import (MASK, assert_idle, assert_no_new_threads, request_kinds, resident_bytes,
                           running_tasks, settle, solo_outputs, threads)
from tiny_models import make_hf_model, save_hf_model
from wrinklefree_rt import Engine

N_REQUESTS = 1000
N_KINDS = 40         # distinct requests; request i is kind i % N_KINDS
MAX_PROMPT, MAX_TOKENS = 40, 16
KV_FITS = 8          # requests the KV pool holds at once (each needs <= 64 positions = 4 pages)
PAGE = 16
BUDGET = 24       # rows per forward: longer prompts prefill over several steps


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    torch.set_num_threads(1)
    path = save_hf_model(make_hf_model(seed=0), tmp_path_factory.mktemp("storm"))
    # More slots than the pool can back: requests wait for KV pages, not for slots.
    return Engine.from_pretrained(path, max_num_seqs=32, kv_cache_tokens=KV_FITS * 64, page_size=PAGE,
                                  max_num_batched_tokens=BUDGET, num_threads=2)


KINDS = request_kinds(N_KINDS, MAX_PROMPT, MAX_TOKENS)
_solo: list = []


async def warm_solo(engine) -> list[list[int]]:
    """The kinds' solo outputs (computed once); also starts this event loop's worker thread
    (the engine runs steps it has measured to be short on the loop's own thread, so its solo
    steps may not have)."""
    if not _solo:
        _solo.extend(await solo_outputs(engine, KINDS))
    assert await solo_outputs(engine, KINDS[:1]) == _solo[:1]
    await anyio.to_thread.run_sync(int)
    return _solo


def test_kinds_fit_the_pool_eight_at_a_time(engine):
    for p, sp, _ in KINDS:  # DLM blocks round the reservation up to a block end
        assert len(p) + sp.max_tokens + 7 <= 64
    assert engine.core.pages_total * PAGE == KV_FITS * 64


@pytest.mark.anyio
async def test_overload_thousand_at_once_fcfs(engine):
    results: dict[int, tuple] = {}
    peak = Counter()

    async def one(i: int) -> None:
        p, sp, d = KINDS[i % N_KINDS]
        async with engine.generate_async(p, sp, diffusion=d, request_id=f"r{i}") as stream:
            stream._final_only = True
            outs = [out async for out in stream]
        assert i not in results
        results[i] = (outs, stream._seq)

    async def watch() -> None:
        while len(results) < N_REQUESTS:
            s = engine.stats()
            peak["waiting"] = max(peak["waiting"], s.waiting)
            peak["running"] = max(peak["running"], s.running)
            peak["pages"] = max(peak["pages"], s.kv_pages_used)
            peak["rss"] = max(peak["rss"], resident_bytes())
            await anyio.sleep(0.002)

    async with engine:
        solo = await warm_solo(engine)
        before, rss0 = threads(), resident_bytes()
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            for i in range(N_REQUESTS):
                tg.start_soon(one, i)
        assert_idle(engine)
        assert_no_new_threads(before)

    assert sorted(results) == list(range(N_REQUESTS))
    for i, (outs, seq) in results.items():
        assert len(outs) == 1 and outs[0].finished and outs[0].request_id == f"r{i}"
        assert outs[0].token_ids == solo[i % N_KINDS], i
    # The queue was visible, the pool was the limit, and admission followed arrival.
    assert peak["waiting"] >= N_REQUESTS - 2 * KV_FITS
    # The pool, not the slots, was the limit (smaller requests fit more than eight at once).
    assert peak["pages"] == engine.core.pages_total and peak["running"] < engine.config.max_num_seqs
    seqs = sorted((seq for _, seq in results.values()), key=lambda s: s.arrival)
    admitted = [s.admitted for s in seqs]
    assert admitted == sorted(admitted)
    # A thousand queued requests are small: well under a megabyte of growth per hundred.
    # (Under AddressSanitizer freed memory stays resident in its quarantine by design.)
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        assert peak["rss"] - rss0 < 32 << 20, (peak["rss"] - rss0) / 2**20


def stage(seq) -> str:
    """Where a request stood when its consumer cancelled it."""
    if seq is None or seq.admitted is None:
        return "queued"
    if seq.finished:
        return "finished"
    if seq.in_prefill:
        return "prefill"
    if seq.dlm is None:
        return "decode"
    if seq._pending_fill():
        return "commit"  # block complete; the next block's first token awaits its forward
    open_block = seq.tokens[max(seq.block_start, seq.prompt_len):seq.block_end]
    return "mid-block" if MASK in open_block and any(t != MASK for t in open_block) else "block-start"


def cancel_plans(rng: random.Random, cancelled: list[int]) -> dict[int, tuple]:
    """How each cancelled request ends: at a random time, after a random number of updates,
    after slow reads, or the moment it is seen in a given stage (requests that can reach it)."""
    plans = {}
    for i in cancelled:
        p, sp, d = KINDS[i % N_KINDS]
        targets = ["prefill"] if len(p) > BUDGET else []
        if d is not None and d.shift is not False and not d.fuse_commit and len(p) % 8 + sp.max_tokens > 8:
            targets += ["mid-block", "commit"]  # a block boundary inside the output
        modes = ["time", "updates", "slow"] + ["stage"] * (2 if targets else 0)
        mode = rng.choice(modes)
        plans[i] = (mode, rng.choice(targets) if mode == "stage" else rng.random())
    return plans


def step_signal(engine, monkeypatch) -> Callable[[], anyio.Event]:
    """The event the engine sets when its next step has been applied: watchers wait on it
    instead of spinning on ``sleep(0)``, which starves the thread that finishes each step of
    the GIL (a step then costs a GIL switch interval, and the storm ran for most of an hour on
    a slow CI machine)."""
    box = [anyio.Event()]
    apply = engine._scheduler.apply

    def apply_and_signal(*args):
        apply(*args)
        box[0].set()
        box[0] = anyio.Event()

    monkeypatch.setattr(engine._scheduler, "apply", apply_and_signal)
    return lambda: box[0]


@pytest.mark.anyio
async def test_cancellation_storm(engine, monkeypatch):
    rng = random.Random(12)
    cancelled = sorted(rng.sample(range(N_REQUESTS), N_REQUESTS // 2))
    plans = cancel_plans(rng, cancelled)
    survivors: dict[int, list[int]] = {}
    stages, modes = Counter(), Counter()

    async def consume(stream, scope, mode, x) -> None:
        async with stream:
            n = 0
            async for out in stream:
                n += 1
                if mode == "slow":  # a consumer that dawdles over every update
                    await anyio.sleep(0.002 + 0.01 * x)
                if mode in ("updates", "slow") and n >= 1 + int(x * 4):
                    scope.cancel()
                    await anyio.lowlevel.checkpoint()
        assert out.finished  # reached only when it ran to the end before its cancel point

    async def one(i: int) -> None:
        p, sp, d = KINDS[i % N_KINDS]
        stream = engine.generate_async(p, sp, diffusion=d, request_id=f"c{i}")
        if i not in plans:
            async with stream:
                async for out in stream:
                    pass
            survivors[i] = out.token_ids
            return
        mode, x = plans[i]
        with anyio.CancelScope() as scope:
            if mode == "time":  # anywhere in the run, mostly while queued
                scope.deadline = anyio.current_time() + x * 0.3
            if mode != "stage":
                await consume(stream, scope, mode, x)
            else:  # watch between steps; cancel on first sight of the stage
                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume, stream, scope, mode, x)
                    while stage(stream._seq) not in (x, "finished"):
                        await next_step().wait()
                    scope.cancel()
        modes[mode if mode != "stage" else f"stage {x}"] += 1
        stages[stage(stream._seq)] += 1

    async with engine:
        solo = await warm_solo(engine)
        next_step = step_signal(engine, monkeypatch)
        before, tasks = threads(), running_tasks()
        async with anyio.create_task_group() as tg:
            for i in range(N_REQUESTS):
                tg.start_soon(one, i)
        await settle(engine)
        assert running_tasks() == tasks
        assert_no_new_threads(before)
        # The engine serves on, exactly.
        assert await solo_outputs(engine, KINDS[:5]) == solo[:5]

    assert sorted(survivors) == sorted(set(range(N_REQUESTS)) - set(cancelled))
    for i, tokens in survivors.items():
        assert tokens == solo[i % N_KINDS], i
    assert sum(stages.values()) == len(cancelled)
    print(dict(stages), dict(modes))
    for where in ("queued", "prefill", "decode", "mid-block", "commit"):
        assert stages[where] > 0, stages
