"""What the engine hands back: a request's cumulative output, its metrics, engine statistics."""
from __future__ import annotations

import msgspec

__all__ = ["RequestOutput", "RequestMetrics", "EngineStats"]


class RequestMetrics(msgspec.Struct, kw_only=True):
    """Per-request timings (seconds) and work counts.

    ``forwards``: engine steps that ran rows of this request; ``rows``: rows it contributed.
    ``tokens_per_s`` counts output tokens over the time since admission.
    """

    queue_time: float = 0.0
    ttft: float | None = None
    latency: float | None = None
    tokens_per_s: float | None = None
    forwards: int = 0
    rows: int = 0
    tokens_per_forward: float | None = None


class RequestOutput(msgspec.Struct, kw_only=True):
    """A request's output so far (cumulative: each update replaces the previous one).

    ``token_ids`` includes a final EOS / stop token; ``text`` never does, and never contains a
    stop string. ``finish_reason`` is ``"stop"``, ``"length"``, or ``None`` while running.
    ``provisional_token_ids`` / ``provisional_text`` (DLM requests with ``provisional``, while
    running): tokens already decoded in the open block, in position order, and the text they
    add after ``text``; not yet committed nor checked for stop strings.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    metrics: RequestMetrics = msgspec.field(default_factory=RequestMetrics)
    provisional_token_ids: list[int] = []
    provisional_text: str = ""


class EngineStats(msgspec.Struct, kw_only=True):
    """Engine-wide state and counters since start, and the kernels in use: ``isa`` (the kernel
    table) and ``ternary_plan`` (the ternary GEMM per row count, "1:tiles 2:tiles ... 32:lut32-avx2").
    ``step_costs``: seconds per step by rows per step, measured from this engine's own steps
    (moving averages per bucket of row counts: 1, 2, 3-4, 5-8, ...; key = the bucket's mean rows),
    what ``sub_block_size="auto"`` prices rows with."""

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
    isa: str
    ternary_plan: str
    step_costs: dict[int, float] = {}
