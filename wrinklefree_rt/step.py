"""StepPlan / StepOutput: one forward's rows as the flat arrays BitNetBatchEngine.step takes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sequence import MODE_SAMPLE, Sequence, Work

__all__ = ["StepPlan", "StepOutput", "Segment"]


@dataclass(slots=True)
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
        # Python gathers one scalar per segment and one per output row (a few per sequence);
        # the per-row arrays (slots, positions) are expanded by numpy.
        self.segments: list[Segment] = []
        starts, lengths, slots, tokens = [], [], [], []
        out_rows, out_mode, n_outs, exclude, temperature, top_k, top_p, uniform = [], [], [], [], [], [], [], []
        rows = outs = 0
        for seq, work in segments:
            n, k = work.end - work.start, len(work.out_positions)
            starts.append(work.start)
            lengths.append(n)
            slots.append(seq.slot_id)
            tokens += seq.tokens[work.start:work.end]
            if k:
                shift = rows - work.start
                out_rows += [pos + shift for pos in work.out_positions]
                out_mode += work.out_modes
                n_outs.append(k)
                exclude.append(seq.exclude_id)
                if work.uniforms:  # sampled rows (a segment's outputs share one mode)
                    sp = seq.params
                    temperature.append(sp.temperature)
                    top_k.append(sp.top_k)
                    top_p.append(sp.top_p)
                    uniform += work.uniforms
                else:
                    temperature.append(1.0)
                    top_k.append(0)
                    top_p.append(1.0)
            self.segments.append(Segment(seq, work, slice(rows, rows + n), slice(outs, outs + k)))
            rows += n
            outs += k
        lengths_a = np.asarray(lengths, np.int64)
        first_rows = np.cumsum(lengths_a) - lengths_a
        shifts = np.repeat(np.asarray(starts, np.int64) - first_rows, lengths_a)
        self.positions = (np.arange(rows) + shifts).astype(np.int32)
        self.slots = np.repeat(np.asarray(slots, np.int32), lengths_a)
        self.tokens = np.asarray(tokens, np.int32)
        self.out_rows = np.asarray(out_rows, np.int32)
        self.out_mode = np.asarray(out_mode, np.int8)
        self.exclude = np.repeat(np.asarray(exclude, np.int32), n_outs)
        self.temperature = np.repeat(np.asarray(temperature, np.float32), n_outs)
        self.top_k = np.repeat(np.asarray(top_k, np.int32), n_outs)
        self.top_p = np.repeat(np.asarray(top_p, np.float32), n_outs)
        self.uniform = np.zeros(outs, np.float32)
        if uniform:
            self.uniform[self.out_mode == MODE_SAMPLE] = uniform

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
