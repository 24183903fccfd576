"""Serving figures through the public ``Engine``: DLM block decoding with N concurrent
requests, and the scheduler's overhead (time outside the C++ step) at 64 requests (the median
of 9 batches).

    python -m bench.serving [--threads 2] [--quick]    # writes bench/results/serving-<UTC>.json

(``python -m bench.run`` takes the same figures after its side-by-side runs.)

DLM runs: prompt 32 tokens, 64 new tokens (two blocks of 32), ``ignore_eos`` so every request
does the same work. Settings per N:
- threshold 0.9 (the default; sub-block 8): what decoding does. On random weights the model is
  never confident, so this is the floor: about one token per request per forward.
- threshold 0 with sub-block 32: every masked position is unmasked in one step, the ceiling.
- threshold 0.9 and 0 with ``sub_block_size="auto"``: the width chosen per step from the
  measured step costs and how often candidates pass (wrinklefree_rt/sub_block.py); the engine
  has measured its steps since the warm-up.
The same requests decoded autoregressively (N = 1 and 16) are given for reference.
The step time is taken inside ``BitNetBatchEngine.step`` by a timing wrapper around the core.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from wrinklefree_rt import DiffusionParams, Engine, EngineConfig, SamplingParams
from wrinklefree_rt import random_model as synth
from wrinklefree_rt._core import BitNetBatchEngine
from wrinklefree_rt.formats import load_model_dir

from . import artifacts
from . import report as report_file

__all__ = ["run", "table", "TimedCore"]

PROMPT = 32
NEW = 64
BLOCK = 32


class TimedCore:
    """``BitNetBatchEngine`` with the seconds spent inside ``step`` added up."""

    def __init__(self, core: BitNetBatchEngine):
        self._core = core
        self.step_s = 0.0
        self.steps = 0

    def step(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._core.step(*args, **kwargs)
        finally:
            self.step_s += time.perf_counter() - t0
            self.steps += 1

    def __getattr__(self, name):
        value = getattr(self._core, name)
        if callable(value):  # a bound method: found once, not on every call (the harness's own cost)
            self.__dict__[name] = value
        return value


def _engine(path: Path, threads: int, max_seqs: int, kv_tokens: int, budget: int) -> tuple[Engine, TimedCore]:
    cfg = EngineConfig(num_threads=threads, max_num_seqs=max_seqs, kv_cache_tokens=kv_tokens,
                       max_num_batched_tokens=budget)
    model_config, tensors = load_model_dir(path)
    core = TimedCore(BitNetBatchEngine(model_config, tensors, num_threads=threads,
                                       max_slots=max_seqs, kv_pages=-(-kv_tokens // cfg.page_size),
                                       page_size=cfg.page_size))
    return Engine(core, model_config, None, cfg), core


def _prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    return [[(1000 + 7 * i + j) % (vocab - 1) for j in range(length)] for i in range(n)]


def _batch(engine: Engine, core: TimedCore, prompts, sp, dp) -> dict:
    core.step_s, core.steps = 0.0, 0
    s0 = engine.stats()
    t0 = time.perf_counter()
    outs = engine.generate_batch(prompts, sp, diffusion=dp)
    wall = time.perf_counter() - t0
    s1 = engine.stats()
    tokens = sum(len(o.token_ids) for o in outs)
    forwards = s1.forwards - s0.forwards
    per_req = [o.metrics.tokens_per_forward for o in outs if o.metrics.tokens_per_forward]
    return {"wall_s": wall, "tokens": tokens, "forwards": forwards, "rows": s1.rows - s0.rows,
            "core_step_s": core.step_s, "core_steps": core.steps,
            "schedule_s": s1.schedule_time - s0.schedule_time,
            "tokens_per_s": tokens / wall,
            "tokens_per_forward": tokens / forwards if forwards else None,
            "request_tokens_per_forward": statistics.mean(per_req) if per_req else None,
            "finish_reasons": sorted({o.finish_reason for o in outs})}


def dlm(path: Path, shape: synth.Shape, threads: int, quick: bool) -> dict:
    ns = (1, 4) if quick else (1, 4, 16)
    settings = {"threshold 0.9 (real)": dict(threshold=0.9),
                "threshold 0.9, auto width": dict(threshold=0.9, sub_block_size="auto"),
                "threshold 0 (ceiling)": dict(threshold=0.0, sub_block_size=BLOCK),
                "threshold 0, auto width": dict(threshold=0.0, sub_block_size="auto")}
    if quick:
        settings = {"threshold 0 (ceiling)": settings["threshold 0 (ceiling)"]}
    engine, core = _engine(path, threads, max_seqs=max(ns), kv_tokens=max(ns) * (PROMPT + NEW + BLOCK),
                           budget=max(ns) * BLOCK)
    sp = SamplingParams(max_tokens=NEW, ignore_eos=True)
    out: dict = {}
    try:
        engine.generate_batch(_prompts(1, PROMPT, shape.vocab), sp,  # warm-up
                              diffusion=DiffusionParams(block_size=BLOCK, threshold=0.0, sub_block_size=BLOCK))
        for label, kw in settings.items():
            dp = DiffusionParams(block_size=BLOCK, mask_token_id=artifacts.mask_token_id(shape), **kw)
            for n in ns:
                r = _batch(engine, core, _prompts(n, PROMPT, shape.vocab), sp, dp)
                out[f"{label}, N={n}"] = r
        if not quick:  # the same requests decoded autoregressively, for reference
            for n in (1, max(ns)):
                out[f"AR (reference), N={n}"] = _batch(engine, core, _prompts(n, PROMPT, shape.vocab), sp, None)
    finally:
        engine.close()
    return out


def scheduler_overhead(threads: int, quick: bool) -> dict:
    """64 concurrent AR requests (prompt 16, 32 new tokens) on the tiny model: time outside the
    C++ step, per step, against the step; the batch with the median share of several (each a
    fraction of a second; one is at the mercy of a neighbour's burst)."""
    shape = synth.SHAPES["tiny"]
    path = artifacts.wfrt_dir(shape)
    n, prompt, new = 64, 16, (16 if quick else 32)
    engine, core = _engine(path, threads, max_seqs=n, kv_tokens=n * (prompt + new + 32), budget=n * prompt)
    runs = []
    try:
        sp = SamplingParams(max_tokens=new, ignore_eos=True)
        engine.generate_batch(_prompts(4, prompt, shape.vocab), sp)  # warm-up
        for _ in range(3 if quick else 9):
            r = _batch(engine, core, _prompts(n, prompt, shape.vocab), sp, None)
            outside = r["wall_s"] - r["core_step_s"]
            r["outside_step_s_per_step"] = outside / max(r["core_steps"], 1)
            r["step_s_per_step"] = r["core_step_s"] / max(r["core_steps"], 1)
            r["overhead_fraction"] = outside / r["core_step_s"] if r["core_step_s"] else None
            runs.append(r)
    finally:
        engine.close()
    runs.sort(key=lambda r: r["overhead_fraction"])
    return {**runs[len(runs) // 2], "requests": n, "batches": len(runs),
            "overhead_fraction_range": [runs[0]["overhead_fraction"], runs[-1]["overhead_fraction"]]}


def run(path: Path, shape: synth.Shape, threads: int, quick: bool) -> dict:
    return {"dlm": dlm(path, shape, threads, quick), "scheduler_overhead": scheduler_overhead(threads, quick)}


def table(serving: dict) -> list[str]:
    lines = ["| DLM (2B shape, block 32, prompt 32 + 64 new) | committed tok/s | tokens / forward "
             "| per-request tokens / forward | forwards | rows / forward |",
             "|---|---|---|---|---|---|"]
    for label, r in serving["dlm"].items():
        tpf = r["tokens_per_forward"]
        rpf = r["rows"] / r["forwards"] if r["forwards"] else float("nan")
        lines.append(f"| {label} | {r['tokens_per_s']:.1f} | {tpf:.2f} | "
                     f"{r['request_tokens_per_forward'] or float('nan'):.2f} | {r['forwards']} | {rpf:.1f} |")
    s = serving["scheduler_overhead"]
    lines += ["", f"Scheduler overhead ({s['requests']} concurrent AR requests, tiny model): "
                  f"{1e3 * s['outside_step_s_per_step']:.2f} ms outside the C++ step per step, "
                  f"step {1e3 * s['step_s_per_step']:.2f} ms: {100 * s['overhead_fraction']:.1f} % of step time "
                  f"({s['core_steps']} steps, {s['rows'] / max(s['forwards'], 1):.0f} rows per step; the median "
                  f"of {s['batches']} batches, which ranged {100 * s['overhead_fraction_range'][0]:.1f}-"
                  f"{100 * s['overhead_fraction_range'][1]:.1f} %)."]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="N = 1 and 4, the ceiling only")
    ap.add_argument("--out", type=Path, default=report_file.RESULTS)
    args = ap.parse_args(argv)
    shape = synth.SHAPES["2b"]
    report = {**report_file.header("bench.serving"), "threads": args.threads, "loadavg": [os.getloadavg()]}
    report["serving"] = run(artifacts.wfrt_dir(shape), shape, args.threads, args.quick)
    report["loadavg"].append(os.getloadavg())
    print("\n".join(table(report["serving"])))
    print(f"load average before/after: {report['loadavg']}")
    report_file.write(report, args.out, "serving", args.quick)


if __name__ == "__main__":
    main()
