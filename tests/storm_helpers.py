"""Shared by the storm, lifecycle and determinism tests: a mix of request kinds on the tiny
models of tiny_models.py, each kind's solo output, and checks that an engine is idle and that
nothing (tasks, threads, memory) was left behind."""
from __future__ import annotations

import os
import re
import threading
from collections import Counter

import anyio
import torch

from wrinklefree_rt import DiffusionParams, SamplingParams

MASK = 249          # the tiny models' last token id serves as the mask token
EOS = {2, 3}        # tiny_models' eos_token_id


def prompt(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, MASK, (n,), generator=g).tolist()


def request_kinds(n: int, max_prompt: int = 40, max_tokens: int = 16) -> list[tuple]:
    """``n`` (prompt, SamplingParams, DiffusionParams | None) requests cycling through AR greedy,
    AR seeded sampling, causal DLM with shift (one token per step: blocks stay open for several
    steps, streamed provisionally), block-causal DLM without shift, and fused-commit DLM."""
    reqs = []
    for i in range(n):
        p = prompt(2 + (7 * i) % (max_prompt - 1), seed=500 + i)
        sp = SamplingParams(max_tokens=3 + (5 * i) % (max_tokens - 2), ignore_eos=i % 3 != 0)
        kind = i % 5
        d = None
        if kind == 1:
            sp = SamplingParams(max_tokens=sp.max_tokens, temperature=0.9, top_k=50, top_p=0.95, seed=i)
        elif kind == 2:
            d = DiffusionParams(block_size=8, sub_block_size=4, threshold=2.0, mask_token_id=MASK,
                                provisional=True)
        elif kind == 3:
            d = DiffusionParams(block_size=4, threshold=0.6, mask_token_id=MASK, shift=False, attention="block")
        elif kind == 4:
            d = DiffusionParams(block_size=8, threshold=0.5, mask_token_id=MASK, fuse_commit=True)
        reqs.append((p, sp, d))
    return reqs


async def solo_outputs(engine, requests) -> list[list[int]]:
    """Each request's tokens when it runs alone on ``engine`` (which must be running)."""
    return [(await engine.generate(p, sp, diffusion=d)).token_ids for p, sp, d in requests]


def assert_idle(engine) -> None:
    s = engine.stats()
    assert (s.running, s.waiting, s.kv_pages_used) == (0, 0, 0), s
    assert engine.core.slots_free == engine.config.max_num_seqs


async def settle(engine) -> None:
    """Wait until the engine has acted on every abort (at its next step boundary), then check
    that it holds no request, slot or page."""
    with anyio.fail_after(10):
        while engine.stats().running or engine.stats().waiting:
            await anyio.sleep(0.001)
    assert_idle(engine)


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def threads() -> tuple[int, Counter]:
    """Threads of the process (the engine's C++ workers included) and the Python ones' names
    with numbers dropped: trio's and anyio's pools retire idle workers and name their
    replacements afresh ("Trio thread 14" -> "Trio thread 15"), which is a swap, not a leak."""
    names = Counter(re.sub(r"\d+", "#", t.name) for t in threading.enumerate())
    return len(os.listdir("/proc/self/task")), names


def assert_no_new_threads(before: tuple[int, Counter]) -> None:
    """Nothing started since ``before`` is still running (idle workers that earlier tests'
    event loops left may have exited meanwhile)."""
    count, names = threads()
    assert count <= before[0] and not names - before[1], (before, (count, names))


def running_tasks() -> int:
    return len(anyio.get_running_tasks())
