"""DecodeBatch against taking every output at once: the same rows each step, and in the end the
same requests, token for token, whichever requests it defers (final-only consumers without stop
strings) and wherever a stop token or a limit ends one."""
from __future__ import annotations

import random

import numpy as np
import pytest

from wrinklefree_rt.decode_batch import DecodeBatch
from wrinklefree_rt.params import SamplingParams
from wrinklefree_rt.sequence import Sequence, Work

STOP = 3


def _decoding_sequence(rng: random.Random, slot: int, seed: int) -> Sequence:
    """An AR request that took its first token (so it decodes one row a step)."""
    sp = SamplingParams(max_tokens=rng.randint(2, 12), temperature=rng.choice([0.0, 0.8]), seed=seed,
                        ignore_eos=rng.random() < 0.5, stop=rng.choice([[], ["x"]]))
    stops = frozenset() if sp.ignore_eos else frozenset({STOP, 4 + slot})  # stop sets differ per request
    seq = Sequence(f"r{slot}", None, [rng.randrange(5, 50) for _ in range(rng.randint(1, 9))], sp, None,
                   stops, None, -1)
    seq.slot_id = slot
    seq.mailbox.final_only = rng.random() < 0.7
    n = seq.prompt_len
    seq.apply(Work(0, n, [n - 1], [seq.ar_mode], [0.5] if seq.rng is not None else []), [rng.randrange(5, 50)], [1.0])
    return seq


def _state(seq: Sequence):
    return (seq.tokens, seq.output_ids, seq.finished, seq.finish_reason, seq.stop_reason, seq.kv_valid,
            seq.forwards, seq.rows, seq.decode_row)


def _outputs(rng: random.Random, n: int) -> list[int]:
    return [rng.choice([STOP, 4, 5, 6]) if rng.random() < 0.1 else rng.randrange(10, 50) for _ in range(n)]


@pytest.mark.parametrize("seed", range(20))
def test_batch_equals_taking_each_output_at_once(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 10)
    batched = [_decoding_sequence(random.Random(seed * 100 + i), i, seed) for i in range(n)]
    direct = [_decoding_sequence(random.Random(seed * 100 + i), i, seed) for i in range(n)]
    released = {"batched": 0, "direct": 0}
    batch = None
    for _ in range(40):
        live = [s for s in batched if not s.finished]
        if not live:
            break
        if batch is None or batch.seqs != live:  # as the scheduler does when the set changes
            if batch is not None:
                released["batched"] += batch.flush()
            batch = DecodeBatch(live)
        rows = batch.rows()
        live_direct = [s for s in direct if not s.finished]
        assert rows.positions.tolist() == [s.decode_row for s in live_direct]
        assert rows.tokens.tolist() == [s.tokens[s.decode_row] for s in live_direct]
        assert rows.slots.tolist() == [s.slot_id for s in live_direct]
        assert rows.out_mode.tolist() == [s.ar_mode for s in live_direct]
        draws = [s.draw_uniform() if s.rng is not None else 0.0 for s in live_direct]
        np.testing.assert_array_equal(rows.uniform, np.asarray(draws, np.float32))
        outs = _outputs(rng, len(live))
        taken, ended = batch.take(np.asarray(outs, np.int32), {})
        released["batched"] += taken
        assert ended == any(s.finished for s in live)
        for seq, tok in zip(live_direct, outs):
            released["direct"] += seq.receive(None, seq.take_decoded, [tok])
        for a, b in zip(batched, direct):  # whoever may have been told of news agrees already
            if not a.mailbox.final_only or a.params.stop or b.finished:
                assert _state(a) == _state(b)
    assert all(s.finished for s in batched) and released["batched"] == released["direct"]
    for a, b in zip(batched, direct):
        assert _state(a) == _state(b)


def test_errors_fail_only_their_request_after_the_others_took_their_tokens():
    rng = random.Random(1)
    seqs = [_decoding_sequence(rng, i, 0) for i in range(3)]
    for seq in seqs:
        seq.mailbox.final_only, seq.params = True, SamplingParams(max_tokens=50, ignore_eos=True)
        seq.limit, seq.stop_ids = seq.prompt_len + 50, frozenset()
    batch = DecodeBatch(seqs)
    assert batch.take(np.asarray([20, 21, 22], np.int32), {}) == (0, False)
    assert [len(s.output_ids) for s in seqs] == [1, 1, 1]  # deferred
    assert batch.take(np.asarray([30, 31, 32], np.int32), {1: ValueError("bad row")}) == (5, True)
    assert [s.output_ids[1:] for s in seqs] == [[20, 30], [21], [22, 32]]
    assert seqs[1].finished and isinstance(seqs[1].mailbox.error, ValueError)
    assert not seqs[0].finished and not seqs[2].finished
