"""StepPlan / StepOutput: one forward's rows as the flat arrays BitNetBatchEngine.step takes."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from .sequence import Sequence, Work

__all__ = ["StepPlan", "StepOutput"]


@dataclass
class StepOutput:
    tokens: np.ndarray  # [n_out] int32
    probs: np.ndarray   # [n_out] float32
    errors: dict[int, Exception]  # segment index -> why that sequence's rows failed


class StepPlan:
    """Rows from many sequences. Built by the scheduler, run by the engine in a worker thread.

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

    def _run(self, core) -> tuple[np.ndarray, np.ndarray]:
        tokens, probs, _ = core.step(self.slots, self.positions, self.tokens, self.out_rows,
                                     out_mode=self.out_mode, exclude=self.exclude,
                                     temperature=self.temperature, top_k=self.top_k,
                                     top_p=self.top_p, uniform=self.uniform)
        return np.asarray(tokens, np.int32), np.asarray(probs, np.float32)

    def run(self, core, cancelled: type[BaseException]) -> StepOutput:
        """Run the step (GIL released inside). If it fails, run each sequence's rows alone so
        that only the request the error is about fails; a failed step leaves the KV cache as
        it was, so the rerun is exact. ``cancelled`` errors are not retried."""
        try:
            return StepOutput(*self._run(core), {})
        except cancelled:
            raise
        except Exception as e:
            if len(self.works) == 1:
                n = len(self.out_rows)
                return StepOutput(np.zeros(n, np.int32), np.zeros(n, np.float32), {0: e})
        tokens = np.zeros(len(self.out_rows), np.int32)
        probs = np.zeros(len(self.out_rows), np.float32)
        errors: dict[int, Exception] = {}
        bounds = self.out_bounds
        for i, (seq, work) in enumerate(zip(self.seqs, self.works)):
            outs = slice(bounds[i], bounds[i + 1])
            try:
                tokens[outs], probs[outs] = StepPlan([(seq, work)])._run(core)
            except cancelled:
                raise
            except Exception as e:
                errors[i] = e
        return StepOutput(tokens, probs, errors)
