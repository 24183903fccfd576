"""Ray Serve replicas on one machine: 1 replica x 2 threads vs 2 replicas x 1 thread at 16 and 64
concurrent streaming clients, and the Ray path's overhead against the plain server at 1 client
(both servers up, measured in turn).

Same weights (synthetic 2B-shape ``.wfrt``), prompt, output length and client loop as
``bench.http_load`` (its ``run_level``: aggregate generated tokens/s, TTFT and inter-token
latency p50/p99, failed requests), and the memory (RSS, PSS) of each server's processes. Each
configuration is its own ``wrinklefree-rt serve`` process (with ``--ray``, a local Ray cluster on
127.0.0.1); it uses ``bench.http_load`` from the HTTP server's benchmark.

This machine has 2 cores: two replicas split the same cores that one replica uses, so no gain is
expected here; what this measures is what the split and Ray's proxy cost. Real scale-out gains
need more machines than this one. A benchmark reports; it never passes or fails.

    python -m bench.ray_serving --single-requests 4   docs/scale-out.md's table (~5 min on 2 cores)
    python -m bench.ray_serving --quick               16 clients only, 16 tokens (smoke)

Needs the ray extra. Writes bench/results/ray-<UTC timestamp>.json.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

from wrinklefree_rt import random_model as synth

from . import artifacts, hw
from .http_load import OURS, ServerProcess, _prompt, run_level
from .report import RESULTS


def start(model_dir: Path, replicas: int, threads: int, max_clients: int, positions: int, ray: bool) -> ServerProcess:
    seqs = -(-max_clients // replicas)  # every client decoding at once, spread over the replicas
    cmd = [sys.executable, "-m", "wrinklefree_rt.cli", "serve", str(model_dir), "--port", "0",
           "--served-model-name", "bench", "--threads", str(threads), "--max-num-seqs", str(seqs),
           "--kv-cache-tokens", str(seqs * positions), "--max-waiting", str(4 * max_clients), "--log-level", "warning"]
    if ray:
        cmd += ["--ray", "--replicas", str(replicas)]
    return ServerProcess(f"{'ray' if ray else 'plain'}-{replicas}x{threads}", cmd, None, "/health")


def memory(root_pid: int) -> dict[str, dict[str, int]]:
    """Resident (RSS) and proportional (PSS, shared pages divided among sharers) memory in MiB of
    the server process's descendants, by kind: Serve replicas, and everything else."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, ValueError, IndexError):
            continue

    def descends(pid: int) -> bool:
        while pid > 1:
            if pid == root_pid:
                return True
            pid = parents.get(pid, 0)
        return False

    out: dict[str, dict[str, int]] = {}
    for pid in parents:
        if not descends(pid):
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        kind = "replicas" if cmd.startswith("ray::ServeReplica") else "other processes"
        entry = out.setdefault(kind, {"count": 0, "rss_mib": 0, "pss_mib": 0})
        entry["count"] += 1
        for line in rollup.splitlines():
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss"):
                entry[f"{key.lower()}_mib"] += int(value.split()[0]) // 1024
    return out


def table(rows: list[dict]) -> str:
    def ms(v):
        return "-" if v is None else f"{v * 1e3:.0f}"

    out = ["| server | clients | tokens/s | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | failed |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['config']} | {r['clients']} | {r['tokens_per_s']:.1f} | {ms(r['ttft_p50'])} / "
                   f"{ms(r['ttft_p99'])} | {ms(r['itl_p50'])} / {ms(r['itl_p99'])} | {r['failed']}/{r['requests']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ray_serving", description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", type=int, nargs="+", default=[16, 64], help="concurrent clients")
    ap.add_argument("--prompt-words", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    ap.add_argument("--single-requests", type=int, default=8, help="requests in turn at 1 client (overhead)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved plain / Ray rounds at 1 client")
    ap.add_argument("--quick", action="store_true", help="16 clients, 16 tokens")
    args = ap.parse_args(argv)
    if args.quick:
        args.levels, args.max_tokens, args.single_requests, args.rounds = [16], 16, 3, 1

    model_dir = artifacts.wfrt_dir(synth.SHAPES["2b"])
    positions = args.prompt_words * 2 + args.max_tokens + 64
    prompt = _prompt(args.prompt_words)
    rows, memory_mib = [], {}

    def measure(label: str, server: ServerProcess, clients: int) -> None:
        time.sleep(1.0)  # let the previous run's threads go idle
        row = asyncio.run(run_level(server.url, OURS, clients, args.single_requests if clients == 1 else 1, prompt,
                                    args.max_tokens))
        row["config"] = label
        rows.append(row)
        print(f"{label:>10} {clients:>3} clients: {row['tokens_per_s']:7.1f} tok/s, TTFT p50 "
              f"{row['ttft_p50'] * 1e3:.0f} ms, failed {row['failed']}", file=sys.stderr, flush=True)

    # The Ray path's overhead at 1 client: both servers up (the idle one waits on an event),
    # measured in turn (A/B interleaved).
    with contextlib.ExitStack() as servers:
        plain = start(model_dir, 1, 2, 1, positions, ray=False)
        servers.callback(plain.stop)
        ray_1x2 = start(model_dir, 1, 2, max(args.levels), positions, ray=True)
        servers.callback(ray_1x2.stop)
        for _ in range(args.rounds):
            measure("plain 1x2", plain, 1)
            measure("ray 1x2", ray_1x2, 1)
        for n in args.levels:
            measure("ray 1x2", ray_1x2, n)
        memory_mib["plain 1x2"], memory_mib["ray 1x2"] = memory(plain.proc.pid), memory(ray_1x2.proc.pid)
    with contextlib.ExitStack() as servers:
        ray_2x1 = start(model_dir, 2, 1, max(args.levels), positions, ray=True)
        servers.callback(ray_2x1.stop)
        for n in args.levels:
            measure("ray 2x1", ray_2x1, n)
        memory_mib["ray 2x1"] = memory(ray_2x1.proc.pid)

    print(table(rows))
    for label, kinds in memory_mib.items():
        print(f"{label}: " + ", ".join(f"{k} x{v['count']} RSS {v['rss_mib']} MiB, PSS {v['pss_mib']} MiB"
                                       for k, v in kinds.items()))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"ray-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"command": "python -m bench.ray_serving " + " ".join(argv or sys.argv[1:]),
                               "machine": hw.machine(), "load_avg_at_end": os.getloadavg(),
                               "settings": vars(args), "rows": rows, "memory_mib": memory_mib}, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
