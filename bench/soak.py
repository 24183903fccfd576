"""Soak: random mixed traffic through the public Engine for a given time, with resident
memory, open files and threads sampled; reports whether they stayed flat.

    python -m bench.soak --minutes 30              # the issue's soak
    python -m bench.soak --minutes 2 --json out.json

Traffic (``--concurrency`` requests always in flight, on the synthetic tiny model): AR greedy
and seeded sampled requests, block-diffusion requests (causal and block-causal, some streamed
provisionally), requests cancelled at a random point (queued, prefill, mid-block, ...) and
bad requests that must be refused with a typed error. Flat means: after the warm-up (the
first tenth of the run), resident memory moves by less than ``--rss-slack-mib`` and the counts
of open files and threads end where they started. Not part of CI (it takes minutes by design).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter

import anyio
from tqdm import tqdm

from wrinklefree_rt import DiffusionParams, Engine, EngineConfig, SamplingParams
from wrinklefree_rt import random_model as synth
from wrinklefree_rt._core import BitNetBatchEngine
from wrinklefree_rt.errors import WrinklefreeError

SHAPE = synth.SHAPES["tiny"]
MASK = SHAPE.vocab - 1


def sample() -> dict:
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {"rss_mib": rss / 2**20, "open_files": len(os.listdir("/proc/self/fd")),
            "threads": len(os.listdir("/proc/self/task"))}


def make_engine(threads: int, slots: int) -> Engine:
    cfg = EngineConfig(num_threads=threads, max_num_seqs=slots, kv_cache_tokens=slots * 256,
                       max_num_batched_tokens=64)
    model_config = synth.model_config(SHAPE, MASK)
    core = BitNetBatchEngine(model_config, synth.tensors(SHAPE), num_threads=threads, max_slots=slots,
                             kv_pages=-(-cfg.kv_cache_tokens // cfg.page_size), page_size=cfg.page_size)
    return Engine(core, model_config, None, cfg)


BAD_REQUESTS = [  # (prompt, params, diffusion): each must be refused before admission
    ([1, 2, SHAPE.vocab + 3], {"max_tokens": 4}, None),
    ([1, MASK, 2], {"max_tokens": 4}, None),
    ([], {"max_tokens": 4}, None),
    ([1, 2], {"max_tokens": 0}, None),
    ([1, 2], {"top_p": 0.0}, None),
    ([1, 2], {"max_tokens": 10**6}, None),
    ([1, 2], {"temperature": 0.5}, {"block_size": 8}),
    ([1, 2], None, {"block_size": 8, "sub_block_size": 3}),
    ("text without a tokenizer", None, None),
    ([1.5, 2], None, None),
]


def random_request(rng: random.Random):
    prompt = [rng.randrange(4, MASK) for _ in range(rng.randint(1, 120))]
    sp = SamplingParams(max_tokens=rng.randint(1, 96), ignore_eos=rng.random() < 0.5)
    kind = rng.random()
    if kind < 0.3:
        return "ar", prompt, sp, None
    if kind < 0.45:
        sp.temperature, sp.top_k, sp.top_p, sp.seed = 0.8, 40, 0.9, rng.randrange(1 << 30)
        return "sampled", prompt, sp, None
    block = rng.choice([4, 8, 16, 32])
    d = DiffusionParams(block_size=block, sub_block_size=rng.choice([b for b in (1, 2, 4, 8) if block % b == 0]),
                        threshold=rng.choice([0.0, 0.5, 0.9, 2.0]), mask_token_id=MASK,
                        attention=rng.choice(["causal", "block"]), provisional=rng.random() < 0.3)
    return "dlm", prompt, sp, d


async def one_request(engine: Engine, rng: random.Random, counts: Counter) -> None:
    if rng.random() < 0.08:
        prompt, params, diffusion = rng.choice(BAD_REQUESTS)
        try:
            await engine.generate(prompt, params, diffusion=diffusion)
            counts["bad request ACCEPTED"] += 1
        except (WrinklefreeError, ValueError):
            counts["bad request refused"] += 1
        except Exception as e:  # a bad request must get a typed error: count what did not
            counts[f"bad request: untyped {type(e).__name__}"] += 1
        return
    kind, prompt, sp, d = random_request(rng)
    cancel_after = rng.random() * 0.5 if rng.random() < 0.25 else None
    with anyio.CancelScope() as scope:
        if cancel_after is not None:
            scope.deadline = anyio.current_time() + cancel_after
        async with engine.generate_async(prompt, sp, diffusion=d) as stream:
            async for out in stream:
                if rng.random() < 0.05:
                    await anyio.sleep(0.01)  # a slow consumer now and then
        assert out.finished  # the stream ended without being cancelled
        counts[f"{kind} completed"] += 1
    if scope.cancelled_caught:
        counts[f"{kind} cancelled"] += 1


async def soak(seconds: float, concurrency: int, every: float, threads: int, seed: int) -> dict:
    engine = make_engine(threads, slots=16)
    rng = random.Random(seed)
    counts: Counter = Counter()
    samples = []
    t0 = time.monotonic()
    async with engine:
        async def worker() -> None:
            while time.monotonic() - t0 < seconds:
                await one_request(engine, rng, counts)

        async def sampler() -> None:
            with tqdm(total=round(seconds), unit="s", desc="soak", file=sys.stderr) as bar:
                while (elapsed := time.monotonic() - t0) < seconds:
                    s = engine.stats()
                    samples.append({"t": round(elapsed, 1), **sample(), "running": s.running,
                                    "waiting": s.waiting, "kv_pages_used": s.kv_pages_used,
                                    "requests": sum(counts.values())})
                    await anyio.sleep(every)
                    bar.update(min(round(time.monotonic() - t0), round(seconds)) - bar.n)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler)
            for _ in range(concurrency):
                tg.start_soon(worker)
        with anyio.fail_after(10):  # aborts are acted on at the next step boundary
            while engine.stats().running or engine.stats().waiting:
                await anyio.sleep(0.01)
        end_stats = engine.stats()
    samples.append({"t": round(time.monotonic() - t0, 1), **sample(), "running": end_stats.running,
                    "waiting": end_stats.waiting, "kv_pages_used": end_stats.kv_pages_used,
                    "requests": sum(counts.values())})
    return {"seconds": seconds, "concurrency": concurrency, "threads": threads, "seed": seed,
            "counts": dict(sorted(counts.items())), "samples": samples, "verdict": verdict(samples)}


def verdict(samples: list[dict], rss_slack_mib: float = 16.0) -> dict:
    steady = samples[max(1, len(samples) // 10):]  # after the warm-up
    first, last = steady[0], steady[-1]
    rss = [s["rss_mib"] for s in steady]
    out = {"rss_mib_first": round(first["rss_mib"], 1), "rss_mib_last": round(last["rss_mib"], 1),
           "rss_mib_max": round(max(rss), 1),
           "open_files_first_last_max": (first["open_files"], last["open_files"],
                                         max(s["open_files"] for s in steady)),
           "threads_first_last_max": (first["threads"], last["threads"], max(s["threads"] for s in steady)),
           "idle_at_end": (last["running"], last["waiting"], last["kv_pages_used"]) == (0, 0, 0)}
    out["flat"] = (max(rss) - min(rss) < rss_slack_mib and last["open_files"] <= first["open_files"]
                   and last["threads"] <= first["threads"] and out["idle_at_end"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--concurrency", type=int, default=48, help="requests in flight")
    ap.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the samples and verdict here")
    args = ap.parse_args(argv)
    result = anyio.run(soak, args.minutes * 60, args.concurrency, args.every, args.threads, args.seed)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps({"counts": result["counts"], "verdict": result["verdict"]}, indent=1))
    return 0 if result["verdict"]["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
