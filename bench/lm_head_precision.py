"""What the LM head's precision costs in logits, and what it saves in bytes and decode time.

    python -m bench.lm_head_precision [--threads 2] [--rows 384] [--decode-steps 32] [--rounds 5]
                                      [--no-2b] [--json PATH]

For the int8 and q4 heads against the fp32 one, on the same rows: the mean over rows of
||l - l_fp32|| / ||l_fp32||, the top-1 agreement rate, the mean next-token NLL of the held-out
text under each head (the shipped model only: a random model predicts nothing), and the head's
bytes. Rows: the first ``--rows`` tokens of the held-out books (tools/tiny_corpus.py), BOS text
EOS chapters through the shipped model's tokenizer, in windows of the model's context.

Models: the shipped trained model (wrinklefree_rt/models/tiny-web-bible) and the random 2B-4T
shape (wrinklefree_rt/random_model.py; its embeddings are the tied head), fed the same token ids.
On the 2B shape, single-sequence decode tokens/s with the int8 and the q4 head: both engines
loaded, ``--rounds`` interleaved rounds of ``--decode-steps`` steps each, medians reported.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wrinklefree_rt import random_model
from wrinklefree_rt._core import BitNetBatchEngine, q4_sizes
from wrinklefree_rt.formats import load_model_dir
from wrinklefree_rt.models import TINY_WEB_BIBLE
from wrinklefree_rt.verify import prefill_logits

from . import held_out, hw

HEADS = ("fp32", "int8", "q4")


def head_bytes(vocab: int, hidden: int) -> dict[str, int]:
    """Bytes of each head as the engine holds it: weights and float scales."""
    q4_codes, q4_scales = q4_sizes(vocab, hidden)
    return {"fp32": vocab * hidden * 4, "int8": vocab * hidden + vocab * 4, "q4": q4_codes + q4_scales * 4}


def all_logits(eng: BitNetBatchEngine, windows: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([prefill_logits(eng, ids) for ids in windows])


def compare_heads(name: str, cfg, tensors, windows, threads: int, nll: bool) -> dict:
    """Per head: logits against the fp32 head's; one engine at a time (the 2B shape is large)."""
    result: dict = {"model": name, "rows": int(sum(len(w) for w in windows)),
                    "bytes": head_bytes(cfg.vocab_size, cfg.hidden_size)}
    exact = None
    for head in tqdm(HEADS, desc=f"{name}: heads", leave=False):
        eng = BitNetBatchEngine(cfg, tensors, num_threads=threads, max_slots=1, lm_head=head)
        logits = all_logits(eng, windows)
        del eng
        gc.collect()
        row: dict = {"bytes": result["bytes"][head]}
        if exact is None:
            exact = logits
        else:
            rel = np.linalg.norm(logits - exact, axis=-1) / np.linalg.norm(exact, axis=-1)
            row["mean_rel_err"] = float(rel.mean())
            row["max_rel_err"] = float(rel.max())
            row["top1_agreement"] = float((logits.argmax(-1) == exact.argmax(-1)).mean())
        if nll:
            row["nll"] = float(held_out.next_token_nll(logits, windows)[0])
        result[head] = row
    return result


def decode_speed(cfg, tensors, threads: int, steps: int, rounds: int) -> dict:
    """Median single-sequence decode tokens/s per head, rounds interleaved."""
    engines = {h: BitNetBatchEngine(cfg, tensors, num_threads=threads, max_slots=1, lm_head=h) for h in ("int8", "q4")}
    times: dict[str, list[float]] = {h: [] for h in engines}
    for _ in tqdm(range(rounds), desc="2b decode rounds", leave=False):
        for head, eng in engines.items():
            slot = eng.alloc_sequence(1)
            eng.reserve(slot, steps + 1)
            tok = np.array([1], np.int32)
            one = np.array([slot], np.int32)
            eng.step(one, np.array([0], np.int32), tok, np.array([0], np.int32))  # warm
            start = time.perf_counter()
            for p in range(1, steps + 1):
                tok, _, _ = eng.step(one, np.array([p], np.int32), tok, np.array([0], np.int32))
            times[head].append(steps / (time.perf_counter() - start))
            eng.free_sequence(slot)
    return {h: {"tokens_per_s_median": statistics.median(t), "samples": t} for h, t in times.items()}


def print_table(res: dict) -> None:
    print(f"\n{res['model']}: {res['rows']} rows")
    print(f"  {'head':5} {'bytes':>13} {'mean rel err':>13} {'max rel err':>12} {'top-1 agree':>12} {'NLL':>8}")
    for head in HEADS:
        r = res[head]
        err = f"{r['mean_rel_err']:13.4f} {r['max_rel_err']:12.4f} {r['top1_agreement']:12.4f}" if head != "fp32" \
            else f"{'(reference)':>13} {'':12} {'':12}"
        nll = f"{r['nll']:8.4f}" if "nll" in r else f"{'-':>8}"
        print(f"  {head:5} {r['bytes']:13,d} {err} {nll}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=384)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-2b", action="store_true", help="only the shipped model")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    out: dict = {"cpu": hw.machine().get("cpu_model", "unknown"), "threads": args.threads}

    cfg, tensors = load_model_dir(TINY_WEB_BIBLE)
    windows = held_out.windows(cfg.max_position_embeddings, args.rows)
    out["trained"] = compare_heads("tiny-web-bible", cfg, tensors, windows, args.threads, nll=True)
    print_table(out["trained"])
    del tensors

    if not args.no_2b:
        shape = random_model.SHAPES["2b"]
        cfg = random_model.model_config(shape)
        tensors = random_model.tensors(shape)
        out["random_2b"] = compare_heads("random 2B-4T shape", cfg, tensors, windows, args.threads, nll=False)
        print_table(out["random_2b"])
        out["decode_2b"] = decode_speed(cfg, tensors, args.threads, args.decode_steps, args.rounds)
        d = out["decode_2b"]
        print(f"\n2B-shape decode, 1 sequence, {args.threads} threads, {args.rounds} interleaved rounds of "
              f"{args.decode_steps} steps: int8 {d['int8']['tokens_per_s_median']:.2f} tok/s, "
              f"q4 {d['q4']['tokens_per_s_median']:.2f} tok/s (medians)")
    print(f"CPU: {out['cpu']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
