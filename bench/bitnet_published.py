"""This runtime's 2B-shape figures beside bitnet.cpp's published ones (which cannot run here).

    python -m bench.bitnet_published [bench/results/<run>.json]

bitnet.cpp needs its own llama.cpp fork (a git submodule hosted on GitHub, which this machine
cannot reach), so it is compared through the figures its authors published: the pp128 / tg128
curves of BitNet-b1.58-2B-4T with their optimized I2_S kernels ("This Work", activation
parallel, Q6_K embeddings) in microsoft/BitNet ``src/README.md`` at commit 16da220
(``src/assets/performance_comparison_amd_epyc.png`` and ``..._i7-13800h.png``), read off the
plots to about +-1 tok/s. Ours come from a ``python -m bench.run`` results file (the newest one
by default) at the same thread count. Different CPUs: the ratio says where this CPU and this
runtime stand against theirs, not which runtime is faster on one machine; token generation is
bound by memory bandwidth, so the bandwidth ``bench.run`` measured is printed beside it.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from . import run

SOURCE = "microsoft/BitNet src/README.md @ 16da220 (read off the plots, +-1 tok/s)"

# threads -> tok/s, BitNet-b1.58-2B-4T, bitnet.cpp I2_S optimized kernels.
PUBLISHED = {
    "AMD EPYC 7V13 (Zen 3, AVX2)": {
        "pp128": {1: 43, 2: 82, 4: 158, 8: 292, 12: 402, 16: 462},
        "tg128": {1: 15.5, 2: 28.5, 4: 49.3, 8: 66.2, 12: 68.6, 16: 62.2},
    },
    "Intel Core i7-13800H (Raptor Lake, AVX2 + AVX-VNNI)": {
        "pp128": {1: 43.5, 2: 66, 4: 78, 6: 78.2},
        "tg128": {1: 13.3, 2: 19.1, 4: 19.1, 6: 20.0},
    },
}
TOKENS = {"pp128": 128, "tg128": 128}


def newest_run() -> tuple[Path, dict]:
    """The newest full bench.run result (a --quick run measures tg32, not tg128)."""
    found = run.newest_result(lambda report: "tg128" in report.get("samples_s", {}))
    if found is None:
        raise SystemExit(f"no bench.run results with tg128 in {run.RESULTS}: run `python -m bench.run` first")
    return found


def ours(run: dict) -> dict[str, float]:
    """tok/s per figure: tokens over the median of the run's samples."""
    return {fig: TOKENS[fig] / statistics.median(run["samples_s"][fig]["wrinklefree_rt"])
            for fig in TOKENS if run["samples_s"].get(fig, {}).get("wrinklefree_rt")}


def table(run: dict, name: str) -> list[str]:
    threads = run["threads"]
    mine = ours(run)
    bandwidth = run.get("derived", {}).get("ceilings", {}).get("bandwidth_bytes_per_s", {}).get(str(threads))
    cpu = run["machine"].get("cpu_model", "?")
    lines = [f"Ours: {cpu}, {threads} threads, `bench/results/{name}`"
             + (f" (DRAM read {bandwidth / 1e9:.1f} GB/s measured there)" if bandwidth else "")
             + f"; bitnet.cpp: {SOURCE}.", "",
             "| figure | ours tok/s | bitnet.cpp CPU | bitnet.cpp tok/s | ours / theirs |", "|---|---|---|---|---|"]
    for fig, value in mine.items():
        for their_cpu, curves in PUBLISHED.items():
            theirs = curves[fig].get(threads)
            if theirs is None:
                continue
            lines.append(f"| {fig} | {value:.1f} | {their_cpu}, {threads} threads | {theirs:g} "
                         f"| {value / theirs:.2f}x |")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path, report = (Path(args[0]), json.loads(Path(args[0]).read_text())) if args else newest_run()
    print("\n".join(table(report, path.name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
