"""StepPlan / StepOutput: one forward's rows as the flat arrays BitNetBatchEngine.step takes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sequence import MODE_SAMPLE, Sequence, Work

__all__ = ["StepPlan", "StepOutput", "Segment"]


@dataclass
class Segment:
    """One sequence's part of a step: its rows and its output rows, as index ranges."""

    seq: Sequence
    work: Work
    rows: slice
    outs: slice


@dataclass
class StepOutput:
    tokens: np.ndarray  # [n_out] int32
    probs: np.ndarray   # [n_out] float32
    errors: dict[int, Exception]  # segment index -> why that sequence's rows failed


class StepPlan:
    """Rows from many sequences. Built by the scheduler, run by the engine in a worker thread."""

    def __init__(self, segments: list[tuple[Sequence, Work]]):
        self.segments: list[Segment] = []
        slots, positions, tokens = [], [], []
        out_rows, out_mode, exclude, temperature, top_k, top_p, uniform = [], [], [], [], [], [], []
        for seq, work in segments:
            row0, out0 = len(positions), len(out_rows)
            span = range(work.start, work.end)
            slots.extend([seq.slot_id] * len(span))
            positions.extend(span)
            tokens.extend(seq.tokens[work.start:work.end])
            draws = iter(work.uniforms)
            sp = seq.params
            for pos, mode in zip(work.out_positions, work.out_modes):
                out_rows.append(row0 + pos - work.start)
                out_mode.append(mode)
                exclude.append(seq.exclude_id)
                sampled = mode == MODE_SAMPLE
                temperature.append(sp.temperature if sampled else 1.0)
                top_k.append(sp.top_k if sampled else 0)
                top_p.append(sp.top_p if sampled else 1.0)
                uniform.append(next(draws) if sampled else 0.0)
            self.segments.append(Segment(seq, work, slice(row0, len(positions)), slice(out0, len(out_rows))))
        self.slots = np.asarray(slots, np.int32)
        self.positions = np.asarray(positions, np.int32)
        self.tokens = np.asarray(tokens, np.int32)
        self.out_rows = np.asarray(out_rows, np.int32)
        self.out_mode = np.asarray(out_mode, np.int8)
        self.exclude = np.asarray(exclude, np.int32)
        self.temperature = np.asarray(temperature, np.float32)
        self.top_k = np.asarray(top_k, np.int32)
        self.top_p = np.asarray(top_p, np.float32)
        self.uniform = np.asarray(uniform, np.float32)

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
            if len(self.segments) == 1:
                n = len(self.out_rows)
                return StepOutput(np.zeros(n, np.int32), np.zeros(n, np.float32), {0: e})
        tokens = np.zeros(len(self.out_rows), np.int32)
        probs = np.zeros(len(self.out_rows), np.float32)
        errors: dict[int, Exception] = {}
        for i, seg in enumerate(self.segments):
            try:
                tokens[seg.outs], probs[seg.outs] = StepPlan([(seg.seq, seg.work)])._run(core)
            except cancelled:
                raise
            except Exception as e:
                errors[i] = e
        return StepOutput(tokens, probs, errors)
