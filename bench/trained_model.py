"""The shipped trained model (wrinklefree_rt/models/tiny-web-bible): validation perplexity, and
block-diffusion decoding against AR decoding on the same engine and prompts.

    python -m bench.trained_model [--threads 2] [--max-tokens 64] [--json PATH] [--step-costs RESULTS.json]

- Validation perplexity: the held-out books (tools/tiny_corpus.py) as BOS text EOS chapters,
  cut into windows of the model's context, every row's logits from the runtime (fp32 LM head).
- Decoding: N = 1, 4, 16 concurrent requests (N held-out chapter openings of 24 tokens, BOS
  included), ``max_tokens`` new tokens each, ``ignore_eos``; AR greedy, and DLM with block 16 and
  32 (sub-block 8) at thresholds 0.5 / 0.7 / 0.9, and 0.1 / 0.3 to see what less confident commits
  buy; and with ``sub_block_size="auto"`` at 0.5 / 0.9 (block 32): once with the widths chosen
  from this engine's own measured step costs (the tiny model's), once from the 2B step costs
  below ("2B prices": the widths a 2B model of the same confidence would get on this machine).
  Per run: committed tokens per engine forward (all requests together), the mean per
  request, rows per forward, committed tokens/s (wall), and the share of committed tokens that
  equal AR's greedy output before the first difference (AR: 1).
- The 2B estimate: the same rows per forward and tokens per forward priced with the 2B-shape
  step times that ``bench.run`` measured (``forward_samples_s`` of the newest
  ``bench/results/*.json``: median step time at 1 / 8 / 32 / 128 / 512 rows, linearly
  interpolated), giving an estimated committed tokens/s for a 2B model of the same behaviour,
  and the committed tokens per forward at which that DLM run would match AR's estimated 2B
  speed at the same N (its rows per forward held fixed).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import anyio
import numpy as np

from wrinklefree_rt import DiffusionParams, Engine, SamplingParams
from wrinklefree_rt._core import BitNetBatchEngine
from wrinklefree_rt.formats import load_model_dir
from wrinklefree_rt.models import TINY_WEB_BIBLE
from wrinklefree_rt.tokenizer import Tokenizer
from wrinklefree_rt.verify import prefill_logits

from . import held_out, run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import tiny_corpus

PROMPT_TOKENS = 24
CONCURRENCY = (1, 4, 16)
BLOCKS = (16, 32)
THRESHOLDS = (0.5, 0.7, 0.9)
# Below the thresholds: how many tokens per forward the model commits when allowed to
# trust less confident predictions, and what that costs (agreement with AR's greedy output).
LOW_THRESHOLDS = (0.1, 0.3)
AUTO_THRESHOLDS = (0.5, 0.9)


def validation_perplexity(threads: int) -> tuple[float, int]:
    """(perplexity, tokens scored) of the held-out books through the runtime."""
    cfg, tensors = load_model_dir(TINY_WEB_BIBLE)
    eng = BitNetBatchEngine(cfg, tensors, num_threads=threads, max_slots=1, lm_head="fp32")
    windows = held_out.windows(cfg.max_position_embeddings)
    nll, count = held_out.next_token_nll(np.concatenate([prefill_logits(eng, ids) for ids in windows]), windows)
    return float(np.exp(nll)), count


def _agreement(outs, ar_outs) -> float:
    """Share of tokens equal to AR's greedy output up to the first difference, over all requests."""
    same = total = 0
    for out, ar in zip(outs, ar_outs):
        a, b = out.token_ids, ar.token_ids
        same += next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        total += len(a)
    return same / total


async def _round(engine: Engine, prompts, max_tokens: int, diffusion: DiffusionParams | None) -> tuple[dict, list]:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    s0 = engine.stats()
    outs = [None] * len(prompts)
    start = time.perf_counter()

    async def one(i, p):
        outs[i] = await engine.generate(p, params, diffusion=diffusion)

    async with anyio.create_task_group() as tg:
        for i, p in enumerate(prompts):
            tg.start_soon(one, i, p)
    wall = time.perf_counter() - start
    s1 = engine.stats()
    forwards = s1.forwards - s0.forwards
    tokens = sum(len(o.token_ids) for o in outs)
    # Decode forwards only: the prompts' prefill is one forward of every request's rows.
    return {"n": len(prompts), "forwards": forwards, "tokens": tokens, "wall_s": wall,
            "tokens_per_forward": tokens / forwards, "rows_per_forward": (s1.rows - s0.rows) / forwards,
            "per_request_tokens_per_forward": statistics.mean(o.metrics.tokens_per_forward for o in outs),
            "tokens_per_s": tokens / wall}, outs


def step_costs_2b(path: Path | None = None) -> tuple[list[int], list[float], str] | None:
    """Median 2B-shape step time per forward size from a bench.run result (default: the newest)."""
    if path is not None:
        report = json.loads(path.read_text())
    else:
        found = run.newest_result(lambda report: bool(report.get("forward_samples_s")))
        if found is None:
            return None
        path, report = found
    samples = report["forward_samples_s"]
    rows = sorted(int(r) for r in samples)
    return rows, [statistics.median(samples[str(r)]) for r in rows], path.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--step-costs", type=Path,
                        help="the bench.run results file whose 2B step times price the runs (default: the newest)")
    args = parser.parse_args(argv)
    tok = Tokenizer.from_dir(TINY_WEB_BIBLE)
    ppl, scored = validation_perplexity(args.threads)
    print(f"validation perplexity {ppl:.2f} over {scored} held-out tokens (runtime, fp32 LM head)")

    openings = [tok.encode(text)[:PROMPT_TOKENS] for text in tiny_corpus.split()[1]]
    costs = step_costs_2b(args.step_costs)
    config = dict(num_threads=args.threads, max_num_seqs=max(CONCURRENCY), max_num_batched_tokens=1024)
    engine = Engine.from_pretrained(TINY_WEB_BIBLE, **config)
    priced_2b = Engine.from_pretrained(TINY_WEB_BIBLE, **config, step_costs=dict(zip(costs[0], costs[1]))) \
        if costs else None
    modes: list[tuple[str, DiffusionParams | None, Engine]] = [("AR", None, engine)]
    modes += [(f"DLM b{b} t{t}", DiffusionParams(block_size=b, sub_block_size=8, threshold=t), engine)
              for b in BLOCKS for t in LOW_THRESHOLDS + THRESHOLDS]
    for label, eng in (("auto", engine), ("auto (2B prices)", priced_2b)):
        modes += [(f"DLM b32 t{t} {label}", DiffusionParams(block_size=32, sub_block_size="auto", threshold=t), eng)
                  for t in AUTO_THRESHOLDS if eng is not None]

    async def all_rounds():
        async with engine, contextlib.AsyncExitStack() as stack:
            if priced_2b is not None:
                await stack.enter_async_context(priced_2b)
            await _round(engine, openings[:1], 8, None)  # warm-up
            rounds = []
            for n in CONCURRENCY:
                prompts = [openings[i % len(openings)] for i in range(n)]
                ar_outs = None
                for name, d, eng in modes:  # AR first
                    r, outs = await _round(eng, prompts, args.max_tokens, d)
                    ar_outs = ar_outs or outs
                    rounds.append(dict(mode=name, same_as_ar=_agreement(outs, ar_outs), **r))
            return rounds

    rows = anyio.run(all_rounds)
    print(f"{engine.core.isa}, {engine.core.num_threads} threads; prompts {PROMPT_TOKENS} tokens, "
          f"{args.max_tokens} new tokens each, ignore_eos")
    header = ("| mode | N | forwards | committed tokens / forward | per request | rows / forward | tok/s (tiny) "
              "| same as AR |")
    if costs:
        header += " est. 2B tok/s | 2B break-even tokens / forward |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    ar_2b = {}
    for r in rows:
        line = (f"| {r['mode']} | {r['n']} | {r['forwards']} | {r['tokens_per_forward']:.2f} | "
                f"{r['per_request_tokens_per_forward']:.2f} | {r['rows_per_forward']:.1f} | {r['tokens_per_s']:.0f} | "
                f"{r['same_as_ar']:.2f} |")
        if costs:
            step = float(np.interp(r["rows_per_forward"], costs[0], costs[1]))
            r["est_2b_step_s"] = step
            r["est_2b_tokens_per_s"] = r["tokens_per_forward"] / step
            ar_2b.setdefault(r["n"], r["est_2b_tokens_per_s"])  # AR runs first at every N
            # Committed tokens per forward at which this DLM run's rows would match AR's 2B speed.
            r["est_2b_break_even_tokens_per_forward"] = ar_2b[r["n"]] * step
            line += f" {r['est_2b_tokens_per_s']:.1f} | {r['est_2b_break_even_tokens_per_forward']:.2f} |"
        print(line)
    if costs:
        print(f"2B step times: medians of forward_samples_s in bench/results/{costs[2]}: "
              + ", ".join(f"{n} rows {1e3 * s:.1f} ms" for n, s in zip(costs[0], costs[1])))
    if args.json:
        args.json.write_text(json.dumps({"validation_perplexity": ppl, "validation_tokens": scored,
                                         "isa": engine.core.isa, "threads": engine.core.num_threads,
                                         "rounds": rows, "step_costs_2b": costs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
