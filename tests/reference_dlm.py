"""Slow, obviously-correct reference decoders for the scheduler tests.

One sequence at a time, no KV cache: every step recomputes the whole sequence with the HF
transformers model, with a 4D mask implementing the attention block rule (key k visible to
query q iff k // B <= q // B; B = 1 is causal). The DLM decoder follows docs/design.md
("DLM block decoding"): blocks aligned at multiples of the block size (the prompt tail shares the first block),
sub-blocks left to right, every candidate with probability >= threshold unmasked and always
the single most confident one, the mask token never predicted, ``shift`` taking position i's
prediction from row i - 1 (and a block's first open position from the row before it, computed
with nothing after it present), the request ending at the first stop token once everything
before it is decoded, or at exactly ``max_tokens``.
"""
from __future__ import annotations

import itertools

import torch


def full_logits(model, tokens: list[int], attn_block: int) -> torch.Tensor:
    """Logits of every position of ``tokens`` recomputed from scratch, float32 ``(n, V)``."""
    n = len(tokens)
    pos = torch.arange(n)
    visible = (pos[None, :] // attn_block) <= (pos[:, None] // attn_block)  # [query, key]
    mask = torch.zeros(1, 1, n, n)
    mask.masked_fill_(~visible, torch.finfo(torch.float32).min)
    with torch.no_grad():
        return model(torch.tensor([tokens]), attention_mask=mask).logits[0].float()


def _choose(logits_row: torch.Tensor, mask_id: int | None) -> tuple[int, float]:
    row = logits_row.clone()
    if mask_id is not None:
        row[mask_id] = float("-inf")
    p = torch.softmax(row, dim=-1)
    tok = int(torch.argmax(p))
    return tok, float(p[tok])


def reference_ar(model, prompt: list[int], max_tokens: int, stop_ids=(), mask_id: int | None = None) -> list[int]:
    """Greedy autoregressive decoding (causal attention); includes a final stop token."""
    x = list(prompt)
    for _ in range(max_tokens):
        tok, _ = _choose(full_logits(model, x, 1)[-1], mask_id)
        x.append(tok)
        if tok in stop_ids:
            break
    return x[len(prompt):]


def reference_dlm(model, prompt: list[int], *, block: int, sub_block: int | list[int], threshold: float,
                  mask_id: int, shift: bool, block_causal: bool, max_tokens: int,
                  stop_ids=(), fuse_commit: bool = False) -> list[int]:
    """Greedy block-diffusion decoding of one sequence; returns the generated tokens
    (a final stop token included). ``fuse_commit``: with shift, only the first block's first
    position is filled unconditionally; later blocks start all masked. ``sub_block`` as a list:
    the width of each unmasking decision in turn (``sub_block_size="auto"`` records them), all
    of which must be used."""
    widths = iter(sub_block) if isinstance(sub_block, list) else itertools.repeat(sub_block)
    out = _dlm(model, prompt, block, widths, threshold, mask_id, shift, block_causal, max_tokens,
               stop_ids, fuse_commit)
    unused = list(widths) if isinstance(sub_block, list) else []
    assert not unused, f"{len(unused)} sub-block widths left over: the engine made more decisions"
    return out


def _dlm(model, prompt, block, widths, threshold, mask_id, shift, block_causal, max_tokens, stop_ids,
         fuse_commit) -> list[int]:
    attn = block if block_causal else 1
    L = len(prompt)
    limit = L + max_tokens
    x = list(prompt)
    start = L - L % block
    while True:
        end = start + block
        first = max(start, L)
        x += [mask_id] * (end - len(x))
        if shift and not (fuse_commit and first > L):
            x[first] = _choose(full_logits(model, x[:first], attn)[first - 1], mask_id)[0]
        while True:
            decoded = L
            while decoded < min(end, limit) and x[decoded] != mask_id:
                decoded += 1
            for p in range(L, decoded):
                if x[p] in stop_ids:
                    return x[L:p + 1]
            if decoded >= limit:
                return x[L:limit]
            if decoded >= end:
                break
            candidates = []
            width = next(widths)
            for sub in range(start, min(end, limit), width):
                candidates = [p for p in range(max(sub, L), min(sub + width, end, limit))
                              if x[p] == mask_id]
                if candidates:
                    break
            logits = full_logits(model, x, attn)
            preds = [_choose(logits[p - 1 if shift else p], mask_id) for p in candidates]
            best = max(range(len(preds)), key=lambda i: (preds[i][1], -i))
            for i, (p, (tok, prob)) in enumerate(zip(candidates, preds)):
                if i == best or prob >= threshold:
                    x[p] = tok
        start = end
