"""The shipped model's held-out text as the benches score it: the validation books
(tools/tiny_corpus.py) as BOS text EOS chapters through the shipped tokenizer, cut into windows
of the model's context, and the mean next-token NLL of logits over those windows."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from wrinklefree_rt.models import TINY_WEB_BIBLE
from wrinklefree_rt.tokenizer import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import tiny_corpus  # noqa: E402


def windows(n_ctx: int, n_rows: int | None = None) -> list[np.ndarray]:
    """The first ``n_rows`` tokens (all when None) of the held-out books, in windows of at most
    ``n_ctx``."""
    tok = Tokenizer.from_dir(TINY_WEB_BIBLE)
    eos = tok.token_id("<|end_of_text|>")
    assert eos is not None
    stream: list[int] = []
    for text in tiny_corpus.split()[1]:
        stream += tok.encode(text) + [eos]
        if n_rows is not None and len(stream) >= n_rows:
            break
    stream = stream[:n_rows]
    return [np.asarray(stream[s:s + n_ctx], np.int32) for s in range(0, len(stream), n_ctx)]


def next_token_nll(logits: np.ndarray, windows: list[np.ndarray]) -> tuple[float, int]:
    """(mean NLL in nats, tokens scored) of every window's next tokens; ``logits`` holds the
    windows' rows one after another."""
    nll, count, r = 0.0, 0, 0
    for ids in windows:
        lg = logits[r:r + len(ids) - 1].astype(np.float64)
        top = lg.max(-1, keepdims=True)
        logp = lg - top - np.log(np.exp(lg - top).sum(-1, keepdims=True))
        nll -= logp[np.arange(len(ids) - 1), ids[1:]].sum()
        count += len(ids) - 1
        r += len(ids)
    return nll / count, count
