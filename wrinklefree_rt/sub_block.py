"""The cost-aware sub-block size (``DiffusionParams(sub_block_size="auto")``).

A denoising step's candidates are the still-masked positions of the first sub-block that has
any; a wider sub-block offers more candidates to commit but runs more rows. Which width commits
the most tokens per second depends on two things this module estimates: how likely a candidate
is to pass the threshold (``CommitRates``, learnt from the request's own decisions), and what
the rows cost on this machine (``wrinklefree_rt.step_costs``, learnt from the engine's steps).
Before each step the request takes the width with the most expected committed tokens per
second of the step's marginal cost.

This changes decisions, not only which rows run (the candidates depend on the width), so it is
a named option, not the default. Every decision is still the threshold rule over the chosen
sub-block: the reference decoder given the same widths produces the same tokens
(``Sequence.sub_block_trace`` records them; tests/test_sub_block.py).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["CommitRates", "choose_sub_block"]


class CommitRates:
    """How often a candidate ``d`` positions after its step's first candidate passed the
    threshold, per ``d`` (the first candidate is the one always committed, roughly)."""

    def __init__(self, block: int):
        self.passed = [0] * block
        self.seen = [0] * block

    def observe(self, cands: Sequence[int], probs: Sequence[float], threshold: float) -> None:
        first = cands[0]
        for c, p in zip(cands[1:], probs[1:]):
            d = c - first
            self.seen[d] += 1
            self.passed[d] += p >= threshold

    def rate(self, d: int) -> float:
        """Estimated pass rate at offset ``d`` >= 1: an optimistic prior (1 before any data, 1/2
        after one miss), so that a width whose far candidates were never tried gets tried once
        its rows are cheap enough, and learnt from then on."""
        return (self.passed[d] + 1) / (self.seen[d] + 1)

    def expected_commits(self, cands: Sequence[int]) -> float:
        first = cands[0]
        return 1.0 + sum(self.rate(c - first) for c in cands[1:])


def choose_sub_block(options: Sequence[tuple[int, Sequence[int], int]], rates: CommitRates,
                     price: Callable[[int], float]) -> int:
    """The width of ``options`` (width, its candidates, the rows its step would run) with the
    most expected commits per second of ``price(rows)``; ties go to the narrower width."""
    best_width, best_score = options[0][0], -1.0
    for width, cands, rows in options:
        score = rates.expected_commits(cands) / max(price(rows), 1e-12)
        if score > best_score * (1 + 1e-9):
            best_width, best_score = width, score
    return best_width
