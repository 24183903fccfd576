"""DecodeBatch: the AR requests that decode one row a step, kept as arrays from step to step.

In steady decoding the same requests each run the row before their next position, and each
step's outputs are the next step's inputs. The batch keeps those rows as numpy arrays (slot,
position, token and the output settings), so planning a step and taking its outputs cost a few
array operations, whatever the number of requests.

A request whose consumer reads only its final output (``generate``, ``generate_batch``) and
that has no stop strings is *deferred*: it takes its tokens later, in order, all at once
(``flush``). Nothing can tell the difference, because the batch flushes before any token that
could end a request is taken (a stop token of any of them, or a request's last allowed
position), and before anyone else looks at the requests (the scheduler flushes it whenever the
set of decoding requests changes). The others (streaming consumers, stop strings) take each
token as it comes. Until a flush, ``Engine.stats().output_tokens`` does not count the deferred
tokens.
"""
from __future__ import annotations

import numpy as np

from .sequence import Sequence
from .step import StepRows

__all__ = ["DecodeBatch"]


class DecodeBatch:
    def __init__(self, seqs: list[Sequence]):
        """``seqs``: requests with ``decode_row`` set, in the order their rows run."""
        self.seqs = seqs
        n = len(seqs)
        self.positions = np.asarray([seq.decode_row for seq in seqs], np.int32)
        self.tokens = np.asarray([seq.tokens[p] for seq, p in zip(seqs, self.positions.tolist())], np.int32)
        self._slots = np.asarray([seq.slot_id for seq in seqs], np.int32)
        # A token predicted by the row at p lands at p + 1, and ends its request when p + 2
        # reaches the limit: steps left before the first step that may end one that way.
        self._room = min(seq.limit - 2 - p for seq, p in zip(seqs, self.positions.tolist()))
        deferred = [seq.mailbox.final_only and not seq.params.stop for seq in seqs]
        self._eager = [i for i, d in enumerate(deferred) if not d]
        self._deferred = [i for i, d in enumerate(deferred) if d]
        self._stop_ids = frozenset().union(*(seq.stop_ids for seq in seqs))
        self._pending: list[list[int]] = []  # outputs of the steps the deferred requests have not taken
        self._sampled = [i for i, seq in enumerate(seqs) if seq.rng is not None]
        params = [seq.params if seq.rng is not None else None for seq in seqs]
        self._out = StepRows(self._slots, self.positions, self.tokens, np.arange(n, dtype=np.int32),
                             np.asarray([seq.ar_mode for seq in seqs], np.int8),
                             np.asarray([seq.exclude_id for seq in seqs], np.int32),
                             np.asarray([sp.temperature if sp else 1.0 for sp in params], np.float32),
                             np.asarray([sp.top_k if sp else 0 for sp in params], np.int32),
                             np.asarray([sp.top_p if sp else 1.0 for sp in params], np.float32),
                             np.zeros(n, np.float32))

    def rows(self) -> StepRows:
        """The next step's rows: one per request, its output row the same index."""
        uniform = self._out.uniform
        if self._sampled:
            uniform = uniform.copy()
            uniform[self._sampled] = [self.seqs[i].draw_uniform() for i in self._sampled]
        return StepRows(self._slots, self.positions, self.tokens, self._out.out_rows, self._out.out_mode,
                        self._out.exclude, self._out.temperature, self._out.top_k, self._out.top_p, uniform)

    def take(self, tokens: np.ndarray, errors: dict[int, Exception]) -> tuple[int, bool]:
        """Hand over a step's outputs (``tokens[i]`` for ``seqs[i]``, ``errors`` by the same
        index); returns how many tokens were released, and whether a request ended."""
        outs = tokens.tolist()
        if errors or self._room <= 0 or not self._stop_ids.isdisjoint(outs):  # one may end
            released = self.flush()
            released += sum(seq.receive(errors.get(i), seq.take_decoded, [tok])
                            for i, (seq, tok) in enumerate(zip(self.seqs, outs)))
            ended = any(seq.finished for seq in self.seqs)
        else:
            self._pending.append(outs)
            released = sum(self.seqs[i].receive(None, self.seqs[i].take_decoded, [outs[i]]) for i in self._eager)
            ended = any(self.seqs[i].finished for i in self._eager)
        self.positions = self.positions + 1
        self.tokens = np.asarray(tokens, np.int32)
        self._room -= 1
        return released, ended

    def flush(self) -> int:
        """Let the deferred requests take their pending tokens; returns how many were released."""
        if not self._pending:
            return 0
        columns = list(zip(*self._pending))
        self._pending = []
        return sum(self.seqs[i].receive(None, self.seqs[i].take_decoded, list(columns[i])) for i in self._deferred)
