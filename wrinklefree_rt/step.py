"""StepPlan / StepRows / StepResult: one forward's rows, the flat arrays BitNetBatchEngine.step
takes, and what came back. All three are plain data: the scheduler builds the plan, runs its
rows on the core and applies the result."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import cached_property
from itertools import accumulate
from typing import TYPE_CHECKING

import numpy as np

from .sequence import Sequence, Work

if TYPE_CHECKING:
    from .decode_batch import DecodeBatch

__all__ = ["StepPlan", "StepRows", "StepResult"]


@dataclass
class StepResult:
    tokens: np.ndarray  # [n_out] int32
    probs: np.ndarray   # [n_out] float32
    errors: dict[int, Exception]  # segment index -> why that sequence's rows failed


@dataclass
class StepRows:
    """The arguments of one ``BitNetBatchEngine.step`` call (docs/architecture.md)."""

    slots: np.ndarray        # [n_rows] int32
    positions: np.ndarray    # [n_rows] int32
    tokens: np.ndarray       # [n_rows] int32
    out_rows: np.ndarray     # [n_out] int32
    out_mode: np.ndarray     # [n_out] int8
    exclude: np.ndarray      # [n_out] int32
    temperature: np.ndarray  # [n_out] float32
    top_k: np.ndarray        # [n_out] int32
    top_p: np.ndarray        # [n_out] float32
    uniform: np.ndarray      # [n_out] float32

    @staticmethod
    def joined(first: "StepRows", then: "StepRows") -> "StepRows":
        """``first``'s rows, then ``then``'s (its output rows shifted past ``first``'s rows)."""
        shifted = replace(then, out_rows=then.out_rows + len(first.positions))
        return StepRows(*(np.concatenate((getattr(first, f.name), getattr(shifted, f.name))) for f in fields(StepRows)))

    def part(self, rows: slice, outs: slice) -> "StepRows":
        """Rows ``rows`` and their outputs ``outs`` as a step of their own."""
        per_out = {name: getattr(self, name)[outs] for name in
                   ("out_mode", "exclude", "temperature", "top_k", "top_p", "uniform")}
        return replace(self, slots=self.slots[rows], positions=self.positions[rows], tokens=self.tokens[rows],
                       out_rows=self.out_rows[outs] - rows.start, **per_out)


class StepPlan:
    """Rows from many sequences, and which sequence each belongs to.

    The decoding AR requests (``decoders``, one row and one output each) come first, then
    ``seqs[i]`` with ``works[i]``. Segment ``k`` of the plan (the decoders' first, one each)
    owns rows ``row_bounds[k]:row_bounds[k + 1]`` and outputs ``out_bounds[k]:out_bounds[k + 1]``.
    """

    def __init__(self, segments: list[tuple[Sequence, Work]], decoders: DecodeBatch | None = None):
        self.decoders = decoders
        self.decoding = decoders.seqs if decoders is not None else []
        self.seqs = [seq for seq, _ in segments]
        self.works = [work for _, work in segments]
        if decoders is None:
            self.rows = _segment_rows(segments)
        elif segments:
            self.rows = StepRows.joined(decoders.rows(), _segment_rows(segments))
        else:
            self.rows = decoders.rows()

    @property
    def n_rows(self) -> int:
        return len(self.rows.positions)

    @cached_property
    def row_bounds(self) -> list[int]:
        n_dec = len(self.decoding)
        return [*range(n_dec), *accumulate((w.end - w.start for w in self.works), initial=n_dec)]

    @cached_property
    def out_bounds(self) -> list[int]:
        n_dec = len(self.decoding)
        return [*range(n_dec), *accumulate((len(w.out_positions) for w in self.works), initial=n_dec)]

    @property
    def n_segments(self) -> int:
        return len(self.decoding) + len(self.works)

    def segment_rows(self, k: int) -> StepRows:
        """Segment ``k``'s rows alone (a failed step reruns one sequence at a time)."""
        rb, ob = self.row_bounds, self.out_bounds
        return self.rows.part(slice(rb[k], rb[k + 1]), slice(ob[k], ob[k + 1]))


def _segment_rows(segments: list[tuple[Sequence, Work]]) -> StepRows:
    """The rows of ``segments`` in order. Whole segments at a time (list extends,
    comprehensions): no Python work per row, and a few numpy calls whatever the batch."""
    works = [work for _, work in segments]
    slots: list[int] = []
    positions: list[int] = []
    tokens: list[int] = []
    for seq, w in segments:
        assert seq.slot_id is not None  # the scheduler plans admitted sequences only
        slots += [seq.slot_id] * (w.end - w.start)
        positions += range(w.start, w.end)
        tokens += seq.tokens[w.start:w.end]
    first_rows = accumulate((w.end - w.start for w in works), initial=0)
    out_rows = [row0 - w.start + p for row0, w in zip(first_rows, works) for p in w.out_positions]
    n = len(out_rows)
    if any(w.uniforms for w in works):  # sampled rows; a work's outputs share one mode
        sampled = [(seq.params if w.uniforms else None, u) for seq, w in segments
                   for u in (w.uniforms or [0.0] * len(w.out_positions))]
        temperature = np.asarray([sp.temperature if sp else 1.0 for sp, _ in sampled], np.float32)
        top_k = np.asarray([sp.top_k if sp else 0 for sp, _ in sampled], np.int32)
        top_p = np.asarray([sp.top_p if sp else 1.0 for sp, _ in sampled], np.float32)
        uniform = np.asarray([u for _, u in sampled], np.float32)
    else:
        temperature, top_k = np.ones(n, np.float32), np.zeros(n, np.int32)
        top_p, uniform = np.ones(n, np.float32), np.zeros(n, np.float32)
    return StepRows(np.asarray(slots, np.int32), np.asarray(positions, np.int32), np.asarray(tokens, np.int32),
                    np.asarray(out_rows, np.int32), np.asarray([m for w in works for m in w.out_modes], np.int8),
                    np.asarray([seq.exclude_id for seq, w in segments for _ in w.out_positions], np.int32),
                    temperature, top_k, top_p, uniform)
