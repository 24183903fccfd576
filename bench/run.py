"""Side-by-side benchmark: llama.cpp (TQ2_0, TQ1_0) vs this runtime on identical weights.

Method: docs/benchmarks.md. One synthetic model with the real 2B-4T shape (wrinklefree_rt/random_model.py)
is written as this runtime's packed format and as GGUF TQ2_0 / TQ1_0; every system runs with the
same thread count, and the figures are taken interleaved (A B C A B C ...) so drift hits all
alike. Reported: medians, ratios against llama.cpp TQ2_0, and each figure as a fraction of its
measured ceiling (bench/hw.py). A benchmark reports; it never passes or fails.

    python -m bench.run            full run (~10 min on 2 cores)
    python -m bench.run --quick    smoke run (< 1 min once the model files are cached)

Writes bench/results/<UTC timestamp>.json with the machine, versions and every raw sample.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from wrinklefree_rt import _core
from wrinklefree_rt import random_model as synth
from wrinklefree_rt._core import BitNetBatchEngine
from wrinklefree_rt.formats import load_model_dir
from wrinklefree_rt.measure import StepBench

from . import artifacts, gguf_writer, hw, peer
from .report import RESULTS

REPO = Path(__file__).resolve().parent.parent
OURS = "wrinklefree_rt"
# The same engine with its ternary weights packed 5 codes per byte (ternary_packing="base3").
OURS_BASE3 = f"{OURS} base3"
PEER_NAMES = {"TQ2_0": "llama.cpp TQ2_0", "TQ1_0": "llama.cpp TQ1_0"}
BASELINE = PEER_NAMES["TQ2_0"]
# Pause between systems, so the previous one's spinning worker threads have gone to sleep.
GAP_S = 0.2
# Above this many cores used by other processes during a sample, the table flags the figure.
NOISY_CORES = 0.3


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _load_ours(path: Path, threads: int, max_slots: int, kv_tokens: int, packing: str = "2bit") -> StepBench:
    t0 = time.perf_counter()
    cfg, tensors = load_model_dir(path)
    page = 32
    eng = BitNetBatchEngine(cfg, tensors, num_threads=threads, max_slots=max_slots,
                            kv_pages=-(-kv_tokens // page), page_size=page, lm_head="int8",
                            ternary_packing=packing)
    return StepBench(eng, time.perf_counter() - t0)


def bytes_per_token_ours(shape: synth.Shape, packing: str = "2bit") -> int:
    """Weight bytes one AR decode step reads: packed ternary linears + int8 head (+ row scales)
    + fp32 norms. The KV cache (< 2 % at these lengths) is left out, which flatters no one:
    it raises the ceiling."""
    norms = (3 * shape.hidden + shape.intermediate) * 4
    head = shape.vocab * shape.hidden + shape.vocab * 4
    return ternary_bytes_ours(shape, packing) + shape.layers * norms + head + shape.hidden * 4


def bytes_per_token_gguf(shape: synth.Shape, qtype: str) -> int:
    """Same for the GGUF: every tensor but token_embd's lookup is read once; token_embd is read
    whole as the output layer."""
    plan = gguf_writer.tensor_plan(shape, gguf_writer.QTYPES[qtype])
    return sum(gguf_writer.tensor_nbytes(dims, t) for _, _, dims, t in plan)


def ternary_bytes_ours(shape: synth.Shape, packing: str = "2bit") -> int:
    nbytes = _core.ternary_packed_bytes if packing == "2bit" else _core.base3_packed_bytes
    return shape.layers * sum(nbytes(o(shape), i(shape)) for _, o, i in synth.PROJECTIONS)


class CpuMeter:
    """Who used the CPU while we measured. ``foreign_cores``: CPU time of other processes per
    wall second; on a shared 2-core machine a neighbour's compile takes time slices from either
    side, and llama.cpp's spinning OpenMP barrier suffers more from it than a sleeping pool.
    But a system that leaves a core idle also lets neighbours in, so ``own_cores`` (this
    process) and ``preempted_per_s`` (involuntary context switches of its threads) are kept
    beside it. Every sample carries all three."""

    _HZ = os.sysconf("SC_CLK_TCK")

    def __init__(self) -> None:
        self.t, self.busy, self.own, self.nvcsw = self._read()

    @classmethod
    def _read(cls) -> tuple[float, float, float, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        busy = (sum(fields[:8]) - idle) / cls._HZ  # user..steal, guests are inside user
        t = os.times()
        nvcsw = 0
        for task in Path("/proc/self/task").iterdir():
            try:
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("nonvoluntary_ctxt_switches"):
                        nvcsw += int(line.split()[1])
            except OSError:  # a thread that just ended
                pass
        return time.perf_counter(), busy, t.user + t.system, nvcsw

    def read(self) -> dict:
        t, busy, own, nvcsw = self._read()
        wall = max(t - self.t, 1e-9)
        return {"foreign_cores": max(0.0, (busy - self.busy) - (own - self.own)) / wall,
                "own_cores": (own - self.own) / wall, "preempted_per_s": (nvcsw - self.nvcsw) / wall}

    def foreign_cores(self) -> float:
        return self.read()["foreign_cores"]


def wait_quiet(max_wait_s: float, threshold: float = 0.3, window_s: float = 3.0) -> float:
    """Waits (up to max_wait_s) for a window in which others use under `threshold` cores;
    returns the last window's foreign load."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        m = CpuMeter()
        time.sleep(window_s)
        load = m.foreign_cores()
        if load < threshold or time.perf_counter() >= deadline:
            return load
        print(f"  machine busy ({load:.2f} foreign cores), waiting...", file=sys.stderr)


def raise_priority(nice: int) -> str:
    """Lowers this process's autogroup nice value (Linux; a negative value needs root).

    With autogroup scheduling, plain ``nice`` only ranks processes of one session against each
    other; neighbours in other sessions share the CPU by group. Both systems run in this one
    process, so the boost favours neither."""
    path = Path("/proc/self/autogroup")
    try:
        path.write_text(str(nice))
        return path.read_text().strip()
    except OSError as e:
        return f"not changed ({e.strerror or e})"


def newest_result(holds: Callable[[dict], bool]) -> tuple[Path, dict] | None:
    """The newest results file this module wrote whose report ``holds``, and that report."""
    for path in sorted(RESULTS.glob("2*.json"), reverse=True):  # named by UTC start time
        report = json.loads(path.read_text())
        if holds(report):
            return path, report
    return None


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _probe(kind: str, path: Path, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.probe", kind, str(path), str(threads)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    if out.returncode:
        return {"error": out.stderr.strip()[-2000:]}
    return json.loads(out.stdout)


def run(args: argparse.Namespace) -> dict:
    shape = synth.SHAPES["2b"]
    threads = args.threads
    quick = args.quick
    reps = args.reps or (1 if quick else 5)
    gen = 32 if quick else 128
    prompt_len = 16
    pp_sizes = (128,) if quick else (128, 512)
    rows_list = (1, 32, 128) if quick else (1, 2, 4, 8, 16, 32, 64, 128, 512)
    fwd_reps = 2 if quick else 5
    qtypes = [] if args.no_peer else (["TQ2_0"] if quick else ["TQ2_0", "TQ1_0"])
    if qtypes and not peer.available():
        print("llama-cpp-python is not installed: running this runtime alone", file=sys.stderr)
        qtypes = []

    report: dict = {
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.run", *sys.argv[1:]]),
        "mode": "quick" if quick else "full",
        "threads": threads,
        "machine": hw.machine(),
        "versions": {"wrinklefree_rt_commit": _git_commit(), "numpy": np.__version__,
                     "python": sys.version.split()[0], "peer": peer.versions()},
        "model": {"shape": vars(shape), "seed": args.seed,
                  "ternary_macs_per_token": synth.ternary_macs_per_token(shape)},
        "loadavg": [],
    }
    print(f"machine: {report['machine'].get('cpu_model')} ({report['machine'].get('logical_cpus')} cpus), "
          f"{threads} threads, {report['mode']} run", file=sys.stderr)

    print("measuring ceilings (DRAM read, int8 peaks)...", file=sys.stderr)
    if args.nice:
        report["autogroup"] = raise_priority(args.nice)
        print(f"autogroup: {report['autogroup']}", file=sys.stderr)
    if args.wait_quiet:
        report["foreign_cores_at_start"] = wait_quiet(args.wait_quiet)
    hw_args = dict(threads=tuple(sorted({1, threads})), buffer_mib=512 if quick else 1024,
                   passes=2 if quick else 8, peak_seconds=0.05 if quick else 0.3)
    report["ceilings_raw"] = {"start": hw.measure(**hw_args)}

    print("preparing model files (cached under .models/bench)...", file=sys.stderr)
    wfrt = artifacts.wfrt_dir(shape, args.seed)
    ggufs = {q: artifacts.cached_gguf(shape, q, args.seed) for q in qtypes}

    # Load/resident memory first, each in a fresh process, before this one holds anything.
    print("load time and resident memory per format...", file=sys.stderr)
    report["load"] = {f"{OURS} .wfrt (converted)": _probe("ours", wfrt, threads)}
    if not quick:
        report["load"][f"{OURS} HF offline safetensors"] = _probe(
            "ours", artifacts.hf_offline_dir(shape, args.seed), threads)
    for q, path in ggufs.items():
        report["load"][PEER_NAMES[q]] = _probe("gguf", path, threads)

    ours = _load_ours(wfrt, threads, max_slots=32, kv_tokens=2048 + 16 * 32)
    report["versions"]["wrinklefree_rt_isa"] = ours.eng.isa
    report["versions"]["wrinklefree_rt_ternary_plan"] = ours.eng.ternary_plan
    systems: dict[str, object] = {}
    for q in qtypes:
        systems[PEER_NAMES[q]] = peer.LlamaPeer(ggufs[q], threads, n_ctx=1024)
        if q == "TQ2_0":
            systems[OURS] = ours  # baseline first, then this runtime, then the other peer
    if OURS not in systems:
        systems[OURS] = ours
    if not args.no_base3:
        systems[OURS_BASE3] = _load_ours(wfrt, threads, max_slots=1, kv_tokens=1024, packing="base3")
        report["versions"]["wrinklefree_rt_base3_ternary_plan"] = systems[OURS_BASE3].eng.ternary_plan

    figures = {f"tg{gen}": (gen, lambda s: s.tg(prompt_len, gen))}
    for n in pp_sizes:
        figures[f"pp{n}"] = (n, lambda s, n=n: s.pp(n))
    samples = {f: {name: [] for name in systems} for f in figures}
    foreign = {f: {name: [] for name in systems} for f in figures}
    cpu = {f: {name: [] for name in systems} for f in figures}

    print("warm-up...", file=sys.stderr)
    for name, sysm in systems.items():
        sysm.tg(prompt_len, 4)
        sysm.pp(min(pp_sizes))
    print(f"interleaved rotation: {reps} reps x {list(figures)} x {list(systems)}", file=sys.stderr)
    report["rotation_bandwidth_bytes_per_s"] = []
    for rep in range(reps):
        report["loadavg"].append(os.getloadavg())
        # This VM's bandwidth changes with where its vCPUs run (~40 or ~75 GB/s for 2 threads
        # here): each rep gets its own reading, next to the tg samples it bounds.
        report["rotation_bandwidth_bytes_per_s"].append(hw.bandwidth(threads))
        for fig, (_, fn) in figures.items():
            for name, sysm in systems.items():
                time.sleep(GAP_S)
                meter = CpuMeter()
                samples[fig][name].append(fn(sysm))
                cpu[fig][name].append(meter.read())
                foreign[fig][name].append(cpu[fig][name][-1]["foreign_cores"])
        print(f"  rep {rep + 1}/{reps} done", file=sys.stderr)
    report["samples_s"] = samples
    report["samples_foreign_cores"] = foreign
    report["samples_cpu"] = cpu

    print(f"batched forward at {rows_list} rows...", file=sys.stderr)
    fwd = {m: [] for m in rows_list}
    fwd_foreign = {m: [] for m in rows_list}
    for m in rows_list:
        ours.forward(m, 1)  # warm-up: first use of those KV pages and buffers
    for rep in range(fwd_reps):
        for m in rows_list:
            time.sleep(GAP_S)
            meter = CpuMeter()
            fwd[m] += ours.forward(m, 1)
            fwd_foreign[m].append(meter.foreign_cores())
    report["forward_samples_s"] = {str(m): v for m, v in fwd.items()}
    report["forward_foreign_cores"] = {str(m): v for m, v in fwd_foreign.items()}

    for sysm in systems.values():
        if isinstance(sysm, peer.LlamaPeer):
            sysm.close()
    del systems
    ours_path = wfrt
    del ours

    if not args.no_kernel_curves:
        from . import kernel_curve

        print("ternary kernel variants, rows/s curves...", file=sys.stderr)
        report["kernel_curves"] = kernel_curve.run(quick)

    if not args.no_serving:
        from . import serving

        print("DLM serving and scheduler overhead...", file=sys.stderr)
        report["serving"] = serving.run(ours_path, shape, threads, quick)
    report["loadavg"].append(os.getloadavg())

    # The ceilings again at the end: a neighbour's burst at the start must not lower them.
    print("measuring ceilings again...", file=sys.stderr)
    report["ceilings_raw"]["end"] = hw.measure(**hw_args)
    report["derived"] = derive(report)
    report["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return report


def derive(report: dict) -> dict:
    """Medians, ratios and fractions of the ceilings, from a report's raw samples (so a results
    file can be re-derived: ``--show``)."""
    shape = synth.SHAPES[report["model"]["shape"]["name"]]
    threads = report["threads"]
    samples = report["samples_s"]
    foreign = report.get("samples_foreign_cores", {})
    fwd = {int(m): xs for m, xs in report["forward_samples_s"].items()}
    fwd_foreign = report.get("forward_foreign_cores", {})
    ceil = hw.summarize(hw.merge(*report["ceilings_raw"].values()))
    bw = ceil["bandwidth_bytes_per_s"][str(threads)]
    rot = [x for rep in report.get("rotation_bandwidth_bytes_per_s", []) for x in rep]
    bw_rot = max(rot) if rot else bw
    bw = max(bw, bw_rot)
    peaks = {k: v[str(threads)] for k, v in ceil["int8_macs_per_s"].items()}
    maddubs_peak = peaks["avx2_maddubs_i16acc"]
    best_kernel = max(peaks, key=peaks.get)
    macs = synth.ternary_macs_per_token(shape)
    bpt = {OURS: bytes_per_token_ours(shape), OURS_BASE3: bytes_per_token_ours(shape, "base3")}
    for q, name in PEER_NAMES.items():
        if name in samples[next(iter(samples))]:
            bpt[name] = bytes_per_token_gguf(shape, q)
    derived: dict = {"ceilings": ceil, "bytes_per_token": bpt, "bandwidth_bytes_per_s": bw,
                     "rotation_bandwidth_bytes_per_s": bw_rot, "rotation_bandwidth_measured": bool(rot),
                     "int8_peak_macs_per_s": peaks, "best_int8_kernel": best_kernel, "figures": {}}
    for fig in samples:
        n = int(fig[2:])  # tgN / ppN: tokens per sample
        row = {}
        for name, xs in samples[fig].items():
            tps = n / _med(xs)
            entry = {"tokens_per_s": tps, "median_s": _med(xs),
                     "median_foreign_cores": _med(foreign.get(fig, {}).get(name, []))}
            if fig.startswith("tg"):
                # The bandwidth read during the rotation bounds these samples; the run's best
                # (possibly another vCPU placement) is given beside it.
                entry["ceiling_tokens_per_s"] = bw_rot / bpt[name]
                entry["run_best_bw_ceiling_tokens_per_s"] = bw / bpt[name]
                entry["fraction_of_run_best_bw_ceiling"] = tps / entry["run_best_bw_ceiling_tokens_per_s"]
            else:
                entry["ceiling_tokens_per_s"] = maddubs_peak / macs
                entry["ceiling_best_kernel_tokens_per_s"] = peaks[best_kernel] / macs
            entry["fraction_of_ceiling"] = tps / entry["ceiling_tokens_per_s"]
            row[name] = entry
        if BASELINE in row:
            base = samples[fig][BASELINE]
            for name, xs in samples[fig].items():
                row[name]["ratio_vs_baseline"] = row[name]["tokens_per_s"] / row[BASELINE]["tokens_per_s"]
                # Paired per rep (adjacent in time), robust to drift between reps.
                row[name]["paired_ratios"] = [b / x for b, x in zip(base, xs)]
        derived["figures"][fig] = row
    tbytes = ternary_bytes_ours(shape)
    fwd_rows = {}
    for m, xs in fwd.items():
        tps = m / _med(xs)
        roof = m / max(tbytes / bw, m * macs / peaks[best_kernel])
        fwd_rows[str(m)] = {"tokens_per_s": tps, "median_step_s": _med(xs),
                            "median_foreign_cores": _med(fwd_foreign.get(str(m), [])),
                            "fraction_of_maddubs_peak": tps * macs / maddubs_peak,
                            "fraction_of_best_peak": tps * macs / peaks[best_kernel],
                            "roofline_tokens_per_s": roof, "fraction_of_roofline": tps / roof}
    derived["forward"] = fwd_rows
    if "1" in fwd_rows and "32" in fwd_rows:
        derived["forward_32_rows_in_1_row_steps"] = fwd_rows["32"]["median_step_s"] / fwd_rows["1"]["median_step_s"]
    return derived


def _fmt(x: float, nd: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:.{nd}f}"


def table(report: dict) -> str:
    d = report["derived"]
    lines = []
    bw = d["bandwidth_bytes_per_s"]
    peaks = d["int8_peak_macs_per_s"]
    lines.append(f"Machine: {report['machine'].get('cpu_model')}, {report['threads']} threads; "
                 f"DRAM read {d['rotation_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s during the rotation"
                 f"{'' if d.get('rotation_bandwidth_measured') else ' (not measured: the run best)'}, "
                 f"{bw / 1e9:.1f} best in the run; int8 peak "
                 + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items()) + " G MAC/s")
    lines.append("")
    names = list(next(iter(d["figures"].values())).keys())
    head = "| figure | " + " | ".join(f"{n} tok/s" for n in names)
    has_base = BASELINE in names
    if has_base:
        head += " | " + " | ".join(f"{n} / TQ2_0" for n in names if n != BASELINE)
    head += " | " + " | ".join(f"{n} % ceiling" for n in names) + " | others' CPU (cores) |"
    lines.append(head)
    lines.append("|" + "---|" * (head.count("|") - 1))
    for fig, row in d["figures"].items():
        cells = [_fmt(row[n]["tokens_per_s"]) for n in names]
        if has_base:
            cells += [_fmt(row[n]["ratio_vs_baseline"], 2) + "x" for n in names if n != BASELINE]
        cells += [_fmt(100 * row[n]["fraction_of_ceiling"], 0) + " %"
                  + (f" ({_fmt(100 * row[n]['fraction_of_run_best_bw_ceiling'], 0)} %)"
                     if "fraction_of_run_best_bw_ceiling" in row[n] else "") for n in names]
        cells.append(_fmt(max(row[n]["median_foreign_cores"] for n in names), 2))
        label = fig if not fig.startswith("tg") else f"{fig} (prompt 16)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    noisy = [fig for fig, row in d["figures"].items()
             if max(r["median_foreign_cores"] for r in row.values()) > NOISY_CORES]
    if noisy:
        lines.append(f"\nNote: other processes used > {NOISY_CORES} cores during {', '.join(noisy)}: either "
                     "they took time from the system measured, or it left a core idle for them "
                     "(samples_cpu in the JSON has its own CPU use and preemptions).")
    lines.append("")
    lines.append("Ceilings: tg = DRAM read bandwidth measured during the rotation (in brackets: the run's best) "
                 "/ weight bytes read per token ("
                 + ", ".join(f"{n} {b / 1e6:.0f} MB" for n, b in d["bytes_per_token"].items())
                 + "); pp = avx2 maddubs peak / "
                 f"{report['model']['ternary_macs_per_token'] / 1e9:.2f} G MAC per token.")
    lines.append("")
    lines.append(f"| {OURS} forward rows | tok/s | step ms | % maddubs peak | % {d['best_int8_kernel']} peak "
                 "| % roofline | others' CPU (cores) |")
    lines.append("|---|---|---|---|---|---|---|")
    for m, r in d["forward"].items():
        lines.append(f"| {m} | {_fmt(r['tokens_per_s'])} | {_fmt(1e3 * r['median_step_s'], 1)} | "
                     f"{_fmt(100 * r['fraction_of_maddubs_peak'], 0)} % | "
                     f"{_fmt(100 * r['fraction_of_best_peak'], 0)} % | {_fmt(100 * r['fraction_of_roofline'], 0)} % | "
                     f"{_fmt(r['median_foreign_cores'], 2)} |")
    if "forward_32_rows_in_1_row_steps" in d:
        lines.append("")
        lines.append(f"A 32-row step costs {d['forward_32_rows_in_1_row_steps']:.1f} one-row steps "
                     f"(isa {report['versions']['wrinklefree_rt_isa']}, ternary plan "
                     f"{report['versions'].get('wrinklefree_rt_ternary_plan', 'tiles')}).")
    if "kernel_curves" in report:
        from . import kernel_curve

        lines.append("")
        lines.append("```")
        lines.append(kernel_curve.table_text(report["kernel_curves"]["derived"]))
        lines.append("```")
    if "serving" in report:
        from . import serving

        lines.append("")
        lines += serving.table(report["serving"])
    lines.append("")
    lines.append("| load (warm page cache) | load s | first token s | RSS after load MiB | RSS after first token MiB |")
    lines.append("|---|---|---|---|---|")
    for name, r in report["load"].items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][-120:]} | | | |")
            continue
        lines.append(f"| {name} | {r['load_s']:.3f} | {r['first_token_s']:.3f} | "
                     f"{r['after_load']['VmRSS']:.0f} | {r['after_first_token']['VmRSS']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=0, help="rotations (default 5, quick 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-peer", action="store_true", help="skip llama.cpp")
    ap.add_argument("--no-serving", action="store_true", help="skip the DLM/scheduler figures")
    ap.add_argument("--no-base3", action="store_true", help="skip the engine with base-3 packed weights")
    ap.add_argument("--no-kernel-curves", action="store_true", help="skip the per-variant ternary kernel curves")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="first wait up to S seconds for other processes to go quiet")
    ap.add_argument("--nice", type=int, default=0, metavar="N",
                    help="set this run's autogroup nice to N (e.g. -10, root) so neighbours disturb it less")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--show", type=Path, metavar="JSON", help="print the table of a results file and exit")
    args = ap.parse_args(argv)
    if args.show:
        report = json.loads(args.show.read_text())
        report["derived"] = derive(report)
        print(table(report))
        return
    t0 = time.perf_counter()
    report = run(args)
    report["wall_s"] = time.perf_counter() - t0
    text = table(report)
    report["table_markdown"] = text
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} "
          f"({report['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
