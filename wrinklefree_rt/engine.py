"""The public Engine: one scheduler task serving any number of concurrent callers.

The loop (``_serve``) is the whole data path: schedule -> run the step in a worker thread
(GIL released in C++; on the loop's thread when it was measured to take under
``INLINE_STEP_S``) -> apply -> flag the consumers. Async callers need the engine running
in their event loop (``async with engine:``); the sync API (``generate_batch``) works from any
plain thread, starting a private event loop thread when the engine is not already running.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from typing import Sequence as Seq

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.lowlevel import EventLoopToken

from .errors import EngineClosedError, EngineNotRunningError, InvalidRequestError, StepCancelledError
from .intake import Prompt, Request, RequestIntake
from .outputs import EngineStats, RequestOutput
from .params import DiffusionParams, EngineConfig, SamplingParams, validate
from .scheduler import Scheduler
from .sequence import Sequence
from .stream import RequestStream
from .tokenizer import Tokenizer, load_tokenizer

if TYPE_CHECKING:
    from ._core import BitNetBatchEngine
    from .config import ModelConfig

# The error classes are re-exported for code that imported them from here.
__all__ = ["Engine", "EngineStats", "EngineClosedError", "EngineNotRunningError", "InvalidRequestError",
           "RequestStream"]


# Steps measured to take less than this run on the event loop's thread (the loop waits for
# them, as it would for the worker thread), longer or unmeasured ones in a worker thread.
INLINE_STEP_S = 0.005


class Engine:
    """Serve BitNet b1.58 (AR and block-diffusion) requests from one shared model.

    Build with ``Engine.from_pretrained(path, **EngineConfig fields)``. Async use::

        async with Engine.from_pretrained(path) as engine:
            async for out in engine.generate_async("Hello", SamplingParams(max_tokens=32)):
                print(out.text)

    Sync use (any thread): ``engine.generate_batch([...])``, then ``engine.close()``.
    """

    def __init__(self, core: BitNetBatchEngine, model_config: ModelConfig, tokenizer: Tokenizer | None = None,
                 config: EngineConfig | dict | None = None):
        self.config = validate(config, EngineConfig, "engine config")
        self.core = core
        self.model_config = model_config
        self.tokenizer = tokenizer
        self._scheduler = Scheduler(core, self.config.max_num_batched_tokens, self.config.step_costs)
        self._ids = itertools.count()
        self._wake: anyio.Event | None = None
        self._token: EventLoopToken | None = None
        self._loop_thread: int | None = None
        self._closed = False
        self._portal_cm: Any = None   # the sync API's blocking portal, and the engine entered in it
        self._portal_ctx: Any = None
        self._lock = threading.Lock()
        self._enter_lock = threading.Lock()  # not _lock: _call_sync holds that while entering
        self._entered = False
        self._intake = RequestIntake(model_config, tokenizer, self.config, core.pages_total * core.page_size)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, progress=None, **config: Any) -> "Engine":
        """Load a model (HF safetensors directory, ``wrinklefree-rt convert`` output, GGUF file)
        and its tokenizer (``tokenizer.json`` in its folder, else a GGUF's own vocabulary).
        ``progress``: see ``formats.load_model_dir`` (the CLI passes a tqdm bar)."""
        from ._core import BitNetBatchEngine, release_free_heap
        from .formats import load_model_dir

        cfg = validate(config, EngineConfig, "engine config")
        model_config, tensors = load_model_dir(path, cfg.i2s_layout, progress)
        pages = -(-cfg.kv_cache_tokens // cfg.page_size) if cfg.kv_cache_tokens else 0
        core = BitNetBatchEngine(model_config, tensors, num_threads=cfg.num_threads,
                                 max_slots=cfg.max_num_seqs, kv_pages=pages,
                                 page_size=cfg.page_size, lm_head=cfg.lm_head, isa=cfg.isa,
                                 ternary_kernel=cfg.ternary_kernel, ternary_packing=cfg.ternary_packing)
        del tensors  # the core holds what it still uses; the staging copies can go
        release_free_heap()
        tokenizer = load_tokenizer(path, cfg.chat_template)
        return cls(core, model_config, tokenizer, cfg)

    # ----- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> "Engine":
        with self._enter_lock:  # event loops in two threads may race to enter
            if self._entered:
                raise RuntimeError("the engine is already running in an event loop")
            self._entered = True
        try:
            self._closed = False
            self._task_group = anyio.create_task_group()
            await self._task_group.__aenter__()
        except BaseException:
            self._entered = False
            raise
        self._wake = anyio.Event()
        self._stopped = anyio.Event()
        self._serve_scope = anyio.CancelScope()
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()
        self._task_group.start_soon(self._serve)
        return self

    async def __aexit__(self, *exc_info) -> None:
        try:
            await self.aclose()
            # The body's own exception is not handed to the task group (it would come back
            # wrapped in an ExceptionGroup): the group only holds the engine's loop task, now finished.
            await self._task_group.__aexit__(None, None, None)
        finally:
            self._entered = False

    async def aclose(self) -> None:
        """Stop serving: queued and running requests end with ``EngineClosedError``, their
        slots and pages are returned. A step in flight is cancelled between layers."""
        if self._token is None:
            return
        self._closed = True
        self._serve_scope.cancel()
        self.core.cancel()
        with anyio.CancelScope(shield=True):  # the loop stops within one (cancelled) step
            await self._stopped.wait()
        self._token = None

    def close(self) -> None:
        """Stop the private event loop thread of the sync API (if started), ending requests in
        flight like ``aclose()``. A later sync call starts it again."""
        with self._lock:
            ctx, cm = self._portal_ctx, self._portal_cm
            self._portal_ctx = self._portal_cm = None
        if ctx is not None:
            ctx.__exit__(None, None, None)
            cm.__exit__(None, None, None)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    async def _serve(self) -> None:
        sched = self._scheduler
        try:
            with self._serve_scope:
                while True:
                    try:
                        plan = sched.schedule()
                        if plan is None:
                            await cast(anyio.Event, self._wake).wait()  # set by __aenter__
                            self._wake = anyio.Event()
                            continue
                        t0 = time.perf_counter()
                        if sched.costs.at_most(plan.n_rows) < INLINE_STEP_S:
                            # A hand-off to the worker thread and back costs 0.15-0.5 ms, a
                            # large share of steps this short; blocking the loop costs nothing
                            # here (it would wait for the step anyway).
                            out = sched.run(plan)
                            # Yield between the step and the outputs too: asyncio's anyio
                            # delivers a cancellation only to a task waiting on an unresolved
                            # future, and applying the outputs resolves the consumers'.
                            await anyio.lowlevel.checkpoint()
                        else:
                            # Not abandoned on cancellation: the KV state is only touched again
                            # once the step has returned.
                            out = await anyio.to_thread.run_sync(sched.run, plan)
                        sched.apply(plan, out, time.perf_counter() - t0)
                    except StepCancelledError:
                        continue  # only aclose() cancels steps; the cancelled scope ends the loop
                    except Exception as e:  # keep serving; the requests in flight get the error
                        sched.fail_all(e)
                    await anyio.lowlevel.checkpoint()  # consumers run between steps
        finally:
            sched.fail_all(EngineClosedError("the engine was closed while the request was in flight"))
            self._stopped.set()

    # ----- requests -------------------------------------------------------------------------
    def generate_async(self, prompt: Prompt, params: SamplingParams | dict | None = None, *,
                       diffusion: DiffusionParams | dict | bool | None = None,
                       request_id: str | None = None) -> "RequestStream":
        """Stream a request's outputs (cumulative ``RequestOutput``s, the last one finished).

        ``prompt``: text, token ids, or chat messages ``[{"role", "content"}]``. ``diffusion``:
        None for autoregressive decoding; ``True`` or ``DiffusionParams`` for block diffusion.
        Stopping the iteration (``break``, cancelling the task, ``aclose()``) aborts the request
        and frees its slot and pages at the next step boundary.
        """
        return self._stream(prompt, params, diffusion, request_id, final_only=False)

    def _stream(self, prompt: Prompt, params: SamplingParams | dict | None,
                diffusion: DiffusionParams | dict | bool | None, request_id: str | None, *,
                final_only: bool) -> RequestStream:
        """A checked request's stream (a bad request raises here, in the caller's thread)."""
        if request_id is not None and not isinstance(request_id, str):
            raise InvalidRequestError(f"request_id: expected a str, got {type(request_id).__name__}")
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        request = self._intake.check(prompt, params, diffusion, rid)
        return RequestStream(rid, functools.partial(self._submit, request), self._wake_loop,
                             final_only=final_only)

    async def generate(self, prompt: Prompt, params: SamplingParams | dict | None = None, *,
                       diffusion: DiffusionParams | dict | bool | None = None,
                       request_id: str | None = None) -> RequestOutput:
        """Run a request to completion; returns its final ``RequestOutput``."""
        last = None
        async with self._stream(prompt, params, diffusion, request_id, final_only=True) as stream:
            async for out in stream:
                last = out
        assert last is not None  # a stream ends with its final output or raises
        return last

    def generate_batch(self, prompts: Seq[Prompt], params: SamplingParams | dict | Seq | None = None, *,
                       diffusion: DiffusionParams | dict | bool | Seq | None = None) -> list[RequestOutput]:
        """Blocking: run ``prompts`` concurrently, return their final outputs in order.

        ``params`` / ``diffusion`` are one value for all prompts or a list with one per prompt.
        Callable from any number of plain threads at once (not from the engine's event loop).
        """
        prompts = list(prompts)
        per_params = _per_prompt(params, len(prompts), "params")
        per_diffusion = _per_prompt(diffusion, len(prompts), "diffusion")
        # Checked here so that a bad request raises in the caller's thread, before any work.
        streams = []
        for i, (p, sp, dp) in enumerate(zip(prompts, per_params, per_diffusion)):
            try:
                streams.append(self._stream(p, sp, dp, None, final_only=True))
            except InvalidRequestError as e:
                raise InvalidRequestError(f"prompts[{i}]: {e}") from None
        return self._call_sync(self._collect, streams)

    async def _collect(self, streams: list["RequestStream"]) -> list[RequestOutput]:
        """Run streams to completion; a failing one raises its own error (the first, in order)
        once the others are done, rather than an ExceptionGroup. Every request is submitted
        before any is read, so they run concurrently without a task apiece."""
        results: list[RequestOutput | None] = [None] * len(streams)
        errors: list[Exception | None] = [None] * len(streams)
        async with contextlib.AsyncExitStack() as streams_open:  # leaving early aborts the rest
            for i, stream in enumerate(streams):
                await streams_open.enter_async_context(stream)
                try:
                    await stream.submit()
                except Exception as e:
                    errors[i] = e
            for i, stream in enumerate(streams):
                if errors[i] is None:
                    try:
                        async for results[i] in stream:
                            pass
                    except Exception as e:
                        errors[i] = e
        first_error = next((e for e in errors if e is not None), None)
        if first_error is not None:
            raise first_error
        return cast("list[RequestOutput]", results)  # every stream ended with its final output

    def _call_sync(self, fn, *args):
        with self._lock:
            if self._token is None:
                cm = anyio.from_thread.start_blocking_portal()
                portal = cm.__enter__()
                ctx = portal.wrap_async_context_manager(self)
                ctx.__enter__()
                self._portal_cm, self._portal_ctx = cm, ctx
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("the sync API would block the engine's own event loop; "
                               "use `await engine.generate(...)` there")
        return anyio.from_thread.run(fn, *args, token=self._token)

    def stats(self) -> EngineStats:
        s = self._scheduler.stats
        total = self.core.pages_total
        return EngineStats(running=len(self._scheduler.running), waiting=len(self._scheduler.waiting),
                           kv_pages_used=total - self.core.pages_free, kv_pages_total=total,
                           forwards=s.forwards, rows=s.rows,
                           rows_per_forward=s.rows / s.forwards if s.forwards else 0.0,
                           output_tokens=s.tokens, step_time=s.step_time, schedule_time=s.schedule_time,
                           isa=self.core.isa, ternary_plan=self.core.ternary_plan,
                           step_costs=self._scheduler.costs.table())

    # ----- handing a request to the loop ----------------------------------------------------
    async def _submit(self, request: Request, final_only: bool) -> Sequence:
        if self._token is None or threading.get_ident() != self._loop_thread:
            raise EngineNotRunningError(
                "the engine is not running in this event loop: use `async with engine:` "
                "(or the sync generate_batch)")
        if self._closed:
            raise EngineClosedError("the engine is closing")
        seq = self._intake.make_sequence(request, await self._intake.prompt_ids(request))
        seq.mailbox.final_only = final_only
        self._scheduler.add(seq)
        self._wake_loop()
        return seq

    def _wake_loop(self) -> None:
        if self._wake is not None:
            self._wake.set()


def _per_prompt(value, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise InvalidRequestError(f"{what}: {len(value)} values for {n} prompts")
        return list(value)
    return [value] * n
