"""StepPlan / StepResult: one forward's rows as the flat arrays BitNetBatchEngine.step takes,
and what came back. Both are plain data: the scheduler builds the plan, runs it on the core and
applies the result."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from .sequence import Sequence, Work

__all__ = ["StepPlan", "StepResult"]


@dataclass
class StepResult:
    tokens: np.ndarray  # [n_out] int32
    probs: np.ndarray   # [n_out] float32
    errors: dict[int, Exception]  # segment index -> why that sequence's rows failed


class StepPlan:
    """Rows from many sequences, as the arrays of one ``BitNetBatchEngine.step`` call.

    Segment ``i`` (``seqs[i]``, ``works[i]``) owns output rows ``out_bounds[i]:out_bounds[i + 1]``.
    """

    def __init__(self, segments: list[tuple[Sequence, Work]]):
        # Whole segments at a time (list extends, comprehensions): no Python work per row, and
        # a few numpy calls per step whatever the batch.
        self.seqs = [seq for seq, _ in segments]
        self.works = works = [work for _, work in segments]
        slots: list[int] = []
        positions: list[int] = []
        tokens: list[int] = []
        for seq, w in segments:
            assert seq.slot_id is not None  # the scheduler plans admitted sequences only
            slots += [seq.slot_id] * (w.end - w.start)
            positions += range(w.start, w.end)
            tokens += seq.tokens[w.start:w.end]
        first_rows = accumulate((w.end - w.start for w in works), initial=0)
        self.out_bounds = list(accumulate((len(w.out_positions) for w in works), initial=0))
        self.slots = np.asarray(slots, np.int32)
        self.positions = np.asarray(positions, np.int32)
        self.tokens = np.asarray(tokens, np.int32)
        self.out_rows = np.asarray([row0 - w.start + p for row0, w in zip(first_rows, works)
                                    for p in w.out_positions], np.int32)
        self.out_mode = np.asarray([m for w in works for m in w.out_modes], np.int8)
        self.exclude = np.asarray([seq.exclude_id for seq, w in segments for _ in w.out_positions], np.int32)
        if any(w.uniforms for w in works):  # sampled rows; a work's outputs share one mode
            sampled = [(seq.params if w.uniforms else None, u) for seq, w in segments
                       for u in (w.uniforms or [0.0] * len(w.out_positions))]
            self.temperature = np.asarray([sp.temperature if sp else 1.0 for sp, _ in sampled], np.float32)
            self.top_k = np.asarray([sp.top_k if sp else 0 for sp, _ in sampled], np.int32)
            self.top_p = np.asarray([sp.top_p if sp else 1.0 for sp, _ in sampled], np.float32)
            self.uniform = np.asarray([u for _, u in sampled], np.float32)
        else:
            n = self.out_bounds[-1]
            self.temperature = np.ones(n, np.float32)
            self.top_k = np.zeros(n, np.int32)
            self.top_p = np.ones(n, np.float32)
            self.uniform = np.zeros(n, np.float32)

    @property
    def n_rows(self) -> int:
        return len(self.positions)
