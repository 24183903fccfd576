"""Engine lifecycle under load: shutdown with requests in flight, two engines in one process,
one engine wanted by two event loops, and a KV pool too small for everything at once."""
from __future__ import annotations

import sys
import threading

import anyio
import pytest
import torch

from storm_helpers import assert_idle, prompt, request_kinds, settle, solo_outputs
from tiny_models import make_hf_model, save_hf_model
from wrinklefree_rt import Engine, EngineClosedError, EngineNotRunningError, InvalidRequestError, SamplingParams

KINDS = request_kinds(20, max_prompt=30, max_tokens=14)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return save_hf_model(make_hf_model(seed=2), tmp_path_factory.mktemp("lifecycle"))


@pytest.fixture(scope="module")
def solo(model_dir):
    engine = Engine.from_pretrained(model_dir, max_num_seqs=4)

    async def run():
        async with engine:
            return await solo_outputs(engine, KINDS)
    return anyio.run(run)


async def run_kinds(engine, kinds, results, errors=None):
    async def one(i, p, sp, d):
        try:
            results[i] = (await engine.generate(p, sp, diffusion=d)).token_ids
        except EngineClosedError as e:
            if errors is None:
                raise
            errors[i] = e

    async with anyio.create_task_group() as tg:
        for i, (p, sp, d) in enumerate(kinds):
            tg.start_soon(one, i, p, sp, d)


@pytest.mark.anyio
async def test_shutdown_ends_every_request_in_flight(model_dir, solo):
    engine = Engine.from_pretrained(model_dir, max_num_seqs=4, max_num_batched_tokens=8)
    long_kinds = [(p, SamplingParams(max_tokens=200, ignore_eos=True, seed=sp.seed,
                                     temperature=sp.temperature), d) for p, sp, d in KINDS]
    results, errors = {}, {}
    async with engine:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_kinds, engine, long_kinds, results, errors)
            with anyio.fail_after(20):  # some running (DLM blocks open), most still queued
                while engine.stats().forwards < 10 or not engine.stats().waiting:
                    await anyio.sleep(0.001)
            await engine.aclose()
        assert_idle(engine)
    assert not results and sorted(errors) == list(range(len(KINDS)))
    assert all("closed" in str(e) for e in errors.values())
    async with engine:  # serves again, exactly
        assert await solo_outputs(engine, KINDS[:4]) == solo[:4]


def test_sync_close_ends_a_blocked_caller(model_dir):
    engine = Engine.from_pretrained(model_dir, max_num_seqs=2)
    caught = []

    def caller():
        try:
            engine.generate_batch([[5, 6, 7]] * 4, {"max_tokens": 200, "ignore_eos": True})
        except EngineClosedError as e:
            caught.append(e)

    t = threading.Thread(target=caller)
    t.start()
    deadline = threading.Event()
    while engine.stats().forwards < 3 and not deadline.wait(0.001):
        pass
    engine.close()
    t.join(20)
    assert not t.is_alive() and len(caught) == 1
    assert_idle(engine)


@pytest.mark.anyio
async def test_two_engines_share_nothing(model_dir, solo):
    a = Engine.from_pretrained(model_dir, max_num_seqs=4)
    b = Engine.from_pretrained(model_dir, max_num_seqs=4, kv_cache_tokens=256, page_size=16)
    assert a.core is not b.core and a._scheduler is not b._scheduler
    res_a, res_b, errors_a = {}, {}, {}
    long = [(prompt(6, seed=i), SamplingParams(max_tokens=200, ignore_eos=True), None) for i in range(6)]
    async with a, b:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_kinds, a, long, res_a, errors_a)
            with anyio.fail_after(20):
                while a.stats().running < 4:
                    await anyio.sleep(0.001)
            # b starts empty while a is full, serves exactly, and outlives a's shutdown.
            assert (b.stats().running, b.stats().kv_pages_used, b.stats().forwards) == (0, 0, 0)
            tg.start_soon(run_kinds, b, KINDS, res_b)
            await a.aclose()
        assert sorted(errors_a) == list(range(6)) and not res_a
        assert [res_b[i] for i in range(len(KINDS))] == solo
        assert b.stats().forwards > 0
        assert_idle(a)
        await settle(b)


def test_one_engine_two_event_loops(model_dir):
    engine = Engine.from_pretrained(model_dir, max_num_seqs=2)
    entered, release = threading.Event(), threading.Event()
    results = {}

    async def hold():
        async with engine:
            results["first"] = (await engine.generate([5, 6], {"max_tokens": 3})).token_ids
            entered.set()
            await anyio.to_thread.run_sync(release.wait)

    async def second():
        with pytest.raises(RuntimeError, match="already running"):
            async with engine:
                pass
        with pytest.raises(EngineNotRunningError, match="not running in this event loop"):
            await engine.generate([5, 6], {"max_tokens": 3})

    t = threading.Thread(target=anyio.run, args=(hold,))
    t.start()
    try:
        assert entered.wait(20)
        anyio.run(second)
        anyio.run(second, backend="trio")
        # The sync API from a plain thread joins the loop that runs the engine.
        assert engine.generate_batch([[5, 6]], {"max_tokens": 3})[0].token_ids == results["first"]
    finally:
        release.set()
        t.join(20)
    assert not t.is_alive()


def test_two_event_loops_entering_at_once(model_dir):
    """Both loops race to enter: exactly one serves, the other gets the clear error."""
    engine = Engine.from_pretrained(model_dir, max_num_seqs=2)
    interval = sys.getswitchinterval()
    try:
        for attempt in range(10):
            outcome = _race_to_enter(engine, interval)
            assert sorted(outcome, key=str) == [2, "the engine is already running in an event loop"], attempt
            assert_idle(engine)
    finally:
        sys.setswitchinterval(interval)


def _race_to_enter(engine, interval: float) -> list:
    start, decided = threading.Barrier(2), threading.Barrier(2)
    outcome = []

    def entered_or_refused():  # the race is over: back to normal thread switching
        if decided.wait(60) == 0:
            sys.setswitchinterval(interval)

    async def enter():
        start.wait(60)
        try:
            await engine.__aenter__()
        except RuntimeError as e:
            entered_or_refused()
            outcome.append(str(e))
            return
        entered_or_refused()
        try:
            outcome.append(len((await engine.generate([5, 6], {"max_tokens": 2})).token_ids))
            await anyio.sleep(0.05)
        finally:
            await engine.__aexit__(None, None, None)

    sys.setswitchinterval(1e-6)  # threads switch every few bytecodes: any unguarded window shows
    threads = [threading.Thread(target=anyio.run, args=(enter,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    return outcome


@pytest.mark.anyio
async def test_small_pool_requests_wait_and_stay_exact(model_dir, solo):
    # 8 pages of 16: a 100-token prompt (7 pages) prefilled 8 rows per step leaves room for
    # one small request at a time; DLM blocks and AR decodes interleave with its prefill.
    engine = Engine.from_pretrained(model_dir, max_num_seqs=8, kv_cache_tokens=128, page_size=16,
                                    max_num_batched_tokens=8)
    big = prompt(100, seed=99)
    kinds = [(big, SamplingParams(max_tokens=8, ignore_eos=True), None)] + KINDS
    results, seen_waiting = {}, []
    async with engine:
        alone = await engine.generate(*kinds[0][:2])
        with pytest.raises(InvalidRequestError, match="cache holds 128"):
            await engine.generate(prompt(100, seed=1), {"max_tokens": 40})
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_kinds, engine, kinds, results)
            while len(results) < len(kinds):
                seen_waiting.append(engine.stats().waiting)
                await anyio.sleep(0.001)
        await settle(engine)
    assert results[0] == alone.token_ids
    assert [results[i + 1] for i in range(len(KINDS))] == solo
    assert max(seen_waiting) >= len(KINDS) - 2


@pytest.mark.anyio
async def test_a_consumer_is_cancelled_while_steps_run_back_to_back(model_dir, monkeypatch):
    """Short steps run on the event loop's thread one after the other; a cancel scope around a
    consumer must still take effect within a few steps (asyncio's anyio delivers a cancellation
    only to a task waiting on an unresolved future, which the engine resolves every step)."""
    import wrinklefree_rt.engine
    monkeypatch.setattr(wrinklefree_rt.engine, "INLINE_STEP_S", 10.0)  # every measured step, on any CPU
    engine = Engine.from_pretrained(model_dir, max_num_seqs=2)
    async with engine:
        await engine.generate(prompt(5, seed=1), SamplingParams(max_tokens=32, ignore_eos=True))
        updates = 0
        with anyio.CancelScope() as scope:
            async def cancel_after_ten() -> None:
                while updates < 10:
                    await anyio.sleep(0)
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_after_ten)
                async for out in engine.generate_async(prompt(5, seed=2),
                                                       SamplingParams(max_tokens=240, ignore_eos=True)):
                    updates += 1
        assert scope.cancelled_caught and updates < 50, updates
        await settle(engine)
