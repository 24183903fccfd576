"""The measuring core shared by ``bench/`` (side-by-side runs against llama.cpp) and
``wrinklefree-rt bench`` (a user's own model): ``BitNetBatchEngine`` driven step by step.

It lives in the package, not in ``bench/`` (a top-level folder that is not installed), so that
the installed CLI measures exactly what the benchmarks measure.

The same work as the llama.cpp peer (bench/peer.py): ``tg`` runs one row per step and returns
the argmax (computed in C++); ``pp`` runs the whole prompt as one step with one output row.
``forward`` is the raw step throughput at M rows, laid out as DLM blocks would be: sequences of
up to 32 rows at positions [0, 32) with block attention, so the linears dominate and attention
is small.
"""
from __future__ import annotations

import time

import numpy as np

from ._core import BitNetBatchEngine

__all__ = ["StepBench", "BLOCK", "prompt_ids"]

BLOCK = 32
# First token id of the synthetic prompts (both systems of a side-by-side run get the same ids):
# ordinary Llama-3 word pieces from there on, so no special-token paths are taken.
PROMPT_BASE = 1000


def prompt_ids(n: int, vocab_size: int | None = None) -> list[int]:
    """``n`` deterministic prompt token ids (wrapped into a smaller vocabulary)."""
    ids = [PROMPT_BASE + i for i in range(n)]
    return [t % vocab_size for t in ids] if vocab_size else ids


class StepBench:
    def __init__(self, engine: BitNetBatchEngine, load_s: float, vocab_size: int | None = None):
        self.eng = engine
        self.load_s = load_s
        self.vocab_size = vocab_size

    def _fresh(self, n_positions: int, attn_block: int = 1) -> int:
        slot = self.eng.alloc_sequence(attn_block)
        self.eng.reserve(slot, n_positions)
        return slot

    def tg(self, prompt_len: int, gen: int) -> float:
        """Seconds for ``gen`` single-row decode steps after a ``prompt_len`` prompt."""
        slot = self._fresh(prompt_len + gen)
        try:
            toks, _, _ = self.eng.step([slot] * prompt_len, np.arange(prompt_len),
                                       prompt_ids(prompt_len, self.vocab_size), [prompt_len - 1])
            tok = int(toks[0])
            one = [slot]
            t0 = time.perf_counter()
            for pos in range(prompt_len, prompt_len + gen):
                toks, _, _ = self.eng.step(one, [pos], [tok], [0])
                tok = int(toks[0])
            return time.perf_counter() - t0
        finally:
            self.eng.free_sequence(slot)

    def pp(self, n: int) -> float:
        """Seconds to run an ``n``-row prompt in one step, argmax of the last row."""
        slot = self._fresh(n)
        try:
            t0 = time.perf_counter()
            self.eng.step([slot] * n, np.arange(n), prompt_ids(n, self.vocab_size), [n - 1])
            return time.perf_counter() - t0
        finally:
            self.eng.free_sequence(slot)

    def forward(self, rows: int, reps: int, out_rows: int = 0) -> list[float]:
        """Seconds per step of ``rows`` rows (ceil(rows / 32) block-attention sequences),
        ``out_rows`` of them with an argmax output, repeated ``reps`` times."""
        n_seq = -(-rows // BLOCK)
        slots = [self._fresh(BLOCK, BLOCK) for _ in range(n_seq)]
        try:
            idx = np.arange(rows)
            s = np.asarray(slots, dtype=np.int32)[idx // BLOCK]
            pos = idx % BLOCK
            tok = np.asarray(prompt_ids(rows, self.vocab_size), dtype=np.int32)
            out = np.arange(rows - out_rows, rows, dtype=np.int32)
            samples = []
            for _ in range(reps):
                t0 = time.perf_counter()
                self.eng.step(s, pos, tok, out)
                samples.append(time.perf_counter() - t0)
            return samples
        finally:
            for slot in slots:
                self.eng.free_sequence(slot)
