"""RequestStream: the caller's side of one request, an async iterator over its outputs."""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from .outputs import RequestOutput
from .sequence import Sequence

__all__ = ["RequestStream"]


class RequestStream:
    """Async iterator over one request's outputs; aborts the request when left early.

    ``submit(final_only)`` hands the request to the engine on the first ``__anext__`` (or
    ``submit()``) and returns its ``Sequence``; with ``final_only`` the engine flags this consumer once, when the
    request ends, and the stream yields only the final output. ``wake()`` tells the engine's
    loop to look at an aborted request.

    ``break`` out of ``async for``, a cancelled task, ``aclose()`` or garbage collection all
    abort: aborting only sets a flag that the scheduler reads at the next step boundary, so
    it is safe from any context.
    """

    def __init__(self, request_id: str, submit: Callable[[bool], Awaitable[Sequence]],
                 wake: Callable[[], None], *, final_only: bool = False):
        self.request_id = request_id
        self._submit = submit
        self._wake = wake
        self._final_only = final_only
        self._seq: Sequence | None = None
        self._done = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        try:
            seq = await self.submit()
            await seq.mailbox.wait()
        except BaseException:
            self._abort()
            raise
        if seq.mailbox.error is not None:
            self._done = True
            raise seq.mailbox.error
        out = seq.snapshot()
        self._done = out.finished
        return out

    async def submit(self) -> Sequence:
        """Hand the request to the engine now (the first ``__anext__`` does it otherwise)."""
        if self._seq is None:
            self._seq = await self._submit(self._final_only)
        return self._seq

    def _abort(self) -> None:
        self._done = True
        if self._seq is not None and not self._seq.finished:
            self._seq.abort()
            self._wake()

    async def aclose(self) -> None:
        self._abort()

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._abort()

    def __del__(self) -> None:
        if not self._done and self._seq is not None and not self._seq.finished:
            self._seq.abort()
