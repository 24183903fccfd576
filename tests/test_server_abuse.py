"""Abusive clients against the server subprocess on 127.0.0.1 (test_server_http.py's server
and reference): thousands of connections opened and dropped at every stage of a request, a
client that sends its body a few bytes at a time, and one that stops reading its event stream.
The server keeps serving exact outputs, and afterwards no request, KV page, file descriptor or
thread is held beyond what it held before. Malformed and oversized bodies are
test_server_http.py's."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import time

import h11
import httpx
import pytest
from server_process import REQUEST_TIMEOUT_S, Server, metric
from test_api import text_model_dir  # noqa: F401  (the module-scoped tiny text model fixture)
from test_server_http import GREEDY, MODEL, _wait_idle, reference, solo, start  # noqa: F401

CONNECTIONS = 2000
BATCH = 100  # connections open at once
RELEASE_S = 30  # bounds the wait for the server to free what the dropped connections held
SLOW_S = 2.0  # how long the slow clients dawdle


@pytest.fixture(scope="module", params=["uvicorn", "hypercorn-trio"])
def server(request, text_model_dir):  # noqa: F811
    server = start(request.param, text_model_dir)
    yield server
    server.stop()


def _held(server: Server) -> tuple[int, int, int]:
    """The server process's open file descriptors, threads, and TCP connections on its port
    (its own sockets, any state but listening)."""
    pid = server.proc.pid
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # closed since listed
            pass
    with open(f"/proc/{pid}/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    inodes = {link[len("socket:["):-1] for link in links if link.startswith("socket:[")}
    port = int(server.url.rsplit(":", 1)[1])
    connections = 0
    with open("/proc/net/tcp") as f:  # sl local_address rem_address st ... inode
        for row in (line.split() for line in list(f)[1:]):
            listening = row[3] == "0A"
            connections += row[9] in inodes and int(row[1].split(":")[1], 16) == port and not listening
    return len(links), threads, connections


def _wait_released(server: Server, baseline: tuple[int, int, int]) -> tuple[int, int, int]:
    """Poll (bounded) until the server holds no connection and no more descriptors or threads
    than at baseline. They may end below it: anyio's and trio's idle worker threads exit after
    a few seconds, and the baseline may count a descriptor of a connection closing."""
    deadline = time.monotonic() + RELEASE_S
    while True:
        held = _held(server)
        if held[0] <= baseline[0] and held[1] <= baseline[1] and held[2] == 0:
            return held
        assert time.monotonic() < deadline, f"still held after {RELEASE_S} s: {held}, baseline {baseline}"
        time.sleep(0.1)


def _baseline(server: Server, reference) -> tuple[int, int, int]:  # noqa: F811
    """What the idle server holds once it has served (lazily started workers included)."""
    _wait_idle(server, REQUEST_TIMEOUT_S)
    _served_exactly(server, reference, "Warm up")
    _wait_idle(server, REQUEST_TIMEOUT_S)
    return _held(server)


def _served_exactly(server: Server, reference, prompt: str) -> None:  # noqa: F811
    r = server.post("/v1/completions", {"model": MODEL, "prompt": prompt, **GREEDY})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == solo(reference, prompt, GREEDY).text


def _request(server: Server, path: str, body: dict, close: bool = False) -> bytes:
    return _h11_request(server, "POST", path, json.dumps(body).encode(), close)


def _h11_request(server: Server, method: str, path: str, body: bytes, close: bool) -> bytes:
    host = server.url.removeprefix("http://")
    headers = [("host", host), ("content-type", "application/json"), ("content-length", str(len(body)))]
    headers += [("authorization", f"Bearer {server.api_key}")] if server.api_key else []
    headers += [("connection", "close")] if close else []
    conn = h11.Connection(h11.CLIENT)
    return conn.send(h11.Request(method=method, target=path, headers=headers)) + conn.send(h11.Data(data=body))


# ----- thousands of connections opened and dropped -----------------------------------------------
def _drops(server: Server) -> list[bytes | None]:
    """What each connection sends before it goes: nothing, part of a request line, part of the
    headers, whole headers and half a body, or a whole generation request (left unread)."""
    whole = _request(server, "/v1/completions", {"model": MODEL, "prompt": "Dropped", "max_tokens": 200,
                                                 "ignore_eos": True, "temperature": 0.0, "stream": False})
    streamed = _request(server, "/v1/completions", {"model": MODEL, "prompt": "Dropped", "max_tokens": 200,
                                                    "ignore_eos": True, "temperature": 0.0, "stream": True})
    head_end = whole.index(b"\r\n\r\n") + 4
    return [None, whole[:9], whole[:head_end - 30], whole[:head_end + 10], whole, streamed]


async def _open_and_drop(host: str, port: int, send: bytes | None, reset: bool) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    if send:
        writer.write(send)
        await writer.drain()
    if reset:  # an RST rather than a FIN
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    writer.close()
    await writer.wait_closed()


def test_thousands_of_connections_opened_and_dropped(server, reference):  # noqa: F811
    baseline = _baseline(server, reference)
    host, port = server.url.removeprefix("http://").split(":")
    drops = _drops(server)

    async def run():
        for start_at in range(0, CONNECTIONS, BATCH):
            await asyncio.wait_for(asyncio.gather(*[
                _open_and_drop(host, int(port), drops[i % len(drops)], reset=(i // len(drops)) % 2 == 1)
                for i in range(start_at, start_at + BATCH)]), REQUEST_TIMEOUT_S)

    before = server.metrics()
    began = time.monotonic()
    asyncio.run(run())
    dropped_s = time.monotonic() - began
    after = _wait_idle(server, RELEASE_S)
    held = _wait_released(server, baseline)
    ended = {reason: metric(after, "request_success_total", finished_reason=reason)
             - metric(before, "request_success_total", finished_reason=reason) for reason in ("abort", "length")}
    refused = metric(after, "http_requests_rejected_total", status="503") - metric(
        before, "http_requests_rejected_total", status="503")
    full = sum(1 for i in range(CONNECTIONS) if i % len(drops) >= len(drops) - 2)  # the last two: whole requests
    assert ended["abort"] >= 1 and ended["abort"] + ended["length"] + refused <= full  # reached the engine, once
    print(f"{server.kind}: {CONNECTIONS} connections dropped in {dropped_s:.1f} s, released after "
          f"{time.monotonic() - began - dropped_s:.1f} s; engine requests {ended}, refused {refused}; "
          f"fds/threads/connections {baseline} -> {held}")
    _served_exactly(server, reference, "After the storm")


# ----- slow clients -------------------------------------------------------------------------------
async def _exchange(host: str, port: int, request: bytes, *, send_every: int = 0, stall_s: float = 0.0,
                    rcvbuf: int = 0) -> tuple[int, bytes]:
    """One request over a raw socket: sent ``send_every`` bytes at a time spread over SLOW_S (0:
    at once); the response left unread for ``stall_s`` after its first bytes (with a
    ``rcvbuf``-byte receive buffer, so that the server's writes back up), then read to its end."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    pieces = [request[i:i + send_every] for i in range(0, len(request), send_every)] if send_every else [request]
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        if send_every:
            await asyncio.sleep(SLOW_S / len(pieces))
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("host", "x")]))  # h11 tracks the exchange
    conn.send(h11.EndOfMessage())
    status, body, stalled = None, bytearray(), False
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if status is not None and stall_s and not stalled:
                stalled = True
                await asyncio.sleep(stall_s)
            conn.receive_data(await asyncio.wait_for(reader.read(65536), REQUEST_TIMEOUT_S))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            break
    writer.close()
    await writer.wait_closed()
    return status, bytes(body)


def _sse_text(body: bytes) -> str:
    events = [line.removeprefix(b"data: ") for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    return "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])


def test_slow_clients_do_not_hold_up_others(server, reference):  # noqa: F811
    """A body sent 7 bytes at a time over SLOW_S, and a 1000-token stream whose reader stops
    for SLOW_S behind a 4 KiB receive buffer, while four clients are served; every output exact."""
    baseline = _baseline(server, reference)
    host, port = server.url.removeprefix("http://").split(":")
    long = {"max_tokens": 1000, "ignore_eos": True, "temperature": 0.0}
    want_slow_body = solo(reference, "Slowly sent", GREEDY).text
    want_stream = solo(reference, "Slowly read", long).text
    others = ["Alpha", "Beta", "Gamma", "Delta"]
    want_others = [solo(reference, p, GREEDY).text for p in others]

    async def other(client, prompt):
        await asyncio.sleep(SLOW_S / 4)  # once the slow ones are under way
        r = await client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, **GREEDY})
        return r.json()["choices"][0]["text"], time.monotonic()

    async def run():
        slow_body = _request(server, "/v1/completions", {"model": MODEL, "prompt": "Slowly sent", **GREEDY},
                             close=True)
        slow_read = _request(server, "/v1/completions", {"model": MODEL, "prompt": "Slowly read", "stream": True,
                                                         **long}, close=True)
        async with httpx.AsyncClient(base_url=server.url, timeout=REQUEST_TIMEOUT_S, headers=server.headers) as c:
            began = time.monotonic()
            return began, await asyncio.wait_for(asyncio.gather(
                _exchange(host, int(port), slow_body, send_every=7),
                _exchange(host, int(port), slow_read, stall_s=SLOW_S, rcvbuf=4096),
                *[other(c, p) for p in others]), REQUEST_TIMEOUT_S)

    began, (body_reply, stream_reply, *got) = asyncio.run(run())
    assert body_reply[0] == 200 and json.loads(body_reply[1])["choices"][0]["text"] == want_slow_body
    assert stream_reply[0] == 200 and _sse_text(stream_reply[1]) == want_stream
    assert [text for text, _ in got] == want_others
    _wait_idle(server, RELEASE_S)
    held = _wait_released(server, baseline)
    print(f"{server.kind}: others answered after {max(t for _, t in got) - began:.1f} s, stream of "
          f"{len(stream_reply[1])} bytes; "
          f"fds/threads/connections {baseline} -> {held}")
