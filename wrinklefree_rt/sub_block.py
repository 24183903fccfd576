"""The cost-aware sub-block size (``DiffusionParams(sub_block_size="auto")``).

A denoising step's candidates are the still-masked positions of the first sub-block that has
any; a wider sub-block offers more candidates to commit but runs more rows. Which width commits
the most tokens per second depends on how likely a candidate is to pass the threshold
(``CommitRates``, learnt from the recent decisions of the requests with the same settings) and
on what rows cost on this machine (``wrinklefree_rt.step_costs``, measured from the engine's
steps). Before each step the request takes the width with the most expected committed tokens
per second of its share of the step (``Scheduler._width_price``).

This changes decisions, not only which rows run (the candidates depend on the width), so it is
a named option, not the default. Every decision is still the threshold rule over the chosen
sub-block: the reference decoder given the same widths produces the same tokens
(``Sequence.sub_block_trace`` records them; tests/test_sub_block.py).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["CommitRates", "choose_sub_block", "WIDER_MARGIN"]

WIDER_MARGIN = 1.05


class CommitRates:
    """How often a candidate ``d`` positions after its step's first candidate passed the
    threshold, per ``d``, over the recent decisions of every request with the same settings
    (their predictions come from one model; a request alone decides too few times to learn
    from). An offset's older observations fade (weight ``memory`` per newer one at that offset)
    as the text changes; decisions that did not reach an offset (narrow widths) leave what is
    known of it as it was."""

    def __init__(self, block: int, memory: float = 0.99):
        self.passed = [0.0] * block
        self.seen = [0.0] * block
        self.memory = memory
        self._curve: list[float] | None = None

    def observe(self, cands: Sequence[int], probs: Sequence[float], threshold: float) -> None:
        m, first = self.memory, cands[0]
        for c, p in zip(cands[1:], probs[1:]):
            d = c - first
            self.seen[d] = self.seen[d] * m + 1.0
            self.passed[d] = self.passed[d] * m + (p >= threshold)
        self._curve = None

    def curve(self) -> list[float]:
        """Estimated pass rate per offset: half a pass in one observation as the prior (1/2
        before any data, so that the far candidates are tried early and learnt), and never
        above a nearer offset's (confidence falls with distance; offsets tried rarely take
        their nearer neighbours' rate)."""
        if self._curve is None:
            rates = [1.0]
            for passed, seen in zip(self.passed[1:], self.seen[1:]):
                rates.append(min(rates[-1], (passed + 0.5) / (seen + 1.0)))
            self._curve = rates
        return self._curve

    def expected_commits(self, cands: Sequence[int]) -> float:
        curve, first = self.curve(), cands[0]
        return 1.0 + sum(curve[c - first] for c in cands[1:])


def choose_sub_block(options: Sequence[tuple[int, Sequence[int], int]], rates: CommitRates,
                     price: Callable[[int], float]) -> int:
    """The width of ``options`` (width, its candidates, the rows its step would run, narrowest
    first) with the most expected commits per second of ``price(rows)``. A wider width must
    beat the best narrower one by ``WIDER_MARGIN``: measured step costs of nearby row counts
    differ by noise, and a near tie is not worth the rows."""
    best_width, best_score = options[0][0], -1.0
    for width, cands, rows in options:
        score = rates.expected_commits(cands) / max(price(rows), 1e-12)
        if score > best_score * WIDER_MARGIN:
            best_width, best_score = width, score
    return best_width
