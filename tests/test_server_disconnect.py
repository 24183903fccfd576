"""A client that leaves while its prompt is being prefilled: the app driven in-process over ASGI
with the engine's step held at a gate, so that the disconnect lands mid-prefill by construction
(the subprocess tests in test_server_http.py cover disconnects over real sockets)."""
from __future__ import annotations

import json
import threading

import anyio
import pytest
from test_api import text_model_dir  # noqa: F401  (the module-scoped tiny text model fixture)

from wrinklefree_rt import Engine
from wrinklefree_rt.server import create_app

GATE_TIMEOUT_S = 60


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


class GatedCore:
    """The engine's core with one ``step`` held at a gate once armed: the armed step signals
    ``entered`` and waits (bounded) for ``release``; the step after it records the engine's
    stats as the scheduler left them at that step boundary."""

    def __init__(self, core):
        self._core = core
        self.engine = None
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.after_gate = None  # True: the next step records the stats
        self.stats_at_next_step = None

    def step(self, *args, **kwargs):
        if self.after_gate:
            self.after_gate = False
            self.stats_at_next_step = self.engine.stats()
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.release.wait(GATE_TIMEOUT_S), "the test never released the gate"
            self.after_gate = True
        return self._core.step(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._core, name)


def _scope(path: str) -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000)}


class Client:
    """One ASGI request: sends its body, then reports a disconnect when ``leave`` is set."""

    def __init__(self, body: dict):
        self._body = json.dumps(body).encode()
        self.leave = anyio.Event()
        self.messages: list[dict] = []

    async def receive(self) -> dict:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.messages.append(message)

    def text(self) -> str:
        body = b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")
        return json.loads(body)["choices"][0]["text"]


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_disconnect_mid_prefill_frees_slot_and_pages(text_model_dir, stream):  # noqa: F811
    loaded = Engine.from_pretrained(text_model_dir, num_threads=1, max_num_seqs=4, max_num_batched_tokens=16)
    core = GatedCore(loaded.core)
    engine = core.engine = Engine(core, loaded.model_config, loaded.tokenizer, loaded.config)
    app = create_app(engine, model_name="tiny")
    long_prompt = [128000] + [(7 * i) % 5000 + 100 for i in range(300)]  # ~19 forwards of 16 rows
    leaving = Client({"model": "tiny", "prompt": long_prompt, "max_tokens": 50, "stream": stream,
                      "temperature": 0.0})
    staying = Client({"model": "tiny", "prompt": "Hello there", "max_tokens": 8, "temperature": 0.0})
    left = anyio.Event()

    async def leaving_request():
        await app(_scope("/v1/completions"), leaving.receive, leaving.send)
        left.set()

    async with app.router.lifespan_context(app):
        want = await engine.generate("Hello there", {"max_tokens": 8})
        async with anyio.create_task_group() as tg:
            core.armed = True
            tg.start_soon(leaving_request)
            assert await anyio.to_thread.run_sync(core.entered.wait, GATE_TIMEOUT_S)
            stats = engine.stats()
            assert stats.running == 1 and stats.kv_pages_used > 0 and leaving.messages == []  # mid-prefill
            tg.start_soon(app, _scope("/v1/completions"), staying.receive, staying.send)
            with anyio.fail_after(GATE_TIMEOUT_S):  # the other request queued behind the held step
                while engine.stats().waiting != 1:
                    await anyio.sleep(0.005)
            leaving.leave.set()
            with anyio.fail_after(GATE_TIMEOUT_S):  # the app has seen the disconnect and returned
                await left.wait()
            core.release.set()
            with anyio.fail_after(GATE_TIMEOUT_S):
                while not any(m["type"] == "http.response.body" and not m.get("more_body")
                              for m in staying.messages):
                    await anyio.sleep(0.005)
            staying.leave.set()
        # Freed at the first step boundary after the held step: only the other request ran next.
        assert core.stats_at_next_step is not None and core.stats_at_next_step.running == 1
        assert staying.text() == want.text  # the other request is unaffected
        with anyio.fail_after(1.0):
            while (engine.stats().running, engine.stats().waiting, engine.stats().kv_pages_used) != (0, 0, 0):
                await anyio.sleep(0.005)
        assert not any(m["type"] == "http.response.start" for m in leaving.messages)
        exposition = app.state.server.metrics.exposition().decode()
        assert 'wrinklefree:request_success_total{finished_reason="abort",model_name="tiny"} 1.0' in exposition
