"""Ternary GEMM cost against the number of activation rows, for every kernel variant.

For each kernel table (the CPU's best, and AVX2 forced on AVX-512 machines, as an AVX2-only CPU
would run) and each 2B-4T projection shape, times the tiles (maddubs/dpbusd, layout v1), every
LUT kernel (cpp/kernels/lut.h) and the dense kernel on base-3 packed weights (cpp/kernels/base3.h,
"base3": another packing, so it takes no part in the fastest-variant columns) at 1, 2, 4, ...,
128 rows, one thread, interleaved (round r runs every variant at every row count before round
r + 1) and reports medians. Weights rotate
over copies larger than the L2 caches, so the 1-row figures read them from L3 or DRAM as a
model's layers do (this machine's L3 may still hold them: see the `weights_bytes` field).

With --engine, also the whole forward step of the synthetic 2B-4T model (wrinklefree_rt/random_model.py) at
the same row counts, for each kernel table with the tiles alone and with the measured plan
(`ternary_kernel="tiles"` vs `"auto"`), interleaved step by step: a 32-row step's cost in 1-row
steps is the figure issue 11 asks about.

    python -m bench.kernel_curve [--quick] [--tables avx2 ...] [--engine] [--threads 2]

Writes bench/results/kernels-<UTC timestamp>.json (bench.run embeds the kernel figures).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from wrinklefree_rt import _core

from . import report as report_file

ROWS = (1, 2, 4, 8, 16, 32, 64, 128)
# (N, K) of the 2B-4T projections: q/o, gate/up, down.
SHAPES = ((2560, 2560), (6912, 2560), (2560, 6912))
ROTATION_BYTES = 256 << 20
BASE3 = "base3"


def default_tables() -> list[str]:
    best = _core.default_kernel_name()
    names = _core.kernel_names()
    return [best] + (["avx2"] if best != "avx2" and "avx2" in names else [])


def _variants(table: str, N: int, K: int, copies: int, rng) -> dict:
    """name -> callable(X, M, copy index) for the tiles, each LUT kernel and base3 on one random
    matrix."""
    codes = rng.integers(-1, 2, (N, K)).astype(np.int8)
    tiles = np.stack([_core.ternary_pack(codes)] * copies)
    lut = np.stack([_core.lut_pack(codes)] * copies)
    base3 = np.stack([_core.base3_pack(codes)] * copies)
    out = {"tiles": lambda X, c: _core.ternary_gemm(table, tiles[c], N, K, X)}
    for k in _core.lut_kernel_names(table):
        out[k] = lambda X, c, k=k: _core.lut_gemm(table, k, lut[c], N, K, X)
    out[BASE3] = lambda X, c: _core.base3_gemm(table, base3[c], N, K, X)
    return out


def measure(tables: list[str], rounds: int, shapes=SHAPES) -> dict:
    rng = np.random.default_rng(0)
    result: dict = {}
    for table in tables:
        for N, K in shapes:
            copies = max(2, ROTATION_BYTES // _core.ternary_packed_bytes(N, K))
            variants = _variants(table, N, K, copies, rng)
            Kp = _core.ternary_padded_k(K)
            X = np.zeros((max(ROWS), Kp), np.int8)
            X[:, :K] = rng.integers(-127, 128, (max(ROWS), K))
            samples = {v: {m: [] for m in ROWS} for v in variants}
            c = 0
            for _ in range(rounds):
                for m in ROWS:
                    for name, fn in variants.items():
                        c = (c + 1) % copies
                        t0 = time.perf_counter()
                        fn(X[:m], c)
                        samples[name][m].append(time.perf_counter() - t0)
            result.setdefault(table, {})[f"{N}x{K}"] = {
                "weights_bytes": _core.ternary_packed_bytes(N, K) * copies,
                "samples_s": {v: {str(m): s for m, s in by_m.items()} for v, by_m in samples.items()},
            }
    return result


def _ratio_32_1(t: dict, variants) -> float:
    """The fastest 32-row call's cost in fastest 1-row calls, over `variants`."""
    return min(t[v][32] for v in variants) / min(t[v][1] for v in variants)


def derive(curves: dict) -> dict:
    """Per table and shape, per variant and row count: median and fastest call (seconds), rows/s
    of each; the fastest variant per row count (by fastest call: on a shared machine the median
    also measures the neighbours); a 32-row call's cost in 1-row calls, by either statistic."""
    out: dict = {}
    for table, shapes in curves.items():
        for shape, rec in shapes.items():
            by_stat = {stat: {v: {int(m): f(s) for m, s in by_m.items()} for v, by_m in rec["samples_s"].items()}
                       for stat, f in (("median", statistics.median), ("best", min))}
            best = by_stat["best"]
            two_bit = [v for v in best if v != BASE3]  # what a 2-bit engine's plan chooses from
            d: dict = {"fastest": {str(m): min(two_bit, key=lambda v: best[v][m]) for m in ROWS}}
            for stat, t in by_stat.items():
                d[f"{stat}_s"] = {v: {str(m): x for m, x in by_m.items()} for v, by_m in t.items()}
                d[f"rows_per_s_{stat}"] = {v: {str(m): m / x for m, x in by_m.items()} for v, by_m in t.items()}
                d[f"cost_32_rows_in_1_row_calls_{stat}"] = _ratio_32_1(t, two_bit)
                d[f"cost_32_rows_in_1_row_calls_{stat}_tiles_only"] = _ratio_32_1(t, ["tiles"])
            out.setdefault(table, {})[shape] = d
    return out


def table_text(derived: dict) -> str:
    lines = []
    for table, shapes in derived.items():
        for shape, d in shapes.items():
            for stat in ("best", "median"):
                lines.append(f"{table} {shape}: rows/s by {stat} call (fastest variant *): 32 rows cost "
                             f"{d[f'cost_32_rows_in_1_row_calls_{stat}']:.1f} one-row calls "
                             f"(tiles alone {d[f'cost_32_rows_in_1_row_calls_{stat}_tiles_only']:.1f})")
                lines.append("  " + f"{'variant':<14}" + "".join(f"{m:>10}" for m in ROWS))
                for v, by_m in d[f"rows_per_s_{stat}"].items():
                    cells = "".join(f"{by_m[str(m)]:>9.0f}{'*' if d['fastest'][str(m)] == v else ' '}" for m in ROWS)
                    lines.append(f"  {v:<14}{cells}")
    return "\n".join(lines)


def engine_curve(tables: list[str], threads: int, rounds: int) -> dict:
    """Forward-step seconds per row count of the 2B-4T synthetic model, per table x plan."""
    from wrinklefree_rt import random_model as synth
    from wrinklefree_rt._core import BitNetBatchEngine
    from wrinklefree_rt.formats import load_model_dir
    from wrinklefree_rt.measure import StepBench

    from . import artifacts

    cfg, tensors = load_model_dir(artifacts.wfrt_dir(synth.SHAPES["2b"]))
    engines = {}
    for table in tables:
        for plan in ("tiles", "auto"):
            eng = BitNetBatchEngine(cfg, tensors, num_threads=threads, max_slots=8, kv_pages=-(-max(ROWS) // 32) + 1,
                                    page_size=32, lm_head="int8", isa=table, ternary_kernel=plan)
            engines[f"{table} {plan}"] = StepBench(eng, 0.0)
    samples = {name: {m: [] for m in ROWS} for name in engines}
    for ours in engines.values():
        ours.forward(max(ROWS), 1)  # warm-up: buffers, KV pages, the LUT kernels' scratch
    for _ in range(rounds):
        for m in ROWS:
            for name, ours in engines.items():
                samples[name][m] += ours.forward(m, 1)
    out = {}
    for name, by_m in samples.items():
        med = {m: statistics.median(s) for m, s in by_m.items()}
        best = {m: min(s) for m, s in by_m.items()}
        out[name] = {"plan": engines[name].eng.ternary_plan, "samples_s": {str(m): s for m, s in by_m.items()},
                     "median_step_s": {str(m): t for m, t in med.items()},
                     "best_step_s": {str(m): t for m, t in best.items()},
                     "cost_32_rows_in_1_row_steps_median": med[32] / med[1],
                     "cost_32_rows_in_1_row_steps_best": best[32] / best[1]}
    return out


def engine_text(curve: dict) -> str:
    lines = []
    for stat in ("best", "median"):
        lines.append(f"forward step of the 2B-4T shape, {stat} step ms (and a 32-row step's cost in 1-row steps)")
        lines.append(f"  {'table plan':<18}" + "".join(f"{m:>9}" for m in ROWS) + "   32/1")
        for name, d in curve.items():
            lines.append(f"  {name:<18}" + "".join(f"{d[f'{stat}_step_s'][str(m)] * 1e3:>9.1f}" for m in ROWS)
                         + f"  {d[f'cost_32_rows_in_1_row_steps_{stat}']:5.1f}x")
    lines += [f"  plan of {name}: {d['plan']}" for name, d in curve.items()]
    return "\n".join(lines)


def run(quick: bool = False, tables: list[str] | None = None) -> dict:
    tables = tables or default_tables()
    load = [os.getloadavg()]
    curves = measure(tables, rounds=3 if quick else 9, shapes=SHAPES[:1] if quick else SHAPES)
    load.append(os.getloadavg())
    return {"tables": tables, "threads": 1, "loadavg": load, "raw": curves, "derived": derive(curves)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one shape, three rounds")
    ap.add_argument("--tables", nargs="*", help=f"kernel tables (default: {default_tables()})")
    ap.add_argument("--engine", action="store_true", help="also the 2B-4T forward step, tiles vs measured plan")
    ap.add_argument("--threads", type=int, default=2, help="engine threads for --engine (default 2)")
    ap.add_argument("--out", type=Path, default=report_file.RESULTS)
    args = ap.parse_args(argv)
    report = {**report_file.header("bench.kernel_curve"), **run(args.quick, args.tables)}
    print(table_text(report["derived"]))
    if args.engine:
        report["engine"] = engine_curve(report["tables"], args.threads, rounds=3 if args.quick else 7)
        report["engine_threads"] = args.threads
        report["loadavg"].append(os.getloadavg())
        print(engine_text(report["engine"]))
    print(f"load average before/after: {report['loadavg']}")
    report_file.write(report, args.out, "kernels", args.quick)


if __name__ == "__main__":
    main()
