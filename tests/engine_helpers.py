"""Shared by tests/test_engine_*.py: tiny random HF BitNet models as engines, and their logits
from transformers (the reference) and from BitNetBatchEngine."""
from __future__ import annotations

import numpy as np
import torch
import transformers.integrations.bitnet as bitnet_integration

from tiny_models import make_hf_model
from wrinklefree_rt._core import BitNetBatchEngine
from wrinklefree_rt.config import parse_config
from wrinklefree_rt.formats.hf import tensors_from_state_dict


def hf_and_tensors(seed: int = 0, **overrides):
    """(HF model, ModelConfig, canonical tensors) for one tiny random model."""
    model = make_hf_model(seed=seed, **overrides)
    cfg = parse_config(model.config.to_dict())
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return model, cfg, tensors_from_state_dict(sd, cfg)


def make_engine(cfg, tensors, *, lm_head="fp32", num_threads=2, max_slots=8, **kw) -> BitNetBatchEngine:
    return BitNetBatchEngine(cfg, tensors, num_threads=num_threads, max_slots=max_slots, lm_head=lm_head, **kw)


def hf_logits(model, ids, attn_block: int = 1, margins: list | None = None) -> np.ndarray:
    """transformers' logits (T, V) for one sequence; attn_block B > 1 applies the block-causal
    rule p_k // B <= p_q // B as an additive 4D mask.

    With `margins` (a list), appends per row the smallest distance of any int8 activation
    x * 127/max|x| (fp32, every BitLinear of every layer) from a rounding boundary k + 0.5: a
    row within ~1e-4 of one may round the other way under a different (equally exact)
    summation order, which moves its logits by far more than the float noise.
    """
    if margins is not None:
        rows = []
        orig = bitnet_integration.ActQuant.apply

        def recording(x):
            x32 = x.detach().float()[0]
            a = 127.0 / x32.abs().amax(-1, keepdim=True).clamp(min=1e-5)
            v = (x32 * a).double()
            rows.append(((v - v.floor()) - 0.5).abs().amin(-1))
            return orig(x)

        bitnet_integration.ActQuant.apply = recording
        try:
            out = hf_logits(model, ids, attn_block)
        finally:
            bitnet_integration.ActQuant.apply = orig
        margins.extend(torch.stack(rows).amin(0).tolist())
        return out
    ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.long)[None]
    kwargs = {}
    if attn_block > 1:
        pos = torch.arange(ids_t.shape[1])
        allowed = (pos[None, :] // attn_block) <= (pos[:, None] // attn_block)
        mask = torch.zeros(1, 1, len(pos), len(pos))
        mask[0, 0][~allowed] = torch.finfo(torch.float32).min
        kwargs["attention_mask"] = mask
    with torch.no_grad():
        return model(ids_t, **kwargs).logits[0].numpy()


def prefill(eng: BitNetBatchEngine, slot: int, ids, start: int = 0, chunk: int | None = None) -> np.ndarray:
    """Feed ids at positions start.. in steps of `chunk` rows (all at once by default); returns
    the logits of every row (len(ids), V)."""
    ids = np.asarray(ids)
    chunk = chunk or len(ids)
    out = []
    for c0 in range(0, len(ids), chunk):
        part = ids[c0:c0 + chunk]
        n = len(part)
        _, _, logits = eng.step(np.full(n, slot), start + c0 + np.arange(n), part, np.arange(n), out_mode=2)
        out.append(logits)
    return np.concatenate(out)


def fresh_sequence(eng: BitNetBatchEngine, n_positions: int, attn_block: int = 1) -> int:
    slot = eng.alloc_sequence(attn_block)
    eng.reserve(slot, n_positions)
    return slot


def random_ids(cfg, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, n)
