"""Positions past 1,024 (where the original system corrupted memory) and a model's very last
position: logits against transformers there, requests that end exactly at the last position,
and one position more refused before admission."""
from __future__ import annotations

import anyio
import numpy as np
import pytest

from engine_helpers import fresh_sequence, hf_logits, make_engine, prefill, random_ids
from reference_dlm import reference_ar, reference_dlm
from storm_helpers import MASK, settle
from test_engine_reference import _assert_matches, _reach
from tiny_models import make_hf_model, save_hf_model
from wrinklefree_rt import DiffusionParams, Engine, InvalidRequestError, SamplingParams
from wrinklefree_rt.config import parse_config
from wrinklefree_rt.formats.hf import tensors_from_state_dict

LAST = 1100  # max_position_embeddings: past 1,024, and not a multiple of the 32-position KV page


@pytest.fixture(scope="module")
def model():
    return make_hf_model(seed=6, max_position_embeddings=LAST)


@pytest.fixture(scope="module")
def engine(model, tmp_path_factory):
    return Engine.from_pretrained(save_hf_model(model, tmp_path_factory.mktemp("long")), lm_head="fp32",
                                  max_num_seqs=4)


def test_logits_at_every_position_up_to_the_last(model):
    cfg = parse_config(model.config.to_dict())
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    eng = make_engine(cfg, tensors_from_state_dict(sd, cfg), lm_head="fp32")
    ids = random_ids(cfg, LAST, seed=3)
    ours = prefill(eng, fresh_sequence(eng, LAST), ids, chunk=97)  # chunks straddle 1,024
    margins = []
    ref = hf_logits(model, ids, margins=margins)
    reach = _reach(margins)
    _assert_matches(ours[1024:], ref[1024:], reach[1024:], max_off_rows=0.05)
    _assert_matches(ours, ref, reach, max_off_rows=0.05)


def long_prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(4, MASK, n).tolist()


def test_requests_end_exactly_at_the_last_position(engine, model):
    ar_prompt, dlm_prompt, causal_prompt = long_prompt(LAST - 4, 1), long_prompt(LAST - 7, 2), long_prompt(LAST - 20, 3)
    ar = SamplingParams(max_tokens=4, ignore_eos=True)
    dlm_sp = SamplingParams(max_tokens=7, ignore_eos=True)
    dlm = DiffusionParams(block_size=4, threshold=0.7, mask_token_id=MASK, attention="block", shift=False)
    # Causal attention runs no row past the limit, so a block may reach past the model's end
    # (1100 is not a multiple of 32); block-causal rows need their whole block.
    causal_sp = SamplingParams(max_tokens=20, ignore_eos=True)
    causal = DiffusionParams(block_size=32, sub_block_size=8, threshold=0.7, mask_token_id=MASK)
    block32 = DiffusionParams(block_size=32, threshold=0.7, mask_token_id=MASK, attention="block", shift=False)

    async def run():
        async with engine:
            outs = [await engine.generate(ar_prompt, ar), await engine.generate(dlm_prompt, dlm_sp, diffusion=dlm),
                    await engine.generate(causal_prompt, causal_sp, diffusion=causal)]
            for p, sp, d in ((ar_prompt, {"max_tokens": 5}, None), (dlm_prompt, {"max_tokens": 8}, dlm),
                             (causal_prompt, {"max_tokens": 21}, causal), (causal_prompt, causal_sp, block32)):
                with pytest.raises(InvalidRequestError, match=f"positions; the model has {LAST}"):
                    await engine.generate(p, sp, diffusion=d)
            await settle(engine)
        return outs

    out_ar, out_dlm, out_causal = anyio.run(run)
    assert len(out_causal.prompt_token_ids) + len(out_causal.token_ids) == LAST
    assert out_causal.token_ids == reference_dlm(model, causal_prompt, block=32, sub_block=8, threshold=0.7,
                                                 mask_id=MASK, shift=True, block_causal=False, max_tokens=20,
                                                 stop_ids=set())
    assert len(out_ar.prompt_token_ids) + len(out_ar.token_ids) == LAST
    assert out_ar.token_ids == reference_ar(model, ar_prompt, 4, mask_id=MASK)
    assert len(out_dlm.prompt_token_ids) + len(out_dlm.token_ids) == LAST
    assert out_dlm.token_ids == reference_dlm(model, dlm_prompt, block=4, sub_block=4, threshold=0.7,
                                              mask_id=MASK, shift=False, block_causal=True, max_tokens=7,
                                              stop_ids=set())
