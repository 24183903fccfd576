"""This runtime's side of the benchmarks: ``BitNetBatchEngine`` driven step by step.

The same work as the peer (bench/peer.py): ``tg`` runs one row per step and returns the argmax
(computed in C++); ``pp`` runs the whole prompt as one step with one output row. ``forward``
is the raw step throughput at M rows, laid out as DLM blocks would be: sequences of up to 32
rows at positions [0, 32) with block attention, so the linears dominate and attention is small.
"""
from __future__ import annotations

import time

import numpy as np

from wrinklefree_rt._core import BitNetBatchEngine

from . import peer

__all__ = ["Ours", "BLOCK"]

BLOCK = 32


class Ours:
    def __init__(self, engine: BitNetBatchEngine, load_s: float):
        self.eng = engine
        self.load_s = load_s

    def _fresh(self, n_positions: int, attn_block: int = 1) -> int:
        slot = self.eng.alloc_sequence(attn_block)
        self.eng.reserve(slot, n_positions)
        return slot

    def tg(self, prompt_len: int, gen: int) -> float:
        """Seconds for ``gen`` single-row decode steps after a ``prompt_len`` prompt."""
        slot = self._fresh(prompt_len + gen)
        try:
            toks, _, _ = self.eng.step([slot] * prompt_len, np.arange(prompt_len),
                                       peer.prompt(prompt_len), [prompt_len - 1])
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
            self.eng.step([slot] * n, np.arange(n), peer.prompt(n), [n - 1])
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
            tok = np.asarray(peer.prompt(rows), dtype=np.int32)
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
