"""Replicas on Ray Serve: ``wrinklefree-rt serve MODEL --ray --replicas 2`` in a subprocess starts
a local Ray cluster (every Ray port on 127.0.0.1, stopped with the process) serving a tiny model.
The real ``openai`` client checks outputs against the library's own ``Engine``; the test joins
the cluster as a second driver only to read the replicas' reports and to kill one's process."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
from test_api import text_model_dir  # noqa: F401  (the module-scoped tiny text model fixture)

from wrinklefree_rt import Engine, SamplingParams

ROOT = Path(__file__).resolve().parent.parent
MODEL = "tiny"
MAX_NUM_SEQS = 8
START_TIMEOUT_S = 240
STOP_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 120
RECOVERY_TIMEOUT_S = 90
REPLICA_HEADER = "x-wrinklefree-replica"
LOST = "the replica serving this request stopped before finishing it"
GREEDY = {"temperature": 0.0, "extra_body": {"ignore_eos": True}}


class RayServer:
    """The CLI in a subprocess; its output is drained by a thread (a full pipe would stall it)."""

    def __init__(self, model_dir: Path):
        cmd = [sys.executable, "-m", "wrinklefree_rt.cli", "serve", str(model_dir), "--ray", "--replicas", "2",
               "--port", "0", "--served-model-name", MODEL, "--threads", "1", "--max-num-seqs", str(MAX_NUM_SEQS),
               "--max-num-batched-tokens", "64", "--max-waiting", "40"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the replicas import this checkout
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(START_TIMEOUT_S) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("serve --ray did not start:\n" + "".join(self.lines[-60:]))
        found = re.search(r"on (http://127\.0\.0\.1:\d+) \(Ray Serve, 2 replicas; Ray cluster at (\S+)\)",
                          "".join(self.lines))
        self.url, self.ray_address = found.group(1), found.group(2)

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "wrinklefree-rt: serving" in line:
                self._ready.set()
        self._ready.set()  # the process ended

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # the CLI shuts Serve and its local cluster down
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0,
                                  timeout=REQUEST_TIMEOUT_S)


@pytest.fixture(scope="module")
def server(text_model_dir):  # noqa: F811
    srv = RayServer(text_model_dir)
    try:
        from wrinklefree_rt.ray import connect
        connect(srv.ray_address, log_to_driver=False)  # with the token the CLI's local start made
        try:
            yield srv
        finally:
            import ray
            ray.shutdown()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def library(text_model_dir):  # noqa: F811
    engine = Engine.from_pretrained(text_model_dir, max_num_seqs=MAX_NUM_SEQS, num_threads=1)
    yield engine
    engine.close()


def expected(library: Engine, prompts: list, max_tokens: int, **params) -> list[str]:
    sp = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=params.pop("temperature", 0.0), **params)
    return [out.text for out in library.generate_batch(prompts, sp)]


def reports() -> dict[str, dict]:
    from wrinklefree_rt.ray import replica_reports
    return {r["replica"]: r for r in replica_reports()}


def test_cluster_listens_on_loopback_only(server):
    import ray
    assert [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]] == ["127.0.0.1"]
    assert server.url.startswith("http://127.0.0.1:")


def test_greedy_and_seeded_outputs_equal_the_library(server, library):
    client = server.client()
    prompt, messages = "The quick brown fox", [{"role": "user", "content": "Name a colour."}]
    want_text, = expected(library, [prompt], 20)
    want_chat, = expected(library, [messages], 12)
    want_seeded, = expected(library, [prompt], 16, temperature=0.9, top_p=0.95, seed=11)

    got = client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, **GREEDY)
    assert got.choices[0].text == want_text and got.usage.completion_tokens == 20
    streamed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, stream=True, **GREEDY)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == want_text
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, **GREEDY)
    assert chat.choices[0].message.content == want_chat
    chat_stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, stream=True, **GREEDY)
    assert "".join(c.choices[0].delta.content or "" for c in chat_stream if c.choices) == want_chat
    seeded = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0.9, top_p=0.95,
                                       seed=11, extra_body={"ignore_eos": True})
    assert seeded.choices[0].text == want_seeded
    assert [m.id for m in client.models.list().data] == [MODEL]
    with pytest.raises(openai.NotFoundError) as err:  # the server's own error shape, through Ray
        client.completions.create(model="other", prompt=prompt, max_tokens=2)
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


def test_32_concurrent_streams_complete_on_both_replicas(server, library):
    prompts = [f"Request number {i} says" for i in range(32)]
    want = expected(library, prompts, 24)

    async def one(client: openai.AsyncOpenAI, prompt: str) -> tuple[str, str]:
        async with client.completions.with_streaming_response.create(
                model=MODEL, prompt=prompt, max_tokens=24, stream=True, **GREEDY) as response:
            text = "".join([c.choices[0].text async for c in await response.parse() if c.choices])
            return response.headers[REPLICA_HEADER], text

    async def all_of_them():
        client = server.async_client()
        try:
            return await asyncio.gather(*(one(client, p) for p in prompts))
        finally:  # closed in this loop, not finalized in some later test's
            await client.close()

    results = asyncio.run(all_of_them())
    assert [text for _, text in results] == want
    assert {replica for replica, _ in results} == set(reports())  # both replicas served some


def test_killed_replica_fails_its_requests_only_and_the_deployment_recovers(server, library):
    client = server.client()
    streams = [f"Stream {i} goes on" for i in range(5)]
    plain = [f"Plain {i} goes on" for i in range(3)]
    max_tokens = 1000  # seconds of decoding: every request is still running when the replica dies
    outcome: dict[str, tuple] = {}
    replica_of: dict[str, str] = {}  # stream -> the replica that answered it (a response header)
    started = threading.Barrier(len(streams) + 1)

    def stream(prompt: str) -> None:
        replica, text = None, ""
        try:
            with client.completions.with_streaming_response.create(
                    model=MODEL, prompt=prompt, max_tokens=max_tokens, stream=True, **GREEDY) as response:
                replica = replica_of[prompt] = response.headers[REPLICA_HEADER]
                for i, chunk in enumerate(response.parse()):
                    if i == 0:
                        started.wait(REQUEST_TIMEOUT_S)
                    text += chunk.choices[0].text if chunk.choices else ""
            outcome[prompt] = (replica, "done", text)
        except openai.APIError as e:
            outcome[prompt] = (replica, "error", e.message)

    def complete(prompt: str) -> None:
        try:
            done = client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, **GREEDY)
            outcome[prompt] = (None, "done", done.choices[0].text)
        except openai.APIStatusError as e:
            outcome[prompt] = (e.status_code, "error", e.body)

    before = reports()  # the replicas' processes, known before any request so the kill is immediate
    threads = [threading.Thread(target=stream, args=(p,)) for p in streams]
    threads += [threading.Thread(target=complete, args=(p,)) for p in plain]
    for t in threads:
        t.start()
    started.wait(REQUEST_TIMEOUT_S)  # every stream is under way
    victim = replica_of[streams[0]]
    os.kill(before[victim]["pid"], signal.SIGKILL)
    for t in threads:
        t.join(REQUEST_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads)

    survivors = [p for p in streams + plain if outcome[p][1] == "done"]
    for prompt, text in zip(survivors, expected(library, survivors, max_tokens)):
        assert outcome[prompt][2] == text, prompt
    for prompt in streams:  # a stream fails exactly when its replica was the one killed
        replica, status, detail = outcome[prompt]
        assert (status == "error") == (replica == victim), (prompt, outcome[prompt])
        if status == "error":
            assert detail.startswith(LOST)
    for prompt in plain:  # not streamed: done, or a 503 in OpenAI's error shape
        status_code, status, detail = outcome[prompt]
        if status == "error":
            assert status_code == 503 and detail["code"] == "replica_lost" and detail["message"].startswith(LOST)

    # New requests go to live replicas; Ray restarts the killed one and routes to it again.
    want, = expected(library, ["After the crash"], 8)
    for _ in range(4):
        assert client.completions.create(model=MODEL, prompt="After the crash", max_tokens=8,
                                         **GREEDY).choices[0].text == want
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    import ray
    while True:
        try:
            now = set(reports())
        except ray.exceptions.RayActorError:  # the controller still lists the dead replica
            now = {victim}
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, f"no replacement replica within {RECOVERY_TIMEOUT_S} s: {now}"
        time.sleep(0.5)
    replacement = (now - set(before)).pop()
    served_by = set()
    while replacement not in served_by:
        response = client.completions.with_raw_response.create(model=MODEL, prompt="After the crash", max_tokens=8,
                                                               **GREEDY)
        assert response.parse().choices[0].text == want
        served_by.add(response.headers[REPLICA_HEADER])
        assert time.monotonic() < deadline + REQUEST_TIMEOUT_S, "the replacement replica gets no requests"


def test_replicas_option_is_checked_before_any_cluster_starts(text_model_dir):  # noqa: F811
    for bad in ("0", "3:2", "two"):
        done = subprocess.run([sys.executable, "-m", "wrinklefree_rt.cli", "serve", str(text_model_dir), "--ray",
                               "--replicas", bad], check=False, cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and "--replicas" in done.stderr and repr(bad) in done.stderr


def test_autoscaling_policy_follows_the_engines_queues():
    from ray.serve.config import AutoscalingContext

    from wrinklefree_rt.ray import engine_queue_policy

    def decide(running: list[float], waiting: list[float]) -> float:
        replicas = [f"r{i}" for i in range(len(running))]
        metrics = {"engine_running": dict(zip(replicas, running)), "engine_waiting": dict(zip(replicas, waiting)),
                   "engine_max_num_seqs": dict.fromkeys(replicas, 8.0)} if running else {}
        ctx = AutoscalingContext(
            deployment_id=None, deployment_name="EngineReplica", app_name="wrinklefree",
            current_num_replicas=max(1, len(running)), target_num_replicas=max(1, len(running)),
            running_replicas=replicas, total_num_requests=0.0, total_queued_requests=0.0,
            aggregated_metrics=metrics, raw_metrics=None, capacity_adjusted_min_replicas=1,
            capacity_adjusted_max_replicas=8, policy_state={}, last_scale_up_time=None, last_scale_down_time=None,
            current_time=None, config=None)
        return engine_queue_policy(ctx)[0]

    assert decide([8, 8], [6, 10]) == 4        # 32 sequences, 8 run per replica
    assert decide([8, 3], [0, 0]) == 2         # full enough: keep both
    assert decide([2, 1], [0, 0]) == 1         # 3 sequences fit on one replica
    assert decide([0, 0], [0, 0]) == 0         # idle: Ray holds min_replicas
    assert decide([], []) == 1                 # no report yet: keep the current count
