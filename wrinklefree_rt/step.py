"""StepPlan / StepOutput: one forward's rows as the flat arrays BitNetBatchEngine.step takes."""
from __future__ import annotations

from dataclasses import dataclass

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
        # Python touches each segment a few times in comprehensions; numpy expands the
        # per-segment values over rows and output rows.
        self.seqs = [seq for seq, _ in segments]
        self.works = works = [work for _, work in segments]
        starts = np.asarray([w.start for w in works], np.int64)
        lengths = np.asarray([w.end for w in works], np.int64) - starts
        n_outs = np.asarray([len(w.out_positions) for w in works], np.int64)
        self.out_bounds = np.concatenate(([0], np.cumsum(n_outs))).tolist()
        tokens: list[int] = []
        for seq, w in segments:
            tokens += seq.tokens[w.start:w.end]
        self.tokens = np.asarray(tokens, np.int32)
        rows = len(tokens)
        first_rows = np.cumsum(lengths) - lengths
        self.positions = (np.arange(rows) + np.repeat(starts - first_rows, lengths)).astype(np.int32)
        self.slots = np.repeat(np.asarray([seq.slot_id for seq in self.seqs], np.int32), lengths)
        out_positions = np.asarray([p for w in works for p in w.out_positions], np.int64)
        self.out_rows = (out_positions + np.repeat(first_rows - starts, n_outs)).astype(np.int32)
        self.out_mode = np.asarray([m for w in works for m in w.out_modes], np.int8)
        self.exclude = np.repeat(np.asarray([seq.exclude_id for seq in self.seqs], np.int32), n_outs)
        n = len(self.out_mode)
        self.temperature = np.ones(n, np.float32)
        self.top_k = np.zeros(n, np.int32)
        self.top_p = np.ones(n, np.float32)
        self.uniform = np.zeros(n, np.float32)
        sampled = [i for i, w in enumerate(works) if w.uniforms]  # a work's outputs share one mode
        if sampled:
            rows_of = np.repeat(np.arange(len(works)), n_outs)
            mask = np.isin(rows_of, sampled)
            params = [self.seqs[i].params for i in sampled]
            counts = n_outs[sampled]
            self.temperature[mask] = np.repeat([sp.temperature for sp in params], counts)
            self.top_k[mask] = np.repeat([sp.top_k for sp in params], counts)
            self.top_p[mask] = np.repeat([sp.top_p for sp in params], counts)
            self.uniform[mask] = [u for i in sampled for u in works[i].uniforms]

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
