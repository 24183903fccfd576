"""One admitted HTTP request as an ASGI response: its engine requests, run to a JSON body or
streamed as server-sent events, aborted when the client goes away.

The response watches the connection for ``http.disconnect`` for its whole life, including
before the first token (a long prefill): a disconnect cancels it, which closes every engine
stream, and the engine frees their slots and pages at its next step boundary.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager

import anyio
import msgspec

from .. import EngineClosedError, RequestOutput
from .errors import ApiError, error_response
from .metrics import RequestTimer, ServerMetrics
from .protocol import EngineJob, error_param

__all__ = ["Generation"]

log = logging.getLogger("wrinklefree_rt.server")

_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]


def _api_error(e: Exception) -> ApiError:
    if isinstance(e, EngineClosedError):
        return ApiError(503, str(e), code="engine_closed", headers={"Retry-After": "1"})
    if isinstance(e, ValueError):  # InvalidRequestError and the parameter validation
        message = str(e)
        prefix = "diffusion." if message.startswith("invalid diffusion params") else ""
        return ApiError(400, message, param=error_param(message, prefix))
    log.error("request failed in the engine", exc_info=e)
    return ApiError(500, f"the engine failed: {type(e).__name__}: {e}")


class Generation:
    """The ASGI response for one completion (``chat``: chat completion) request."""

    def __init__(self, engine, jobs: list[EngineJob], *, chat: bool, model: str, stream: bool,
                 include_usage: bool, n: int, metrics: ServerMetrics, arrival: float,
                 on_done: Callable[[], None]):
        self._engine, self._jobs, self._chat, self._model = engine, jobs, chat, model
        self._stream, self._include_usage, self._n = stream, include_usage, n
        self._metrics, self._arrival, self._on_done = metrics, arrival, on_done
        self._id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self._created = int(time.time())
        self._object = ("chat.completion" if chat else "text_completion")
        self._chunk_object = ("chat.completion.chunk" if chat else "text_completion")

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
                try:
                    await (self._send_stream(send) if self._stream else self._send_json(send))
                except ApiError as e:
                    self._metrics.reject(e.status)
                    await error_response(e)(scope, receive, send)
                tg.cancel_scope.cancel()
        finally:
            self._on_done()

    # ----- running the engine requests --------------------------------------------------------
    @asynccontextmanager
    async def _outputs(self):
        """Yields a channel of ``(index, RequestOutput | Exception)``; leaving aborts what runs."""
        sender, receiver = anyio.create_memory_object_stream(0)
        async with anyio.create_task_group() as tg:
            async with sender:
                for job in self._jobs:
                    tg.start_soon(self._pump, job, sender.clone())
            try:
                yield receiver
            finally:
                tg.cancel_scope.cancel()

    async def _pump(self, job: EngineJob, channel) -> None:
        timer = RequestTimer(self._metrics, self._arrival, job.diffusion is not None)
        async with channel:
            try:
                async with self._engine.generate_async(job.prompt, job.params, diffusion=job.diffusion) as stream:
                    async for out in stream:
                        timer.update(out)
                        await channel.send((job.index, out))
            except Exception as e:  # noqa: BLE001  the request's own failure goes to its client only
                timer.done = True
                await channel.send((job.index, e))
            finally:
                timer.aborted()

    # ----- a JSON body ------------------------------------------------------------------------
    async def _send_json(self, send) -> None:
        finals: dict[int, RequestOutput] = {}
        failure = None  # raised outside the task groups, which would wrap it (trio)
        async with self._outputs() as outputs:
            async for index, item in outputs:
                if isinstance(item, Exception):
                    failure = item
                    break
                if item.finished:
                    finals[index] = item
        if failure is not None:
            raise _api_error(failure)
        choices = [self._choice(i, finals[i]) for i in sorted(finals)]
        body = {"id": self._id, "object": self._object, "created": self._created, "model": self._model,
                "choices": choices, "usage": self._usage(finals)}
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": msgspec.json.encode(body)})

    def _choice(self, index: int, out: RequestOutput) -> dict:
        if self._chat:
            return {"index": index, "message": {"role": "assistant", "content": out.text},
                    "logprobs": None, "finish_reason": out.finish_reason}
        return {"index": index, "text": out.text, "logprobs": None, "finish_reason": out.finish_reason}

    def _usage(self, outputs: dict[int, RequestOutput]) -> dict:
        """A prompt counts once however many choices (``n``) it has."""
        prompt = sum(len(o.prompt_token_ids) for i, o in outputs.items() if i % self._n == 0)
        completion = sum(len(o.token_ids) for o in outputs.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    # ----- server-sent events -----------------------------------------------------------------
    async def _send_stream(self, send) -> None:
        """The first event decides the status: a request the engine refuses fails at submission,
        before any output, and gets its 400; errors after the headers arrive as an error event."""
        latest: dict[int, RequestOutput] = {}
        sent_text = {job.index: "" for job in self._jobs}
        failure = None  # raised outside the task groups, which would wrap it (trio)
        async with self._outputs() as outputs:
            async for index, item in outputs:
                if isinstance(item, Exception):
                    failure = item
                    if latest:
                        await self._event(send, _api_error(item).body())
                    break
                if not latest:
                    await self._start_stream(send)
                latest[index] = item
                await self._send_delta(send, index, item, sent_text)
            else:
                if self._include_usage:
                    await self._event(send, self._chunk([], usage=self._usage(latest)))
        if failure is not None and not latest:
            raise _api_error(failure)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    async def _start_stream(self, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        if self._chat:  # OpenAI's first chat chunk per choice carries the role
            for job in self._jobs:
                await self._event(send, self._chunk([{"index": job.index, "delta": {"role": "assistant", "content": ""},
                                                      "logprobs": None, "finish_reason": None}]))

    async def _send_delta(self, send, index: int, out: RequestOutput, sent_text: dict[int, str]) -> None:
        delta = out.text[len(sent_text[index]):]
        if not (delta or out.finished or out.provisional_text):
            return
        sent_text[index] = out.text
        choice = ({"index": index, "delta": {"content": delta} if delta else {}} if self._chat
                  else {"index": index, "text": delta})
        choice.update(logprobs=None, finish_reason=out.finish_reason)
        if out.provisional_text:  # only when the request asked for it (diffusion.provisional)
            choice["provisional_text"] = out.provisional_text
        await self._event(send, self._chunk([choice]))

    def _chunk(self, choices: list[dict], usage: dict | None = None) -> dict:
        chunk = {"id": self._id, "object": self._chunk_object, "created": self._created, "model": self._model,
                 "choices": choices}
        if self._include_usage:
            chunk["usage"] = usage
        return chunk

    @staticmethod
    async def _event(send, data: dict) -> None:
        await send({"type": "http.response.body", "body": b"data: " + msgspec.json.encode(data) + b"\n\n",
                    "more_body": True})


async def _cancel_on_disconnect(receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
