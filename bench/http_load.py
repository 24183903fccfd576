"""HTTP serving load, side by side: ``wrinklefree-rt serve`` vs llama-cpp-python's own OpenAI
server (``python -m llama_cpp.server``), on the same synthetic 2B-shape weights (this runtime's
packed ``.wfrt``, GGUF TQ2_0 for the peer), the same thread count, the same prompt and output
length, N concurrent streaming clients.

Each of N clients runs a closed loop of requests (``/v1/completions``, ``stream: true``, greedy,
a fixed number of new tokens); the levels run interleaved: ours at N, the peer at N, next N.
Per level: completed requests/s and generated tokens/s over the level's wall time, time to first
token (request sent -> first text chunk) and inter-token latency (gap between text chunks; both
servers send one chunk per token when the client keeps up) as p50 / p99, and failed requests.
A benchmark reports; it never passes or fails.

    python -m bench.http_load                     1, 4, 16, 64 clients (~15 min on 2 loaded cores)
    python -m bench.http_load --quick             1 and 4 clients, short requests (smoke)
    python -m bench.http_load --levels 16 --requests-per-client 2

Needs the server extra and the bench extra (llama-cpp-python) plus the peer server's own
dependencies: ``pip install fastapi sse-starlette starlette-context pydantic-settings``.
Writes bench/results/http-<UTC timestamp>.json with the machine, versions and every sample.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import httpx

from wrinklefree_rt import random_model as synth

from . import artifacts, hw, peer
from .report import RESULTS
from .server_process import ServerProcess

START_TIMEOUT_S = 600
REQUEST_TIMEOUT_S = 1800
OURS, PEER = "wrinklefree_rt", "llama-cpp-python"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ours(model_dir: Path, threads: int, max_clients: int, positions: int) -> ServerProcess:
    cmd = [sys.executable, "-m", "wrinklefree_rt.cli", "serve", str(model_dir), "--port", "0",
           "--served-model-name", "bench", "--threads", str(threads), "--max-num-seqs", str(max_clients),
           "--kv-cache-tokens", str(max_clients * positions), "--max-waiting", str(4 * max_clients),
           "--log-level", "warning"]
    return ServerProcess(OURS, cmd, None, "/health", START_TIMEOUT_S)


def start_peer(gguf: Path, threads: int, positions: int) -> ServerProcess:
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "bench",
           "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads),
           "--n_threads_batch", str(threads), "--n_ctx", str(max(512, positions)),
           "--interrupt_requests", "False"]  # its default cancels a running stream when another request arrives
    return ServerProcess(PEER, cmd, f"http://127.0.0.1:{port}", "/v1/models", START_TIMEOUT_S)


async def _one_request(client: httpx.AsyncClient, body: dict) -> dict:
    t0 = time.perf_counter()
    chunk_times: list[float] = []
    usage = None
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"ok": False, "status": r.status_code}
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            if event.get("choices") and event["choices"][0].get("text"):
                chunk_times.append(time.perf_counter())
    if not chunk_times:
        return {"ok": False, "status": 200}
    tokens = usage["completion_tokens"] if usage else len(chunk_times)
    return {"ok": True, "ttft": chunk_times[0] - t0, "itl": [b - a for a, b in itertools.pairwise(chunk_times)],
            "tokens": tokens, "latency": chunk_times[-1] - t0}


# Every request generates exactly max_tokens (random weights may pick EOS), with plain greedy
# decoding: llama-cpp-python's own spellings (it applies a 1.1 repeat penalty by default).
EXACT_LENGTH = {OURS: lambda n: {"ignore_eos": True}, PEER: lambda n: {"min_tokens": n, "repeat_penalty": 1.0}}


async def run_level(url: str, server: str, clients: int, requests_per_client: int, prompt: str,
                    max_tokens: int) -> dict:
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}, **EXACT_LENGTH[server](max_tokens)}
    limits = httpx.Limits(max_connections=clients + 8)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        async def loop() -> list[dict]:
            out = []
            for _ in range(requests_per_client):
                try:
                    out.append(await _one_request(client, body))
                except httpx.HTTPError as e:
                    out.append({"ok": False, "status": type(e).__name__})
            return out

        t0 = time.perf_counter()
        per_client = await asyncio.gather(*[loop() for _ in range(clients)])
        wall = time.perf_counter() - t0
    samples = [s for c in per_client for s in c]
    ok = [s for s in samples if s["ok"]]
    ttft = [s["ttft"] for s in ok]
    itl = [g for s in ok for g in s["itl"]]
    return {"server": server, "clients": clients, "wall_s": wall, "requests": len(samples), "failed": len(samples) - len(ok),
            "requests_per_s": len(ok) / wall, "tokens_per_s": sum(s["tokens"] for s in ok) / wall,
            "ttft_p50": _pct(ttft, 50), "ttft_p99": _pct(ttft, 99), "itl_p50": _pct(itl, 50), "itl_p99": _pct(itl, 99),
            "samples": samples}


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def _prompt(n_words: int) -> str:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards",
             "quietly", "judge", "boxing", "matches", "near", "old", "stone", "bridges"]
    return " ".join(words[i % len(words)] for i in range(n_words))


def table(levels: list[dict]) -> str:
    def ms(v):
        return "-" if v is None else f"{v * 1e3:.0f}"

    rows = ["| clients | server | requests/s | tokens/s | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | failed |",
            "|---|---|---|---|---|---|---|"]
    by_n: dict[int, dict[str, dict]] = {}
    for lv in levels:
        by_n.setdefault(lv["clients"], {})[lv["server"]] = lv
    for n, servers in sorted(by_n.items()):
        for name in (OURS, PEER):
            lv = servers.get(name)
            if lv is None:
                continue
            ratio = ""
            if name == OURS and PEER in servers and servers[PEER]["tokens_per_s"]:
                ratio = f" ({lv['tokens_per_s'] / servers[PEER]['tokens_per_s']:.2f}x)"
            rows.append(f"| {n} | {name} | {lv['requests_per_s']:.2f} | {lv['tokens_per_s']:.1f}{ratio} | "
                        f"{ms(lv['ttft_p50'])} / {ms(lv['ttft_p99'])} | {ms(lv['itl_p50'])} / {ms(lv['itl_p99'])} | "
                        f"{lv['failed']}/{lv['requests']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.http_load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64], help="concurrent clients")
    ap.add_argument("--requests-per-client", type=int, default=0,
                    help="requests each client sends in turn (0: 4 at 1 client, 2 at 4, 1 beyond)")
    ap.add_argument("--prompt-words", type=int, default=48, help="prompt length in words (~ tokens)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--servers", nargs="+", default=[OURS, PEER], choices=[OURS, PEER])
    ap.add_argument("--quick", action="store_true", help="1 and 4 clients, 16 tokens")
    args = ap.parse_args(argv)
    if args.quick:
        args.levels, args.max_tokens = [1, 4], 16

    shape = synth.SHAPES["2b"]
    positions = args.prompt_words * 2 + args.max_tokens + 64  # room for any tokenizer's prompt
    servers = {}
    try:
        if OURS in args.servers:
            servers[OURS] = start_ours(artifacts.wfrt_dir(shape), args.threads, max(args.levels), positions)
        if PEER in args.servers:
            servers[PEER] = start_peer(artifacts.cached_gguf(shape, "TQ2_0"), args.threads, positions)
        prompt = _prompt(args.prompt_words)
        levels = []
        for n in args.levels:
            per_client = args.requests_per_client or (4 if n == 1 else 2 if n <= 4 else 1)
            for name, server in servers.items():  # interleaved: ours at N, the peer at N
                time.sleep(1.0)  # let the previous server's threads go idle
                lv = asyncio.run(run_level(server.url, name, n, per_client, prompt, args.max_tokens))
                levels.append(lv)
                print(f"{name:>16} {n:>3} clients: {lv['tokens_per_s']:7.1f} tok/s, {lv['requests_per_s']:.2f} req/s, "
                      f"failed {lv['failed']}", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()

    print(table(levels))
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"http-{stamp}.json"
    cpu = hw.machine().get("cpu_model", "unknown")
    out.write_text(json.dumps({"command": "python -m bench.http_load " + " ".join(argv or sys.argv[1:]),
                               "cpu": cpu, "cores": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
                               "versions": peer.versions() if PEER in args.servers else {},
                               "settings": vars(args), "levels": levels}, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
