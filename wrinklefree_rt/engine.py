"""The public Engine: one scheduler task serving any number of concurrent callers.

The loop (``_serve``) is the whole data path: schedule -> run the step in a worker thread
(GIL released in C++) -> apply -> flag the consumers. Async callers need the engine running
in their event loop (``async with engine:``); the sync API (``generate_batch``) works from any
plain thread, starting a private event loop thread when the engine is not already running.
"""
from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any, Sequence as Seq, Union

import anyio
import anyio.from_thread
import anyio.lowlevel
import msgspec

from .errors import StepCancelledError, WrinklefreeError
from .params import DiffusionParams, EngineConfig, SamplingParams, validate
from .scheduler import Scheduler
from .sequence import DlmSpec, RequestOutput, Sequence
from .tokenizer import Tokenizer

__all__ = ["Engine", "EngineStats", "EngineClosedError", "EngineNotRunningError", "InvalidRequestError"]

Prompt = Union[str, Seq[int], Seq[dict]]

# Prompts longer than this (characters) are tokenized in a worker thread, off the event loop.
_LONG_PROMPT_CHARS = 4096
_DEFAULT_BLOCK = 32
_DEFAULT_SUB_BLOCK = 8
_DEFAULT_THRESHOLD = 0.9


class EngineClosedError(WrinklefreeError, RuntimeError):
    """The engine was closed (``aclose()``) while the request was queued or running."""


class EngineNotRunningError(WrinklefreeError, RuntimeError):
    """An async call on an engine that is not running in this event loop."""


class InvalidRequestError(WrinklefreeError, ValueError):
    """A request the engine cannot serve; the message names the field and the problem."""


class EngineStats(msgspec.Struct, kw_only=True):
    """Engine-wide state and counters since start."""

    running: int
    waiting: int
    kv_pages_used: int
    kv_pages_total: int
    forwards: int
    rows: int
    rows_per_forward: float
    output_tokens: int
    step_time: float
    schedule_time: float


class Engine:
    """Serve BitNet b1.58 (AR and block-diffusion) requests from one shared model.

    Build with ``Engine.from_pretrained(path, **EngineConfig fields)``. Async use::

        async with Engine.from_pretrained(path) as engine:
            async for out in engine.generate_async("Hello", SamplingParams(max_tokens=32)):
                print(out.text)

    Sync use (any thread): ``engine.generate_batch([...])``, then ``engine.close()``.
    """

    def __init__(self, core, model_config, tokenizer: Tokenizer | None = None,
                 config: EngineConfig | dict | None = None):
        self.config = validate(config, EngineConfig, "engine config")
        self.core = core
        self.model_config = model_config
        self.tokenizer = tokenizer
        self._scheduler = Scheduler(core, self.config.max_num_batched_tokens)
        self._ids = itertools.count()
        self._wake: anyio.Event | None = None
        self._token = None
        self._loop_thread: int | None = None
        self._closed = False
        self._portal_cm = None
        self._portal_ctx = None
        self._lock = threading.Lock()
        self._enter_lock = threading.Lock()  # not _lock: _call_sync holds that while entering
        self._entered = False
        self._eos_ids = frozenset(model_config.eos_token_ids) | frozenset(
            tokenizer.eos_token_ids if tokenizer is not None else ())

    @classmethod
    def from_pretrained(cls, path: str | Path, **config: Any) -> "Engine":
        """Load a model (HF safetensors directory, ``wrinklefree-rt convert`` output, GGUF file)
        and the ``tokenizer.json`` in its folder when present."""
        from ._core import BitNetBatchEngine, release_free_heap
        from .formats import load_model_dir

        cfg = validate(config, EngineConfig, "engine config")
        model_config, tensors = load_model_dir(path)
        pages = -(-cfg.kv_cache_tokens // cfg.page_size) if cfg.kv_cache_tokens else 0
        core = BitNetBatchEngine(model_config, tensors, num_threads=cfg.num_threads,
                                 max_slots=cfg.max_num_seqs, kv_pages=pages,
                                 page_size=cfg.page_size, lm_head=cfg.lm_head, isa=cfg.isa)
        del tensors  # the core holds what it still uses; the staging copies can go
        release_free_heap()
        folder = Path(path) if Path(path).is_dir() else Path(path).parent  # a GGUF / .wfrt file's folder
        tokenizer = (Tokenizer.from_dir(folder, cfg.chat_template)
                     if (folder / "tokenizer.json").is_file() else None)
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
                            await self._wake.wait()
                            self._wake = anyio.Event()
                            continue
                        t0 = time.perf_counter()
                        # Not abandoned on cancellation: the KV state is only touched again
                        # once the step has returned.
                        out = await anyio.to_thread.run_sync(plan.run, self.core, StepCancelledError)
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
        sp = validate(params, SamplingParams, "sampling params")
        dp = None if diffusion is None or diffusion is False else \
            validate(None if diffusion is True else diffusion, DiffusionParams, "diffusion params")
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        return RequestStream(self, prompt, sp, dp, rid)

    async def generate(self, prompt: Prompt, params: SamplingParams | dict | None = None, *,
                       diffusion: DiffusionParams | dict | bool | None = None,
                       request_id: str | None = None) -> RequestOutput:
        """Run a request to completion; returns its final ``RequestOutput``."""
        last = None
        async with self.generate_async(prompt, params, diffusion=diffusion, request_id=request_id) as stream:
            stream._final_only = True
            async for last in stream:
                pass
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
        # Validate here so that a bad request raises in the caller's thread, before any work.
        streams = [self.generate_async(p, sp, diffusion=dp)
                   for p, sp, dp in zip(prompts, per_params, per_diffusion)]
        return self._call_sync(self._collect, streams)

    async def _collect(self, streams: list["RequestStream"]) -> list[RequestOutput]:
        """Run streams to completion; a failing one raises its own error (the first, in order)
        once the others are done, rather than an ExceptionGroup."""
        results: list[RequestOutput | None] = [None] * len(streams)
        errors: list[Exception | None] = [None] * len(streams)

        async def one(i: int) -> None:
            try:
                async with streams[i] as stream:
                    stream._final_only = True
                    async for results[i] in stream:
                        pass
            except Exception as e:
                errors[i] = e

        async with anyio.create_task_group() as tg:
            for i in range(len(streams)):
                tg.start_soon(one, i)
        first_error = next((e for e in errors if e is not None), None)
        if first_error is not None:
            raise first_error
        return results

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
                           output_tokens=s.tokens, step_time=s.step_time, schedule_time=s.schedule_time)

    # ----- building a sequence --------------------------------------------------------------
    async def _submit(self, prompt: Prompt, sp: SamplingParams, dp: DiffusionParams | None,
                      rid: str, final_only: bool) -> Sequence:
        if self._token is None or threading.get_ident() != self._loop_thread:
            raise EngineNotRunningError(
                "the engine is not running in this event loop: use `async with engine:` "
                "(or the sync generate_batch)")
        if self._closed:
            raise EngineClosedError("the engine is closing")
        text, ids = await self._tokenize(prompt)
        seq = self._make_sequence(text, ids, sp, dp, rid)
        seq.output.final_only = final_only
        self._scheduler.add(seq)
        self._wake.set()
        return seq

    async def _tokenize(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, await self._encode(self._need_tokenizer("a text prompt"), prompt, True)
        items = list(prompt)
        if items and all(isinstance(m, dict) for m in items):
            tok = self._need_tokenizer("chat messages")
            try:
                text = tok.apply_chat_template(items)
            except ValueError as e:
                raise InvalidRequestError(f"prompt: {e}") from None
            return text, await self._encode(tok, text, False)  # the template holds BOS already
        for i, t in enumerate(items):
            if isinstance(t, bool) or not isinstance(t, int) and not hasattr(t, "__index__"):
                raise InvalidRequestError(f"prompt[{i}]: expected a token id (int), got {type(t).__name__}")
        return None, [int(t) for t in items]

    @staticmethod
    async def _encode(tok: Tokenizer, text: str, add_special_tokens: bool) -> list[int]:
        if len(text) > _LONG_PROMPT_CHARS:
            return await anyio.to_thread.run_sync(tok.encode, text, add_special_tokens)
        return tok.encode(text, add_special_tokens)

    def _need_tokenizer(self, what: str) -> Tokenizer:
        if self.tokenizer is None:
            raise InvalidRequestError(f"{what} needs a tokenizer (tokenizer.json in the model "
                                      "directory); pass token ids instead")
        return self.tokenizer

    def _make_sequence(self, text: str | None, ids: list[int], sp: SamplingParams,
                       dp: DiffusionParams | None, rid: str) -> Sequence:
        if not ids:
            raise InvalidRequestError("prompt: empty (at least one token is needed)")
        vocab = self.model_config.vocab_size
        bad = next((i for i, t in enumerate(ids) if not 0 <= t < vocab), None)
        if bad is not None:  # also catches a tokenizer larger than the model's vocabulary
            raise InvalidRequestError(f"prompt[{bad}]: token id {ids[bad]} outside the vocabulary [0, {vocab})")
        dlm = self._resolve_dlm(dp, sp) if dp is not None else None
        mask = dlm.mask_token_id if dlm else self._mask_id(None)
        if mask is not None and mask in ids:
            raise InvalidRequestError(f"prompt[{ids.index(mask)}]: the mask token {mask} may not appear "
                                      "in a prompt (positions to fill are chosen by the decoder)")
        for i, t in enumerate(sp.stop_token_ids):
            if t >= vocab:
                raise InvalidRequestError(f"params.stop_token_ids[{i}]: {t} outside the vocabulary [0, {vocab})")
        stop_ids = frozenset(sp.stop_token_ids) | (frozenset() if sp.ignore_eos else self._eos_ids)
        seq = Sequence(rid, text, ids, sp, dlm, stop_ids, self.tokenizer, -1 if mask is None else mask)
        max_pos = self.model_config.max_position_embeddings
        if seq.kv_positions > max_pos:
            raise InvalidRequestError(
                f"prompt ({len(ids)} tokens) + max_tokens ({sp.max_tokens}) needs {seq.kv_positions} "
                f"positions; the model has {max_pos}")
        room = self.core.pages_total * self.core.page_size
        if seq.kv_positions > room:
            raise InvalidRequestError(f"the request needs {seq.kv_positions} KV positions; the cache "
                                      f"holds {room} (raise kv_cache_tokens)")
        return seq

    def _mask_id(self, dp: DiffusionParams | None) -> int | None:
        for value in (dp.mask_token_id if dp else None, self.config.diffusion.mask_token_id,
                      self.model_config.mask_token_id,
                      self.tokenizer.mask_token_id if self.tokenizer else None):
            if value is not None:
                return value
        return None

    def _resolve_dlm(self, dp: DiffusionParams, sp: SamplingParams) -> DlmSpec:
        """Request parameters first, then the engine's defaults, then the model config, then
        the tokenizer (mask token)."""
        eng, mc = self.config.diffusion, self.model_config
        mask = self._mask_id(dp)
        if mask is None:
            raise InvalidRequestError(
                "diffusion.mask_token_id: no mask token id is known (not in the request, the engine "
                "config, the model config, nor the tokenizer); block diffusion needs one")
        if not 0 <= mask < mc.vocab_size:
            raise InvalidRequestError(f"diffusion.mask_token_id: {mask} outside the vocabulary "
                                      f"[0, {mc.vocab_size})")
        if sp.temperature > 0:
            raise InvalidRequestError("params.temperature: block diffusion decodes greedily "
                                      "(confidence-ordered argmax); use temperature 0")

        def pick(name, model_value, default):
            for value in (getattr(dp, name), getattr(eng, name), model_value):
                if value is not None:
                    return value
            return default

        block = pick("block_size", mc.bd_size, _DEFAULT_BLOCK)
        sub_default = _DEFAULT_SUB_BLOCK if block % _DEFAULT_SUB_BLOCK == 0 else block
        sub = dp.sub_block_size or (eng.sub_block_size if eng.sub_block_size and block % eng.sub_block_size == 0
                                    else sub_default)
        if block % sub:
            raise InvalidRequestError(f"diffusion.sub_block_size: {sub} does not divide block_size {block}")
        attention = pick("attention", "block" if mc.bd_size else None, "causal")
        return DlmSpec(block_size=block, sub_block_size=sub,
                       threshold=pick("threshold", None, _DEFAULT_THRESHOLD),
                       mask_token_id=mask, shift=pick("shift", mc.shift, True),
                       attn_block=block if attention == "block" else 1,
                       provisional=dp.provisional or eng.provisional,
                       fuse_commit=dp.fuse_commit or eng.fuse_commit)


def _per_prompt(value, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise InvalidRequestError(f"{what}: {len(value)} values for {n} prompts")
        return list(value)
    return [value] * n


class RequestStream:
    """Async iterator over one request's outputs; aborts the request when left early.

    ``break`` out of ``async for``, a cancelled task, ``aclose()`` or garbage collection all
    abort: aborting only sets a flag that the scheduler reads at the next step boundary, so
    it is safe from any context.
    """

    def __init__(self, engine: Engine, prompt: Prompt, sp: SamplingParams,
                 dp: DiffusionParams | None, request_id: str):
        self._engine = engine
        self._prompt = prompt
        self._sp, self._dp = sp, dp
        self.request_id = request_id
        self._seq: Sequence | None = None
        self._done = False
        self._final_only = False  # yield only the final output (set before iterating)

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._seq is None:
                self._seq = await self._engine._submit(self._prompt, self._sp, self._dp, self.request_id,
                                                      self._final_only)
            seq = self._seq
            await seq.output.wait()
        except BaseException:
            self._abort()
            raise
        if seq.output.error is not None:
            self._done = True
            raise seq.output.error
        out = seq.snapshot()
        self._done = out.finished
        return out

    def _abort(self) -> None:
        self._done = True
        if self._seq is not None and not self._seq.finished:
            self._seq.abort()
            if self._engine._wake is not None:
                self._engine._wake.set()

    async def aclose(self) -> None:
        self._abort()

    async def __aenter__(self) -> "RequestStream":
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._abort()

    def __del__(self) -> None:
        if not self._done and self._seq is not None and not self._seq.finished:
            self._seq.abort()
