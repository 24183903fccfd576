"""Greedy and seeded sampled outputs, AR and DLM, do not depend on the thread count, on what
else shares the batch, nor on max_num_batched_tokens (how prefill is chunked and rows packed)."""
from __future__ import annotations

import itertools

import anyio
import pytest
import torch

from storm_helpers import prompt, request_kinds, settle, solo_outputs
from tiny_models import make_hf_model, save_hf_model
from wrinklefree_rt import Engine, SamplingParams

# Wide enough that every thread count splits the matrix products (and the LM head) differently.
SHAPE = dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512,
             max_position_embeddings=256)
KINDS = request_kinds(15, max_prompt=60, max_tokens=20)
NOISE = [(prompt(3 + 9 * i, seed=900 + i), SamplingParams(max_tokens=5 + i, temperature=0.7, seed=None), None)
         for i in range(6)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return save_hf_model(make_hf_model(seed=4, **SHAPE), tmp_path_factory.mktemp("determinism"))


async def together(engine, requests) -> list[list[int]]:
    results = [None] * len(requests)

    async def one(i, p, sp, d):
        results[i] = (await engine.generate(p, sp, diffusion=d)).token_ids

    async with anyio.create_task_group() as tg:
        for i, (p, sp, d) in enumerate(requests):
            tg.start_soon(one, i, p, sp, d)
    return results


@pytest.fixture(scope="module")
def reference(model_dir):
    """One thread, each request alone with the whole token budget."""
    engine = Engine.from_pretrained(model_dir, num_threads=1, max_num_batched_tokens=512)

    async def run():
        async with engine:
            return await solo_outputs(engine, KINDS)
    return anyio.run(run)


@pytest.mark.parametrize("threads, budget", list(itertools.product([1, 2, 3], [5, 64, 512])))
def test_same_tokens_whatever_threads_batch_and_budget(model_dir, reference, threads, budget):
    engine = Engine.from_pretrained(model_dir, num_threads=threads, max_num_batched_tokens=budget,
                                    max_num_seqs=len(KINDS) + len(NOISE))

    async def run():
        async with engine:
            everything = await together(engine, KINDS)
            # Other company, other order: unseeded noise requests interleaved, kinds reversed.
            mixed = list(itertools.chain.from_iterable(itertools.zip_longest(KINDS[::-1], NOISE)))
            mixed = [r for r in mixed if r is not None]
            shuffled = await together(engine, mixed)
            alone = await solo_outputs(engine, KINDS[:3])
            await settle(engine)
        return everything, [shuffled[mixed.index(k)] for k in KINDS], alone

    everything, shuffled, alone = anyio.run(run)
    assert everything == reference
    assert shuffled == reference
    assert alone == reference[:3]


def test_fused_commit_under_a_budget_smaller_than_the_block(model_dir, reference):
    # Once livelocked: the commit row (valid K/V, output wanted) ran alone as a "chunk" forever.
    fused = [i for i, (_, _, d) in enumerate(KINDS) if d is not None and d.fuse_commit]
    engine = Engine.from_pretrained(model_dir, max_num_batched_tokens=3)

    async def run():
        async with engine:
            with anyio.fail_after(30):
                return await solo_outputs(engine, [KINDS[i] for i in fused])
    assert anyio.run(run) == [reference[i] for i in fused]
