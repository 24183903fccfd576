"""The ASGI app: routes, API key, body limit, admission; ``create_app(engine, ...)``."""
from __future__ import annotations

import hmac
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from ..params import DiffusionParams, validate
from .errors import ApiError, error_response
from .generation import Generation
from .metrics import ServerMetrics
from .protocol import ChatRequest, CompletionRequest, decode_request, engine_jobs

__all__ = ["create_app"]

log = logging.getLogger("wrinklefree_rt.server")

DEFAULT_MAX_WAITING = 128
DEFAULT_MAX_BODY_BYTES = 4 << 20


class _Server:
    def __init__(self, engine, model_name: str, api_key: str | None, max_waiting: int, max_body_bytes: int,
                 diffusion: DiffusionParams | dict | bool | None):
        self.engine = engine
        self.model_name = model_name
        self._api_key = api_key.encode() if api_key else None
        self._capacity = engine.config.max_num_seqs + max_waiting
        self._max_body = max_body_bytes
        self._default_diffusion = _default_diffusion(diffusion)
        self._active = 0  # engine requests admitted and not yet done (running or waiting)
        self._created = int(time.time())
        self.metrics = ServerMetrics(engine, model_name)

    # ----- endpoints --------------------------------------------------------------------------
    async def completions(self, request: Request) -> ASGIApp:
        return await self._generate(request, CompletionRequest)

    async def chat_completions(self, request: Request) -> ASGIApp:
        return await self._generate(request, ChatRequest)

    async def models(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except ApiError as e:
            return self._refuse(e)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        try:
            self._authorize(request)
            self._check_model(request.path_params["model"])
        except ApiError as e:
            return self._refuse(e)
        return JSONResponse(self._model_card())

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def prometheus(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    # ----- a generation request ---------------------------------------------------------------
    async def _generate(self, request: Request, kind) -> ASGIApp:
        arrival = time.perf_counter()
        try:
            self._authorize(request)
            req = decode_request(await self._read_body(request), kind)
            self._check_model(req.model)
            jobs = engine_jobs(req, self._default_diffusion, self._capacity)
            self._admit(len(jobs))
        except ApiError as e:
            return self._refuse(e)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Generation(self.engine, jobs, chat=kind is ChatRequest, model=self.model_name, stream=req.stream,
                          include_usage=include_usage, n=req.n, metrics=self.metrics, arrival=arrival,
                          on_done=lambda: self._release(len(jobs)))

    def _authorize(self, request: Request) -> None:
        if self._api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self._api_key):
            raise ApiError(401, "missing or wrong API key (send `Authorization: Bearer KEY`)",
                           code="invalid_api_key")

    async def _read_body(self, request: Request) -> bytes:
        too_large = ApiError(413, f"the request body is larger than {self._max_body} bytes",
                             code="request_too_large")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self._max_body:
                raise too_large
        return bytes(body)

    def _check_model(self, name: str) -> None:
        if name != self.model_name:
            raise ApiError(404, f"model {name!r} is not served here (this server serves {self.model_name!r})",
                           param="model", code="model_not_found")

    def _admit(self, n: int) -> None:
        """Refuse at once, never queue without bound: ``max_num_seqs`` requests run and up to
        ``max_waiting`` more wait."""
        if self._active + n > self._capacity:
            raise ApiError(503, f"the server is at capacity ({self._active} requests running or waiting); "
                           "retry later", code="server_overloaded", headers={"Retry-After": "1"})
        self._active += n

    def _release(self, n: int) -> None:
        self._active -= n

    def _refuse(self, error: ApiError) -> Response:
        self.metrics.reject(error.status)
        return error_response(error)

    def _model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self._created, "owned_by": "wrinklefree_rt",
                "max_model_len": self.engine.model_config.max_position_embeddings}


def _default_diffusion(value: DiffusionParams | dict | bool | None) -> dict | None:
    """The server's default for requests that do not say: ``None`` autoregressive, else block
    diffusion with these settings (validated now, so a bad ``--dlm`` fails at start)."""
    if value is None or value is False:
        return None
    params = validate(None if value is True else value, DiffusionParams, "diffusion params")
    return {k: v for k, v in msgspec.to_builtins(params).items() if v is not None}


async def _http_error(request: Request, exc: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                   code=code, headers=dict(exc.headers or {})))


async def _server_fault(request: Request, exc: Exception) -> Response:
    log.error("unhandled error serving %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(ApiError(500, f"internal server error: {type(exc).__name__}"))


def create_app(engine, *, model_name: str | None = None, api_key: str | None = None,
               max_waiting: int = DEFAULT_MAX_WAITING, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               diffusion: DiffusionParams | dict | bool | None = None) -> Starlette:
    """An OpenAI-compatible ASGI app serving ``engine`` (docs/server.md).

    ``model_name``: the name clients send as ``model`` (default ``"wrinklefree"``). ``api_key``:
    when set, ``/v1/*`` needs ``Authorization: Bearer KEY``. ``max_waiting``: engine requests that
    may wait beyond the engine's ``max_num_seqs`` running ones; more get 503 at once.
    ``max_body_bytes``: larger bodies get 413. ``diffusion``: the default for requests without a
    ``diffusion`` field (``True`` or DiffusionParams fields: block diffusion).

    The app's lifespan runs the engine (``async with engine``); mounted in another app, run
    ``app.router.lifespan_context(app)`` from the host's lifespan.
    """
    if max_waiting < 0:
        raise ValueError(f"max_waiting: must be >= 0, got {max_waiting}")
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes: must be >= 1, got {max_body_bytes}")
    server = _Server(engine, model_name or "wrinklefree", api_key, max_waiting, max_body_bytes, diffusion)

    @asynccontextmanager
    async def lifespan(app):
        async with engine:
            yield

    routes = [Route("/v1/completions", server.completions, methods=["POST"]),
              Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
              Route("/v1/models", server.models, methods=["GET"]),
              Route("/v1/models/{model:path}", server.model, methods=["GET"]),
              Route("/health", server.health, methods=["GET"]),
              Route("/metrics", server.prometheus, methods=["GET"])]
    handlers: dict[Any, Any] = {HTTPException: _http_error, Exception: _server_fault}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.server = server
    return app

