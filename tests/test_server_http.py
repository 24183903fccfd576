"""The OpenAI-compatible server in a subprocess on 127.0.0.1 (ephemeral port), reached with
the real ``openai`` package and raw httpx. Every output is held to the library's own
``Engine`` on the same model; the server runs under uvicorn (asyncio) and, for the tests
marked ``both``, also under hypercorn's trio worker (with an API key)."""
from __future__ import annotations

import asyncio
import json
import re
import time

import anyio
import httpx
import openai
import pytest
from server_process import REQUEST_TIMEOUT_S, Server, metric
from test_api import MASK, text_model_dir  # noqa: F401  (the module-scoped tiny text model fixture)

from wrinklefree_rt import Engine

MODEL = "tiny"
MAX_NUM_SEQS = 8
MAX_WAITING = {"uvicorn": 40, "hypercorn-trio": 8}
API_KEY = {"uvicorn": None, "hypercorn-trio": "test-key-123"}


def start(kind: str, model_dir) -> Server:
    # 16 rows per forward: a long prompt takes many forwards to prefill (the disconnect tests).
    return Server(model_dir, "--threads", "1", "--max-num-seqs", str(MAX_NUM_SEQS), "--max-waiting",
                  str(MAX_WAITING[kind]), "--max-num-batched-tokens", "16", "--max-body-bytes", "65536",
                  kind=kind, api_key=API_KEY[kind], model=MODEL)


@pytest.fixture(scope="module")
def reference(text_model_dir):  # noqa: F811
    engine = Engine.from_pretrained(text_model_dir, num_threads=1, max_num_seqs=MAX_NUM_SEQS)
    yield engine
    engine.close()


@pytest.fixture(scope="module", params=["uvicorn", "hypercorn-trio"])
def any_server(request, text_model_dir):  # noqa: F811
    server = start(request.param, text_model_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(text_model_dir):  # noqa: F811
    server = start("uvicorn", text_model_dir)
    yield server
    server.stop()


def solo(reference, prompt, params, diffusion=None):
    return reference.generate_batch([prompt], params, diffusion=diffusion)[0]


GREEDY = {"max_tokens": 12, "temperature": 0.0}
SEEDED = {"max_tokens": 12, "temperature": 0.9, "top_p": 0.9, "top_k": 50, "seed": 1234}
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_openai_sync_client_equals_the_library(any_server, reference, params):
    client = any_server.client()
    extra = {"top_k": params["top_k"]} if "top_k" in params else {}
    common = {k: v for k, v in params.items() if k != "top_k"}
    want = solo(reference, "The weather today", params)

    got = client.completions.create(model=MODEL, prompt="The weather today", extra_body=extra, **common)
    assert got.object == "text_completion" and got.model == MODEL and got.id.startswith("cmpl-")
    assert got.choices[0].text == want.text and got.choices[0].finish_reason == want.finish_reason
    assert got.usage.prompt_tokens == len(want.prompt_token_ids)
    assert got.usage.completion_tokens == len(want.token_ids)
    assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens

    chunks = list(client.completions.create(model=MODEL, prompt="The weather today", stream=True,
                                            extra_body=extra, **common))
    assert "".join(c.choices[0].text for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == want.finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1]) and len(chunks) > 1

    want_chat = solo(reference, CHAT, params)
    got = client.chat.completions.create(model=MODEL, messages=CHAT, extra_body=extra, **common)
    assert got.object == "chat.completion" and got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want_chat.text
    assert got.usage.prompt_tokens == len(want_chat.prompt_token_ids)

    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, stream=True,
                                                 stream_options={"include_usage": True}, extra_body=extra, **common))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want_chat.text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want_chat.token_ids)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_openai_async_client_concurrent(any_server, reference):
    prompts = ["Once upon a time", "def main():", "In 1848,", "Roses are red"]
    want = [solo(reference, p, SEEDED) for p in prompts]
    want_chat = solo(reference, CHAT, GREEDY)

    async def run():
        client = any_server.async_client()
        common = {k: v for k, v in SEEDED.items() if k != "top_k"}
        extra = {"top_k": SEEDED["top_k"]}

        async def streamed(p):
            stream = await client.completions.create(model=MODEL, prompt=p, stream=True, extra_body=extra, **common)
            return "".join([c.choices[0].text async for c in stream])

        async def whole(p):
            return (await client.completions.create(model=MODEL, prompt=p, extra_body=extra, **common)).choices[0].text

        async def chat():
            stream = await client.chat.completions.create(model=MODEL, messages=CHAT, stream=True, **GREEDY)
            return "".join([c.choices[0].delta.content or "" async for c in stream])

        try:
            return await asyncio.wait_for(asyncio.gather(
                *[streamed(p) for p in prompts], *[whole(p) for p in prompts], chat()), REQUEST_TIMEOUT_S)
        finally:  # closed in this loop, not finalized in some later test's
            await client.close()

    got = asyncio.run(run())
    assert got[:4] == [w.text for w in want] and got[4:8] == [w.text for w in want]
    assert got[8] == want_chat.text


def test_n_choices_and_prompt_lists(server, reference):
    body = {"model": MODEL, "prompt": ["Hello", [128000, 791, 1888]], "n": 2, **SEEDED}
    got = server.post("/v1/completions", body).json()
    assert [c["index"] for c in got["choices"]] == [0, 1, 2, 3]
    for c in got["choices"]:
        prompt = body["prompt"][c["index"] // 2]
        want = solo(reference, prompt, dict(SEEDED, seed=SEEDED["seed"] + c["index"] % 2))
        assert c["text"] == want.text
    assert got["choices"][0]["text"] != got["choices"][1]["text"]  # distinct seeds, distinct samples
    assert got["usage"]["prompt_tokens"] == 2 + 3  # each prompt once


DLM = {"block_size": 8, "threshold": 0.5}


def test_dlm_over_http_streams_committed_blocks(server, reference):
    params = {"max_tokens": 40, "ignore_eos": True, "temperature": 0.0}
    want = solo(reference, "Tell me a story", params, diffusion=DLM)
    blocks = [o for o in _library_stream(reference, "Tell me a story", params, DLM)]
    with httpx.stream("POST", server.url + "/v1/completions", timeout=REQUEST_TIMEOUT_S,
                      json={"model": MODEL, "prompt": "Tell me a story", "stream": True, "diffusion": DLM,
                            **params}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    deltas = [json.loads(e.removeprefix("data: "))["choices"][0]["text"] for e in events[:-1]]
    assert "".join(deltas) == want.text
    # One chunk per committed block, in order: the same cuts as the library's own stream.
    cuts = [o.text for o in blocks if o.text]
    assert [d for d in deltas if d] == [b[len(a):] for a, b in zip([""] + cuts, cuts) if b[len(a):]]
    assert len([d for d in deltas if d]) > 1


def _library_stream(reference, prompt, params, diffusion):
    reference.close()  # its sync API's private loop; this runs it in a loop of our own

    async def run():
        async with reference:
            return [o async for o in reference.generate_async(prompt, params, diffusion=diffusion)]
    return anyio.run(run)


def test_dlm_chat_non_streaming(server, reference):
    want = solo(reference, CHAT, {"max_tokens": 16, "temperature": 0.0}, diffusion=DLM)
    got = server.post("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "max_tokens": 16,
                                               "diffusion": DLM}).json()
    assert got["choices"][0]["message"]["content"] == want.text  # DLM defaults to greedy
    assert got["usage"]["completion_tokens"] == len(want.token_ids)


def test_dlm_with_the_cost_aware_width(server):
    got = server.post("/v1/completions", {"model": MODEL, "prompt": "Tell me a story", "max_tokens": 24,
                                          "ignore_eos": True,
                                          "diffusion": {**DLM, "sub_block_size": "auto"}}).json()
    assert got["usage"]["completion_tokens"] == 24 and got["choices"][0]["finish_reason"] == "length"


def test_32_concurrent_streams_batch_and_add_up(server, reference):
    prompts = [f"Request number {i}: " + "word " * (i % 7) for i in range(32)]
    params = [dict(GREEDY, max_tokens=10 + i % 5) if i % 2 else dict(SEEDED, seed=i, max_tokens=10 + i % 5)
              for i in range(32)]
    want = [solo(reference, p, sp) for p, sp in zip(prompts, params)]
    before = server.metrics()

    async def one(client, prompt, sp):
        body = {"model": MODEL, "prompt": prompt, "stream": True, **sp}
        text, finish = "", None
        async with client.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    choice = json.loads(line[6:])["choices"][0]
                    text += choice["text"]
                    finish = choice["finish_reason"] or finish
                elif line == "data: [DONE]":
                    return text, finish, True
        return text, finish, False

    async def run():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
            return await asyncio.wait_for(asyncio.gather(*[one(client, p, sp) for p, sp in zip(prompts, params)]),
                                          3 * REQUEST_TIMEOUT_S)

    got = asyncio.run(run())
    after = server.metrics()
    assert [g[0] for g in got] == [w.text for w in want]
    assert [g[1] for g in got] == [w.finish_reason for w in want] and all(g[2] for g in got)
    forwards = metric(after, "engine_forwards_total") - metric(before, "engine_forwards_total")
    assert forwards < sum(w.metrics.forwards for w in want)  # batching happened
    delta = {name: metric(after, name) - metric(before, name)
             for name in ("prompt_tokens_total", "generation_tokens_total", "time_to_first_token_seconds_count",
                          "e2e_request_latency_seconds_count")}
    assert delta["prompt_tokens_total"] == sum(len(w.prompt_token_ids) for w in want)
    assert delta["generation_tokens_total"] == sum(len(w.token_ids) for w in want)
    assert delta["time_to_first_token_seconds_count"] == 32 and delta["e2e_request_latency_seconds_count"] == 32
    finished = sum(metric(after, "request_success_total", finished_reason=r)
                   - metric(before, "request_success_total", finished_reason=r) for r in ("stop", "length"))
    assert finished == 32


def _wait_idle(server, within_s: float = 1.0) -> dict:
    """Poll /metrics until no request runs or waits and every KV page is free (bounded)."""
    deadline = time.monotonic() + within_s
    while True:
        m = server.metrics()
        if (metric(m, "num_requests_running"), metric(m, "num_requests_waiting"),
                metric(m, "kv_cache_pages_used")) == (0, 0, 0):
            return m
        assert time.monotonic() < deadline, f"not idle within {within_s} s: {m}"
        time.sleep(0.02)


def _wait_running(server, count: int, within_s: float = REQUEST_TIMEOUT_S) -> None:
    deadline = time.monotonic() + within_s
    while metric(server.metrics(), "num_requests_running") < count:
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_disconnect_mid_stream_frees_everything(any_server, reference):
    others = ["Alpha", "Beta"]
    want = [solo(reference, p, GREEDY) for p in others]
    _wait_idle(any_server, REQUEST_TIMEOUT_S)
    aborted_before = metric(any_server.metrics(), "request_success_total", finished_reason="abort")

    async def run():
        async with httpx.AsyncClient(base_url=any_server.url, timeout=REQUEST_TIMEOUT_S,
                                     headers=any_server.headers) as client:
            async def long_then_leave():
                body = {"model": MODEL, "prompt": "Go on forever", "stream": True, "max_tokens": 1500,
                        "ignore_eos": True, "temperature": 0.0}
                async with client.stream("POST", "/v1/completions", json=body) as r:
                    seen = 0
                    async for line in r.aiter_lines():
                        seen += line.startswith("data: {")
                        if seen == 3:
                            return  # leaving the block closes the connection mid-stream

            async def other(p):
                r = await client.post("/v1/completions", json={"model": MODEL, "prompt": p, **GREEDY})
                return r.json()["choices"][0]["text"]

            return await asyncio.wait_for(asyncio.gather(long_then_leave(), *[other(p) for p in others]),
                                          REQUEST_TIMEOUT_S)

    got = asyncio.run(run())
    assert got[1:] == [w.text for w in want]
    m = _wait_idle(any_server)
    assert metric(m, "request_success_total", finished_reason="abort") == aborted_before + 1
    # Still serving, same answers.
    r = any_server.post("/v1/completions", {"model": MODEL, "prompt": "Alpha", **GREEDY})
    assert r.json()["choices"][0]["text"] == want[0].text


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_disconnect_before_the_response_frees_everything(server, reference, stream):
    """A ~1900-token prompt prefilled 16 rows per forward; the client leaves once the request is
    in the engine, before any response (mostly mid-prefill; test_server_disconnect.py holds the
    step to make that certain)."""
    _wait_idle(server, REQUEST_TIMEOUT_S)
    prompt = [128000] + [(7 * i) % 5000 + 100 for i in range(1900)]

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as client:
            body = {"model": MODEL, "prompt": prompt, "stream": stream, "max_tokens": 100, "temperature": 0.0}
            task = asyncio.ensure_future(client.post("/v1/completions", json=body))
            await asyncio.to_thread(_wait_running, server, 1)
            assert not task.done()
            task.cancel()  # closes the connection
            try:
                await task
            except asyncio.CancelledError:
                pass

    asyncio.run(run())
    _wait_idle(server)
    want = solo(reference, "Beta", GREEDY)
    assert server.post("/v1/completions", {"model": MODEL, "prompt": "Beta", **GREEDY}).json()[
        "choices"][0]["text"] == want.text


def _error(r: httpx.Response, status: int, param=None, code=None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param and err["code"] == code
    assert err["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    return err


def _still_serving(server):
    r = server.post("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "temperature": 0.0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("body, param, match", [
    (b'{"model": "tiny", "prompt": ', None, "not valid JSON"),
    (b'[1, 2]', None, "JSON object"),
    ({"model": MODEL}, "prompt", "missing required field"),
    ({"prompt": "x"}, "model", "missing required field"),
], ids=["malformed", "not-an-object", "no-prompt", "no-model"])
def test_unreadable_bodies_get_400(server, body, param, match):
    err = _error(server.post("/v1/completions", body), 400, param=param)
    assert re.search(match, err["message"]), err["message"]
    _still_serving(server)


@pytest.mark.parametrize("fields, param, match", [
    ({"max_tokens": "ten"}, "max_tokens", "Expected `int | null`"),
    ({"max_tokens": 0}, "max_tokens", r"invalid sampling params.*>= 1"),
    ({"temperature": -0.5}, "temperature", ">= 0.0"),
    ({"top_p": 0}, "top_p", "> 0.0"),
    ({"stop": [""]}, "stop[0]", "length >= 1"),
    ({"n": 0}, "n", ">= 1"),
    ({"logprobs": 2}, "logprobs", "not supported"),
    ({"frequency_penalty": 0.5}, "frequency_penalty", "not supported"),
    ({"tools": [{"type": "function"}]}, "tools", "not supported"),
    ({"bogus": 1}, "bogus", "unknown field"),
    ({"prompt": [1, 2, 10 ** 6]}, "prompt[2]", "outside the vocabulary"),
    ({"prompt": [1, MASK]}, "prompt[1]", "mask token"),
    ({"prompt": [1, "a"]}, "prompt[1]", "expected a token id"),
    ({"prompt": ["a", 5]}, "prompt[1]", "string or a list of token ids"),
    ({"max_tokens": 5000}, None, "positions"),
    ({"diffusion": {"block_size": 0}}, "diffusion.block_size", ">= 1"),
    ({"diffusion": {"nope": 1}}, "diffusion.nope", "unknown field"),
    ({"diffusion": {"sub_block_size": "wide"}}, "diffusion.sub_block_size", "Invalid enum value"),
    ({"temperature": 0.5, "diffusion": True}, "temperature", "greedily"),
], ids=lambda v: None)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_bad_fields_get_400_naming_the_field(server, fields, param, match, stream):
    body = {"model": MODEL, "prompt": "x", "stream": stream, **fields}
    err = _error(server.post("/v1/completions", body), 400, param=param)
    assert re.search(match, err["message"]), err["message"]
    _still_serving(server)


def test_bad_chat_requests(server):
    base = {"model": MODEL}
    for body, param in [({**base, "messages": []}, "messages"),
                        ({**base, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
                        ({**base, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
                         "messages[0].content[0].type"),
                        ({**base, "messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
                        ({**base, "messages": "hi"}, "messages")]:
        err = _error(server.post("/v1/chat/completions", body), 400, param=param)
        assert err["message"]
    _still_serving(server)


def test_unknown_model_and_paths(any_server):
    _error(any_server.post("/v1/completions", {"model": "gpt-4", "prompt": "x"}), 404, param="model",
           code="model_not_found")
    _error(httpx.get(any_server.url + "/v1/nothing", headers=any_server.headers), 404, code="not_found")
    _error(httpx.get(any_server.url + "/v1/completions", headers=any_server.headers), 405, code="method_not_allowed")
    r = httpx.get(any_server.url + "/v1/models", headers=any_server.headers).json()
    assert r["object"] == "list" and [m["id"] for m in r["data"]] == [MODEL]
    assert any_server.client().models.retrieve(MODEL).id == MODEL
    _still_serving(any_server)


def test_oversized_body_gets_413(any_server):
    huge = {"model": MODEL, "prompt": "x" * 70000}
    _error(any_server.post("/v1/completions", huge), 413, code="request_too_large")

    def chunks():  # no content-length: the limit holds while reading too
        for _ in range(20):
            yield b" " * 8192
    _error(any_server.post("/v1/completions", chunks()), 413, code="request_too_large")
    _still_serving(any_server)


def test_api_key(any_server):
    if not any_server.api_key:
        assert any_server.post("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 1}).status_code == 200
        return
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1}
    _error(httpx.post(any_server.url + "/v1/completions", json=body), 401, code="invalid_api_key")
    _error(httpx.post(any_server.url + "/v1/completions", json=body, headers={"Authorization": "Bearer wrong"}),
           401, code="invalid_api_key")
    _error(httpx.get(any_server.url + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401,
           code="invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=any_server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(any_server.url + "/health").status_code == 200  # health and metrics stay open
    _still_serving(any_server)


def test_too_many_waiting_gets_503_at_once(any_server):
    """One request holding every running and waiting place (n = capacity); the next is
    refused at once with Retry-After, and served again once the first has gone."""
    capacity = MAX_NUM_SEQS + MAX_WAITING[any_server.kind]
    _wait_idle(any_server, REQUEST_TIMEOUT_S)

    async def run():
        async with httpx.AsyncClient(base_url=any_server.url, timeout=REQUEST_TIMEOUT_S,
                                     headers=any_server.headers) as client:
            body = {"model": MODEL, "prompt": "Fill", "n": capacity, "stream": True, "max_tokens": 1500,
                    "ignore_eos": True, "temperature": 0.0}
            async with client.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                lines = r.aiter_lines()  # held: a dropped iterator is finalized, closing the connection
                async for line in lines:
                    if line.startswith("data: {"):
                        break
                refused = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
                assert metric(any_server.metrics(), "num_requests_running") == MAX_NUM_SEQS  # still held
                await lines.aclose()
            return refused

    refused = asyncio.run(run())
    err = _error(refused, 503, code="server_overloaded")
    assert refused.headers["retry-after"] == "1" and err["type"] == "server_error"
    _wait_idle(any_server)
    _error(any_server.post("/v1/completions", {"model": MODEL, "prompt": "x", "n": capacity + 1}), 400, param="n")
    _error(any_server.post("/v1/completions", {"model": MODEL, "prompt": "x", "n": 10 ** 12}), 400, param="n")
    _still_serving(any_server)
