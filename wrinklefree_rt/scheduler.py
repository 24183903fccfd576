"""Continuous batching: which sequences run, and which of their rows go into the next forward.

``schedule()`` frees what ended, admits waiting requests FCFS while a slot and their KV pages
are free (a request that does not fit waits; it never fails for lack of room), then packs
rows under the token budget: decode and denoising rows first, prefill chunks fill the rest.
``apply()`` hands each sequence its outputs and flags its consumer (one that reads only the
final output, when the request ends). Neither awaits anything: the engine's loop task calls
them between steps.
"""
from __future__ import annotations

import time
from collections import deque

from .sequence import Sequence, Status
from .step import StepOutput, StepPlan

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
    def __init__(self, core, max_num_batched_tokens: int):
        self.core = core
        self.budget = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.stats = SchedulerStats()

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> StepPlan | None:
        t0 = time.perf_counter()
        self._release_ended()
        self._admit()
        chosen = []
        used = 0
        # Decode/denoise before prefill, except that a sequence left out of several steps in a
        # row goes first (a busy engine must not starve a prefill); then longest-waiting first.
        running = self.running
        if any(s.skipped for s in running):
            order = sorted(running, key=lambda s: (s.in_prefill and s.skipped < _MAX_SKIPS, -s.skipped))
        else:  # the same order, without a key per sequence
            order = [s for s in running if not s.in_prefill]
            if len(order) < len(running):
                order += [s for s in running if s.in_prefill]
        for seq in order:
            work = seq.next_work(self.budget - used, first_in_step=not chosen)
            if work is None:
                seq.skipped += 1
                continue
            seq.skipped = 0
            chosen.append((seq, work))
            used += work.end - work.start
        plan = StepPlan(chosen) if chosen else None
        self.stats.schedule_time += time.perf_counter() - t0
        return plan

    def apply(self, plan: StepPlan, out: StepOutput, step_time: float) -> None:
        t0 = time.perf_counter()
        self.stats.forwards += 1
        self.stats.rows += plan.n_rows
        self.stats.step_time += step_time
        tokens, probs, errors = out.tokens.tolist(), out.probs.tolist(), out.errors
        bounds = plan.out_bounds
        for i, (seq, work) in enumerate(zip(plan.seqs, plan.works)):
            if seq.finished or seq.aborted:
                continue
            if errors and i in errors:
                seq.fail(errors[i])
                continue
            before = len(seq.output_ids)
            o0, o1 = bounds[i], bounds[i + 1]
            try:
                news = seq.apply(work, tokens[o0:o1], probs[o0:o1])
            except Exception as e:  # a bug or bad state in one request fails that request alone
                seq.fail(e)
                continue
            self.stats.tokens += len(seq.output_ids) - before
            if seq.finished or news and not seq.output.final_only:
                seq.output.notify()
        self._release_ended()
        self.stats.schedule_time += time.perf_counter() - t0

    def fail_all(self, error: BaseException) -> None:
        """End every request with ``error`` and return all slots and pages (engine shutdown)."""
        for seq in [*self.running, *self.waiting]:
            if not seq.finished:
                seq.fail(error)
        self.waiting.clear()
        self._release_ended()

    def _release_ended(self) -> None:
        if any(s.aborted for s in self.waiting):
            self.waiting = deque(s for s in self.waiting if not s.aborted)
        ended = [seq for seq in self.running if seq.finished or seq.aborted]
        if ended:
            for seq in ended:
                self.core.free_sequence(seq.slot_id)
                seq.slot_id = None
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
            seq.status = Status.RUNNING
            seq.admitted = time.perf_counter()
            self.running.append(seq)
