"""A request's whole state: tokens, K/V freshness, the open block, the mailbox its consumer reads.

"Slot" in this package means the core's KV slot (``slot_id``) only.

AR and DLM requests are one mechanism. A request decodes in blocks of ``block`` positions
aligned at multiples of ``block`` (the prompt's tail shares the first block). A DLM block
starts as mask tokens and is unmasked by confidence; an AR request is the case block = 1 with
``shift`` (row i predicts token i+1), where every block is just its first position, filled
from the previous row's prediction.

K/V freshness is one number, ``kv_valid``: positions below it hold K/V computed from the
current tokens. Writing a token at p lowers it to p rounded down to the attention block
(block-causal rows see their whole block). The rows a step needs start at ``kv_valid``; a
row's prediction is cached and reused while the row stays below ``kv_valid``, which is exact
because nothing it attends to has changed.
"""
from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import numpy as np

from ._core import OutMode
from .outputs import RequestMetrics, RequestOutput
from .params import SamplingParams
from .sub_block import CommitRates, choose_sub_block
from .tokenizer import TextStream, Tokenizer

# A float64 draw in [0, 1) may round to 1.0 as the core's float32, and the core takes [0, 1):
# draws above the largest float32 below 1 become it.
_BELOW_ONE = float(np.nextafter(np.float32(1), np.float32(0)))

__all__ = ["Sequence", "Work", "DlmSpec"]


@dataclass(frozen=True)
class DlmSpec:
    """Resolved block-diffusion settings of one request (see DiffusionParams)."""

    block_size: int
    sub_block_size: int
    threshold: float
    mask_token_id: int
    shift: bool
    attn_block: int  # 1: causal; block_size: block-causal
    provisional: bool = False  # stream the open block's decoded prefix too
    fuse_commit: bool = False  # approximation: see Sequence._pending_fill
    sub_block_auto: bool = False  # choose the width per step (wrinklefree_rt.sub_block)


@dataclass(slots=True)
class Work:
    """What one sequence contributes to a step: rows for positions [start, end), and the rows
    whose outputs it needs (positions), each with an output mode."""

    start: int
    end: int
    out_positions: list[int]
    out_modes: list[OutMode]
    uniforms: list[float] = field(default_factory=list)


class Mailbox:
    """Where the engine leaves a request's latest state for its consumer.

    The engine only flags "there is news" (never waits), and the consumer builds one
    cumulative ``RequestOutput`` from the sequence when it reads, so a slow consumer merges
    any number of updates into one and never holds the engine up.
    """

    def __init__(self) -> None:
        self._news = False
        self._event: anyio.Event | None = None  # made when the consumer waits for news
        self.error: BaseException | None = None
        # Set by consumers that read only the final output (generate, generate_batch): the
        # engine then flags them once, when the request ends, instead of after every step.
        self.final_only = False

    def notify(self) -> None:
        self._news = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if not self._news:
            self._event = anyio.Event()
            await self._event.wait()
        self._news = False
        self._event = None


class Sequence:
    def __init__(self, request_id: str, prompt: str | None, prompt_ids: list[int],
                 params: SamplingParams, dlm: DlmSpec | None, stop_ids: frozenset[int],
                 tokenizer: Tokenizer | None, exclude_id: int, commit_rates: CommitRates | None = None):
        """``commit_rates``: where a ``sub_block_auto`` request learns and reads pass rates
        (shared by requests with the same settings; its own when not given)."""
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.dlm = dlm
        self.block = dlm.block_size if dlm else 1
        self.sub_block = dlm.sub_block_size if dlm else 1
        auto = dlm is not None and dlm.sub_block_auto
        self.sub_block_auto = auto
        self._widths = [w for w in range(1, self.block + 1) if self.block % w == 0] if auto else None
        self._rates = (commit_rates or CommitRates(self.block)) if auto else None
        self.sub_block_trace: list[int] = []  # with sub_block_auto: the width of every decision
        self.shift = dlm.shift if dlm else True
        self.attn_block = dlm.attn_block if dlm else 1
        self.mask_id = dlm.mask_token_id if dlm else -1
        self.threshold = dlm.threshold if dlm else math.inf  # AR: one position per block anyway
        self.exclude_id = exclude_id  # never chosen by any output row (the model's mask token)
        self.stop_ids = stop_ids
        self.prompt_len = len(self.prompt_ids)
        self.limit = self.prompt_len + params.max_tokens  # positions [prompt_len, limit) may be generated

        self.tokens = list(prompt_ids)
        self.kv_valid = 0
        self.block_start = self._align(self.prompt_len, self.block)
        self.block_end = self.block_start + self.block
        self._first_open = max(self.block_start, self.prompt_len)  # the open block's first generated position
        self._fuse_commit = dlm is not None and dlm.fuse_commit
        self._cands: list[int] | None = None  # _candidates() until a token or the block changes
        self._preds: dict[int, tuple[int, float]] = {}  # row position -> (token, prob), while fresh
        self._scan = self.prompt_len  # positions before it are decoded and hold no stop token
        self.emitted = self.prompt_len
        self._started = False
        self._open_block()

        self.rng = (np.random.default_rng(params.seed)
                    if params.temperature > 0 and not dlm else None)
        self.ar_mode = OutMode.SAMPLE if self.rng is not None else OutMode.ARGMAX  # AR rows, DLM pending fills
        # An AR request past its prompt runs one row a step, the one before its next position:
        # that row's position (None before). The scheduler plans these requests as a group.
        self.decode_row: int | None = None
        self.text = TextStream(tokenizer, params.stop) if tokenizer is not None else None
        self.output_ids: list[int] = []
        self.finished = False
        self.slot_id: int | None = None
        self.aborted = False
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.mailbox = Mailbox()
        self.arrival = time.perf_counter()
        self.admitted: float | None = None
        self.first_output: float | None = None
        self.finished_at: float | None = None
        self.forwards = 0
        self.rows = 0
        self.skipped = 0  # consecutive steps this sequence was left out of (for fairness)

    # ----- geometry -------------------------------------------------------------------------
    @property
    def kv_positions(self) -> int:
        """KV positions to reserve: the last allowed token's; with block-causal attention, the
        end of its block (every row of a block runs, masks past the limit included)."""
        if self.attn_block > 1:
            return self._align(self.limit + self.attn_block - 1, self.attn_block)
        return self.limit

    @staticmethod
    def _align(n: int, b: int) -> int:
        return n - n % b

    def _set(self, pos: int, token: int) -> None:
        self.tokens[pos] = token
        self._cands = None
        aligned = pos - pos % self.attn_block
        if aligned < self.kv_valid:
            self.kv_valid = aligned

    def _open_block(self) -> None:
        """Fill the open block's generated positions with masks (AR: the pending token)."""
        first, end = self._first_open, self.block_end
        self.tokens.extend([self.mask_id] * (end - len(self.tokens)))
        if first < end:
            self.tokens[first:end] = [self.mask_id] * (end - first)
            self._set(first, self.mask_id)  # lowers kv_valid for the whole range

    def _pending_fill(self) -> bool:
        """With shift, the block's first open position is taken from the previous row's
        prediction, computed with everything after that row absent. With ``fuse_commit`` (an
        approximation) that holds for the first block only: later blocks start all masked, so
        the previous block's commit rows share a forward with the new block's first step."""
        first = self._first_open
        if self._fuse_commit and first > self.prompt_len:
            return False
        return self.shift and self.tokens[first] == self.mask_id

    def _candidates(self) -> list[int]:
        """Still-masked positions (below the limit) of the first sub-block that has any.
        Callers only read the list (it is cached)."""
        if self._cands is None:
            masked = self._masked()
            self._cands = masked[:self._in_first_sub_block(masked, self.sub_block)]
        return self._cands

    def _masked(self) -> list[int]:
        """The open block's still-masked generated positions below the limit, in order."""
        tokens, mask = self.tokens, self.mask_id
        return [p for p in range(max(self.block_start, self.prompt_len), min(self.block_end, self.limit))
                if tokens[p] == mask]

    def _in_first_sub_block(self, masked: list[int], width: int) -> int:
        """How many of ``masked`` lie in the sub-block of ``width`` that holds the first."""
        if not masked:
            return 0
        start = self.block_start
        return bisect.bisect_left(masked, start + ((masked[0] - start) // width + 1) * width)

    # ----- scheduling -----------------------------------------------------------------------
    @property
    def in_prefill(self) -> bool:
        """No prediction made yet: the scheduler packs these after decode/denoise rows."""
        return not self._started

    def next_work(self, budget: int, first_in_step: bool,
                  price: Callable[[int], float] | None = None) -> Work | None:
        """Rows this sequence needs next, within ``budget`` rows. The first sequence of a step
        may exceed it by one indivisible unit; others get None when they do not fit.
        ``price``: seconds that n more rows add to the step (``sub_block_auto`` needs it)."""
        if self.dlm is None:  # AR: the row before the next position (prefill chunks below)
            p = self._first_open
            start = min(self.kv_valid, p - 1)
            if p - start <= budget:
                uniforms = [self.draw_uniform()] if self.rng is not None else []
                return Work(start, p, [p - 1], [self.ar_mode], uniforms)
        if self._pending_fill():
            target = self._first_open
            need, end, independent = [target - 1], target, target
            start = self._first_row(need)
            mode = self.ar_mode
        else:
            if price is not None and self.sub_block_auto:
                self._choose_width(price)
            need, start, end = self._denoise_rows()
            independent = self.block_start  # rows below it do not see the open block
            mode = OutMode.ARGMAX
        if end - start > budget:
            # Only rows that do not depend on the open block may run as a separate chunk, and
            # block-causal chunks hold whole blocks so that every row sees its block complete.
            # A chunk starts at the first stale row: one of rows whose K/V is already valid
            # (a fused commit's output row) would change nothing and run again forever.
            stale = self._align(self.kv_valid, self.attn_block)
            cut = min(self._align(stale + max(budget, 0), self.attn_block), independent)
            if cut <= stale:
                if not first_in_step:
                    return None
                cut = min(stale + self.attn_block, independent) if stale < independent else end
            if cut < end:
                return Work(stale, cut, [], [])
        uniforms = [self.draw_uniform() for _ in need] if mode == OutMode.SAMPLE else []
        return Work(start, end, need, [mode] * len(need), uniforms)

    def draw_uniform(self) -> float:
        """The next draw of a sampled request's generator, as the core takes it."""
        assert self.rng is not None
        return min(float(self.rng.random()), _BELOW_ONE)

    def _first_row(self, need: list[int]) -> int:
        return min(self._align(self.kv_valid, self.attn_block), self._align(min(need), self.attn_block))

    def _denoise_rows(self) -> tuple[list[int], int, int]:
        """The rows whose predictions the candidates lack, and the row range a step runs."""
        need = [r for r in (c - 1 if self.shift else c for c in self._candidates()) if r not in self._preds]
        return (need, *self._row_range(need)) if need else (need, 0, 0)

    def _row_range(self, need: list[int]) -> tuple[int, int]:
        """The rows a denoising step runs to predict rows ``need`` (ascending, not empty)."""
        # Block-causal rows see their whole block, so the whole block runs.
        return self._first_row(need), self.block_end if self.attn_block > 1 else need[-1] + 1

    def _choose_width(self, price: Callable[[int], float]) -> None:
        """The rows and candidates of every width from one scan of the block (this runs for
        every auto request before every step)."""
        assert self._widths is not None and self._rates is not None  # sub_block_auto
        masked, preds, back = self._masked(), self._preds, 1 if self.shift else 0
        missing = [p - back for p in masked if p - back not in preds]  # rows to run, in order
        options = []
        for width in self._widths:
            n = self._in_first_sub_block(masked, width)
            need = bisect.bisect_right(missing, masked[n - 1] - back) if n else 0
            if need:  # a width whose candidates are all predicted would need no step
                start, end = self._row_range(missing[:need])
                options.append((width, masked[:n], end - start))
        self.sub_block, self._cands = choose_sub_block(options, self._rates, price), None

    # ----- results --------------------------------------------------------------------------
    def apply(self, work: Work, tokens: list[int], probs: list[float]) -> bool:
        """Take a step's outputs for ``work``; returns True when new output is ready."""
        if work.end > self.kv_valid:
            self.kv_valid = work.end
        self.forwards += 1
        self.rows += work.end - work.start
        if self.dlm is None and tokens:
            return self._take_ar_tokens(tokens[:1])
        for pos, tok, prob in zip(work.out_positions, tokens, probs):
            self._preds[pos] = (tok, prob)
            self._started = True
        decoded = self._scan
        released = self._progress()
        return released or (self.dlm is not None and self.dlm.provisional and self._scan > decoded)

    def receive(self, error: Exception | None, take: Callable[..., bool], *outputs) -> int:
        """Take a step's outputs (``take(*outputs)``: ``apply`` or ``take_decoded``) or the
        step's error, and flag the consumer; returns how many tokens were released."""
        if self.finished or self.aborted:
            return 0
        if error is not None:
            self.fail(error)
            return 0
        before = len(self.output_ids)
        try:
            news = take(*outputs)
        except Exception as e:  # a bug or bad state in one request fails that request alone
            self.fail(e)
            return 0
        if self.finished:
            self.mailbox.notify()
        elif news and not self.mailbox.final_only:
            self.mailbox.notify()
        return len(self.output_ids) - before

    def take_decoded(self, tokens: list[int]) -> bool:
        """``apply`` for the rows a decoding AR request (``decode_row``) ran in consecutive
        steps, one token each, in order."""
        k = len(tokens)
        self.kv_valid = self.decode_row + k  # type: ignore[operator]
        self.forwards += k
        self.rows += k
        return self._take_ar_tokens(tokens)

    def _progress(self) -> bool:
        """Make every decision the fresh predictions allow (several when a step's candidates
        were all predicted before and nothing they see has changed since)."""
        released = False
        while self._preds and not self.finished:  # every decision below needs a prediction
            if self._pending_fill():
                first = self._first_open
                if first - 1 not in self._preds:
                    break
                self._set(first, self._preds.pop(first - 1)[0])
            else:
                cands = self._candidates()
                if not cands or not all((c - 1 if self.shift else c) in self._preds for c in cands):
                    break
                self._unmask(cands)
            self._drop_stale_preds()
            released = self._advance() or released
        return released

    def _take_ar_tokens(self, run: list[int]) -> bool:
        """What ``_progress`` does for an AR request's outputs (the tokens for the pending
        position and the ones after it, each predicted by the row before it), without its
        generality: AR runs it for every token. Stops at the first token that ends the request."""
        p = self._first_open
        stop = -1 if self.stop_ids.isdisjoint(run) else next(i for i, t in enumerate(run) if t in self.stop_ids)
        if stop >= 0:
            run = run[:stop + 1]
        end = p + len(run)  # one past the last new token
        self.tokens[p:] = run  # over the pending position's placeholder
        self._started = True
        if stop >= 0:
            self._finish_at(end, "stop", run[-1])
            return True
        self._scan = end
        if end >= self.limit:
            self._finish_at(self.limit, "length", None)
            return True
        released = self._release(end)
        if not self.finished:  # the next one-position block, as _advance and _open_block make it
            self.block_start = self._first_open = end
            self.block_end = end + 1
            self.tokens.append(self.mask_id)
            self.decode_row = end - 1
        return released

    def _unmask(self, cands: list[int]) -> None:
        rows = [c - 1 if self.shift else c for c in cands]
        probs = [self._preds[r][1] for r in rows]
        best = probs.index(max(probs))  # ties: leftmost
        if self._rates is not None:
            self._rates.observe(cands, probs, self.threshold)
            self.sub_block_trace.append(self.sub_block)
        for i, (c, r) in enumerate(zip(cands, rows)):
            if i == best or probs[i] >= self.threshold:
                self._set(c, self._preds.pop(r)[0])  # a row predicts one position only

    def _drop_stale_preds(self) -> None:
        if self._preds:
            for pos in [p for p in self._preds if p >= self.kv_valid]:
                del self._preds[pos]

    def _advance(self) -> bool:
        """Check for a stop token or the limit below the first mask; move to the next block
        when this one is complete. Returns True when tokens were released."""
        decoded = self._scan  # everything before it is decoded
        end = min(self.block_end, self.limit)
        while decoded < end and self.tokens[decoded] != self.mask_id:
            decoded += 1
        for p in range(self._scan, decoded):
            if self.tokens[p] in self.stop_ids:
                self._finish_at(p + 1, "stop", self.tokens[p])
                return True
        self._scan = decoded
        if decoded >= self.limit:
            self._finish_at(self.limit, "length", None)
            return True
        if decoded < self.block_end:
            return False
        released = self._release(self.block_end)
        if not self.finished:
            self.block_start = self.block_end
            self.block_end += self.block
            self._first_open = self.block_start  # past the prompt from the second block on
            self._cands = None
            self._open_block()
        return released

    def _release(self, upto: int) -> bool:
        new = self.tokens[self.emitted:upto]
        self.emitted = upto
        if not new:
            return False
        if self.first_output is None:
            self.first_output = time.perf_counter()
        if self.text is None:
            self.output_ids += new
            return True
        for tok in new:
            self.output_ids.append(tok)
            if tok not in self.stop_ids and self.text.add(tok):
                # A stop string ended inside this token: nothing after it is output.
                self._finish("stop", self.text.stopped)
                return True
        return True

    def _finish_at(self, upto: int, reason: str, stop_reason: int | str | None) -> None:
        self._release(upto)
        if not self.finished:
            self._finish(reason, stop_reason)

    def _finish(self, reason: str, stop_reason: int | str | None) -> None:
        if self.text is not None and self.text.stopped is None and self.text.finish():
            reason, stop_reason = "stop", self.text.stopped
        self.finished = True
        self.finish_reason, self.stop_reason = reason, stop_reason
        self.finished_at = time.perf_counter()

    # ----- lifecycle ------------------------------------------------------------------------
    def abort(self) -> None:
        """Ask the scheduler to drop this request at the next step boundary (any thread)."""
        self.aborted = True

    def fail(self, error: BaseException) -> None:
        self.mailbox.error = error
        self.finished = True
        self.finished_at = time.perf_counter()
        self.mailbox.notify()

    def snapshot(self) -> RequestOutput:
        now = self.finished_at or time.perf_counter()
        admitted = self.admitted if self.admitted is not None else now
        n = len(self.output_ids)
        metrics = RequestMetrics(
            queue_time=admitted - self.arrival,
            ttft=None if self.first_output is None else self.first_output - self.arrival,
            latency=None if self.finished_at is None else self.finished_at - self.arrival,
            tokens_per_s=n / (now - admitted) if n and now > admitted else None,
            forwards=self.forwards, rows=self.rows,
            tokens_per_forward=n / self.forwards if self.forwards else None)
        final = self.finished
        provisional = [] if final or not (self.dlm and self.dlm.provisional) else self.tokens[self.emitted:self._scan]
        return RequestOutput(
            request_id=self.request_id, prompt=self.prompt, prompt_token_ids=self.prompt_ids,
            text=self.text.visible(final) if self.text is not None else "",
            token_ids=list(self.output_ids), finished=final,
            finish_reason=self.finish_reason, stop_reason=self.stop_reason, metrics=metrics,
            provisional_token_ids=provisional,
            provisional_text=self.text.preview(provisional) if provisional and self.text is not None else "")
