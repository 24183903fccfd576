"""Ray Serve's HTTP proxy, told what to answer when the replica serving a request dies.

Ray ends such a request without an answer (nothing at all before the response started, a cut
stream after). ``ReplicaLossMiddleware`` runs inside Ray's proxy (Ray imports ``middlewares``
from ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``) and finishes it in OpenAI's error shape:
a 503 with a message, or, for a stream already under way, an error event, which the
``openai`` client raises as ``APIError``.
"""
from __future__ import annotations

import os
from pathlib import Path

import msgspec

__all__ = ["PROXY_CALLBACK", "ReplicaLossMiddleware", "connect", "middlewares"]

PROXY_CALLBACK = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "wrinklefree_rt.ray.proxy:middlewares"}

REPLICA_LOST = ("the replica serving this request stopped before finishing it (its process died); "
                "the deployment keeps serving on its other replicas, retry the request")


class ReplicaLossMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = finished = streaming = False

        async def watch(message):
            nonlocal started, finished, streaming
            if message["type"] == "http.response.start":
                started = True
                streaming = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                                for k, v in message.get("headers", ()))
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        await self.app(scope, receive, watch)
        if finished:
            return
        from ..server.errors import ApiError, error_response

        error = ApiError(503, REPLICA_LOST, code="replica_lost", headers={"Retry-After": "1"})
        if not started:
            await error_response(error)(scope, receive, send)
        else:  # headers are out: end the body, with an error event if it is a stream
            event = b"data: " + msgspec.json.encode(error.body()) + b"\n\n" if streaming else b""
            await send({"type": "http.response.body", "body": event, "more_body": False})


def middlewares() -> list:
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLossMiddleware)]


def connect(address: str | None = None, **init_options) -> None:
    """``ray.init`` for serving: ``address`` of a running cluster (``"auto"``, ``"HOST:PORT"``),
    or ``None`` to start a local one. Passes the proxy callback in the job's ``runtime_env``, so
    the Serve proxies this job starts use it (a Serve instance already running keeps its own
    proxies: start it with the variable in ``PROXY_CALLBACK`` set, see docs/scale-out.md).

    A local cluster listens on 127.0.0.1 only, and a loopback ``address`` is reached as such,
    when this runs before anything imports ray. Joining, Ray's token (``~/.ray/auth_token`` or
    ``RAY_AUTH_TOKEN``) is sent when there is one."""
    if address is None or address.rpartition(":")[0] in ("127.0.0.1", "localhost"):
        # Ray's own switch for single-machine use (read when ray is imported): the node address
        # is the loopback one, every Ray server binds to it, and 127.0.0.1 is not rewritten to
        # the machine's external address.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if address is not None and (os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file()):
        # A cluster with token authentication (Ray's default for new ones) refuses a joining
        # driver whose token mode was not on before ray.init: turn it on when a token is at hand.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    runtime_env = dict(init_options.pop("runtime_env", None) or {})
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **PROXY_CALLBACK}
    ray.init(address="local" if address is None else address, runtime_env=runtime_env, **init_options)
