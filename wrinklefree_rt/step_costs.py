"""What a step of R rows costs on this machine, measured from the engine's own steps.

The scheduler records every step it runs (rows, seconds from planning to applied outputs) in
buckets of row counts (1, 2, 3-4, 5-8, ...): per bucket an exponential moving average of the
seconds and of the rows. ``cost(rows)`` interpolates linearly between measured buckets. Outside
them it is optimistic on purpose: in proportion to the rows below the smallest measurement (a
step never costs less than its fixed part), the largest measurement's cost above it (more rows
never cost less). A policy that prices work with it tries an unmeasured size when it looks
worth it and measures it by doing so, instead of ruling it out on a guess.

The cost-aware sub-block choice (``wrinklefree_rt.sub_block``, priced in
``Scheduler._width_price``) maximises committed tokens per second of these costs.
"""
from __future__ import annotations

import math

__all__ = ["StepCosts"]

# Weight of the newest step in a bucket's moving average: steps vary by a few percent and the
# machine's speed drifts over minutes; a handful of steps should move the estimate.
_NEWEST = 0.25
_MAX_BUCKETS = 24  # rows up to 2**23, more than any step's token budget


class StepCosts:
    def __init__(self, seconds: dict[int, float] | None = None):
        """``seconds``: a fixed table {rows: seconds per step} that ``observe`` leaves alone
        (tests, or costs measured elsewhere, e.g. ``python -m bench.run``)."""
        self._rows: list[float | None] = [None] * _MAX_BUCKETS
        self._secs: list[float] = [0.0] * _MAX_BUCKETS
        self._measured: list[int] = []  # the buckets in self._points, in order
        self.frozen = seconds is not None
        for rows, secs in (seconds or {}).items():
            if rows < 1 or not secs > 0:
                raise ValueError(f"step costs: {rows} rows -> {secs} s; rows must be >= 1 and seconds > 0")
            b = _bucket(rows)
            self._rows[b], self._secs[b] = float(rows), float(secs)
        self._points = self._sorted_points()

    def observe(self, rows: int, seconds: float) -> None:
        if self.frozen or rows < 1 or not seconds > 0:
            return
        b = _bucket(rows)
        old = self._rows[b]
        if old is None:
            self._rows[b], self._secs[b] = float(rows), seconds
            self._points = self._sorted_points()
        else:  # every step: only this bucket's point moves
            self._rows[b] = new = old + _NEWEST * (rows - old)
            self._secs[b] += _NEWEST * (seconds - self._secs[b])
            self._points[self._measured.index(b)] = (new, self._secs[b])

    def cost(self, rows: float) -> float:
        """Estimated seconds of one step of ``rows`` rows (0 with nothing measured yet)."""
        pts = self._points
        if not pts:
            return 0.0
        r0, s0 = pts[0]
        if rows <= r0:
            return s0 * rows / r0
        for r1, s1 in pts[1:]:
            if rows <= r1:
                return s0 + (s1 - s0) * (rows - r0) / (r1 - r0)
            r0, s0 = r1, s1
        return s0

    def at_most(self, rows: int) -> float:
        """A measured bound on a step of ``rows`` rows: the cost of the smallest measured size
        at or above it (steps cost more with more rows); infinite when none is measured."""
        return next((s for r, s in self._points if r >= rows), math.inf)

    def table(self) -> dict[int, float]:
        """The measured buckets: {mean rows (rounded): seconds per step}."""
        return {round(r): s for r, s in self._points}

    def _sorted_points(self) -> list[tuple[float, float]]:
        self._measured = [b for b, r in enumerate(self._rows) if r is not None]
        return [(r, s) for r, s in zip(self._rows, self._secs) if r is not None]


def _bucket(rows: int) -> int:
    return min((rows - 1).bit_length(), _MAX_BUCKETS - 1)
