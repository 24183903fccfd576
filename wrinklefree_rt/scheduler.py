"""Continuous batching: which sequences run, and which of their rows go into the next forward.

``schedule()`` frees what ended, admits waiting requests FCFS while a slot and their KV pages
are free (a request that does not fit waits; it never fails for lack of room), then packs
rows under the token budget: decoding AR requests first (a ``DecodeBatch``, kept from step to
step while they stay the same), then denoising rows, prefill chunks fill the rest.
``run()`` runs the plan on the core (in a worker thread), retrying each sequence's rows alone
when the batch fails. ``apply()`` hands each sequence its outputs and flags its consumer (one
that reads only the final output, when the request ends). None of them awaits anything: the
engine's loop task calls them in turn. Every step's rows and seconds (planning to applied
outputs) go into ``costs``, which prices the rows of requests that choose their sub-block
width by cost (``DiffusionParams(sub_block_size="auto")``).
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import numpy as np

from .decode_batch import DecodeBatch
from .errors import StepCancelledError
from .sequence import Sequence, Work
from .step import StepPlan, StepResult, StepRows
from .step_costs import StepCosts

__all__ = ["Scheduler", "SchedulerStats"]

_MAX_SKIPS = 4


class SchedulerStats:
    """Engine-wide counters (what ``Engine.stats()`` reports)."""

    def __init__(self) -> None:
        self.forwards = 0
        self.rows = 0
        self.tokens = 0           # output tokens released to requests
        self.step_time = 0.0      # seconds inside BitNetBatchEngine.step
        self.schedule_time = 0.0  # seconds in schedule() + apply()


class Scheduler:
    def __init__(self, core, max_num_batched_tokens: int, step_costs: dict[int, float] | None = None):
        self.core = core
        self.budget = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.stats = SchedulerStats()
        self.costs = StepCosts(step_costs)
        self._last_plan: StepPlan | None = None
        self._decoders: DecodeBatch | None = None
        self._auto_running = 0  # running requests with sub_block_size="auto" (none: no pricing)
        self._planned_at = 0.0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> StepPlan | None:
        t0 = self._planned_at = time.perf_counter()
        self._release_ended()
        self._admit()
        running = self.running
        decoders = self._decoders
        if decoders is not None and decoders.seqs == running:  # the last step's decoders, all and only
            same = StepPlan([], decoders)
            self.stats.schedule_time += time.perf_counter() - t0
            return same
        # Decoding AR requests need one row each and go first, as a DecodeBatch that lasts while
        # they stay the same. When they do not all fit, or a sequence was left out of a step,
        # every sequence takes its turn in the fair order below instead.
        decoding = [s for s in running if s.decode_row is not None]
        if len(decoding) > self.budget or any(s.skipped for s in running):
            decoding = []
        if decoders is not None and decoders.seqs != decoding:
            self.stats.tokens += decoders.flush()
            decoders = None
        if decoders is None and decoding:
            decoders = DecodeBatch(decoding)
        self._decoders = decoders
        rest = [s for s in running if s.decode_row is None] if decoding else running
        chosen: list[tuple[Sequence, Work]] = []
        used = len(decoding)
        # Decode/denoise before prefill, except that a sequence left out of several steps in a
        # row goes first (a busy engine must not starve a prefill); then longest-waiting first.
        if not decoding and any(s.skipped for s in rest):
            order = sorted(rest, key=lambda s: (s.in_prefill and s.skipped < _MAX_SKIPS, -s.skipped))
        else:  # the same order, without a key per sequence
            order = [s for s in rest if not s.in_prefill]
            if len(order) < len(rest):
                order += [s for s in rest if s.in_prefill]
        price = self._width_price(running)
        for seq in order:
            work = seq.next_work(self.budget - used, first_in_step=not (chosen or decoding), price=price)
            if work is None:
                seq.skipped += 1
                continue
            seq.skipped = 0
            chosen.append((seq, work))
            used += work.end - work.start
        plan = StepPlan(chosen, decoders) if chosen or decoders else None
        self.stats.schedule_time += time.perf_counter() - t0
        return plan

    def _width_price(self, running: list[Sequence]) -> Callable[[int], float] | None:
        """The price of ``rows`` rows for a request choosing its sub-block width: its share of
        a step in which every decoding ``sub_block_auto`` request runs that many rows beside
        the rows the last step ran for the others. (Priced one by one against the others' rows
        as they are, every request would find its extra rows cheap, or all dear, at once.)"""
        if not self._auto_running:
            return None
        n = sum(1 for s in running if s.sub_block_auto and not s.in_prefill)
        if not n:
            return None
        last = self._last_plan
        fixed = len(last.decoding) + sum(w.end - w.start for s, w in zip(last.seqs, last.works)
                                         if not s.sub_block_auto) if last else 0
        cost = self.costs.cost
        return lambda rows: cost(fixed + n * rows) / n

    def run(self, plan: StepPlan) -> StepResult:
        """Run the plan's forward; called in a worker thread (it touches only the core, and the
        GIL is released inside). If the step fails, each sequence's rows run alone so that only
        the request the error is about fails: a failed step leaves the KV cache as it was, so the
        rerun is exact. A cancelled step (``aclose()``) is not retried."""
        try:
            return StepResult(*self._forward(plan.rows), {})
        except StepCancelledError:
            raise
        except Exception as e:
            if plan.n_segments == 1:
                n = len(plan.rows.out_rows)
                return StepResult(np.zeros(n, np.int32), np.zeros(n, np.float32), {0: e})
        tokens = np.zeros(len(plan.rows.out_rows), np.int32)
        probs = np.zeros(len(plan.rows.out_rows), np.float32)
        errors: dict[int, Exception] = {}
        bounds = plan.out_bounds
        for k in range(plan.n_segments):
            outs = slice(bounds[k], bounds[k + 1])
            try:
                tokens[outs], probs[outs] = self._forward(plan.segment_rows(k))
            except StepCancelledError:
                raise
            except Exception as e:
                errors[k] = e
        return StepResult(tokens, probs, errors)

    def _forward(self, rows: StepRows) -> tuple[np.ndarray, np.ndarray]:
        tokens, probs, _ = self.core.step(rows.slots, rows.positions, rows.tokens, rows.out_rows,
                                          out_mode=rows.out_mode, exclude=rows.exclude,
                                          temperature=rows.temperature, top_k=rows.top_k,
                                          top_p=rows.top_p, uniform=rows.uniform)
        return np.asarray(tokens, np.int32), np.asarray(probs, np.float32)

    def apply(self, plan: StepPlan, out: StepResult, step_time: float) -> None:
        t0 = time.perf_counter()
        self.stats.forwards += 1
        self.stats.rows += plan.n_rows
        self.stats.step_time += step_time
        errors, n_dec = out.errors, len(plan.decoding)
        released, ended = plan.decoders.take(out.tokens[:n_dec], errors) if plan.decoders else (0, False)
        if plan.works:
            bounds, tokens, probs = plan.out_bounds, out.tokens.tolist(), out.probs.tolist()
            for k, (seq, work) in enumerate(zip(plan.seqs, plan.works), start=n_dec):
                o0, o1 = bounds[k], bounds[k + 1]
                released += seq.receive(errors.get(k), seq.apply, work, tokens[o0:o1], probs[o0:o1])
        self.stats.tokens += released
        if ended or errors or any(seq.finished for seq in plan.seqs):
            self._release_ended()  # free their slots now: stats() may be read before the next schedule()
        end = time.perf_counter()
        self.stats.schedule_time += end - t0
        if self.stats.forwards > 1:  # the first step also faults the (memory-mapped) weights in
            self.costs.observe(plan.n_rows, end - self._planned_at)
        self._last_plan = plan

    def fail_all(self, error: BaseException) -> None:
        """End every request with ``error`` and return all slots and pages (engine shutdown)."""
        for seq in [*self.running, *self.waiting]:
            if not seq.finished:
                seq.fail(error)
        self.waiting.clear()
        self._decoders = None
        self._release_ended()

    def _release_ended(self) -> None:
        if any(s.aborted for s in self.waiting):
            self.waiting = deque(s for s in self.waiting if not s.aborted)
        ended = [seq for seq in self.running if seq.finished or seq.aborted]
        if ended:
            for seq in ended:
                self.core.free_sequence(seq.slot_id)
                seq.slot_id = None
                self._auto_running -= seq.sub_block_auto
            self.running = [seq for seq in self.running if seq.slot_id is not None]

    def _admit(self) -> None:
        while self.waiting and self.core.slots_free > 0:
            seq = self.waiting[0]
            slot = self.core.alloc_sequence(seq.attn_block)
            if not self.core.can_reserve(slot, seq.kv_positions):
                self.core.free_sequence(slot)
                return
            self.core.reserve(slot, seq.kv_positions)
            self.waiting.popleft()
            seq.slot_id = slot
            seq.admitted = time.perf_counter()
            self.running.append(seq)
            self._auto_running += seq.sub_block_auto
