"""Prometheus metrics with vLLM's meanings under the ``wrinklefree:`` prefix.

Engine state (requests running / waiting, KV pages, forwards) is read from ``engine.stats()``
when scraped; request counters and latency histograms are recorded by the server as outputs
reach the client. Each app has its own registry, so several apps can live in one process.
"""
from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["RequestTimer", "ServerMetrics"]

PREFIX = "wrinklefree:"
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                240.0, 480.0, 960.0)
_PER_FORWARD_BUCKETS = (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class _EngineCollector:
    """Gauges and counters the engine keeps itself, read at scrape time."""

    def __init__(self, engine, model_name: str):
        self._engine, self._model = engine, model_name

    def collect(self):
        s = self._engine.stats()
        label = ["model_name"]
        for name, doc, value in (
                ("num_requests_running", "Requests holding a KV slot (being decoded).", s.running),
                ("num_requests_waiting", "Requests queued in the engine for a KV slot.", s.waiting),
                ("kv_cache_pages_used", "KV cache pages in use.", s.kv_pages_used),
                ("kv_cache_pages_total", "KV cache pages in the pool.", s.kv_pages_total),
                ("kv_cache_usage_perc", "Fraction of KV cache pages in use (0..1).",
                 s.kv_pages_used / s.kv_pages_total if s.kv_pages_total else 0.0)):
            g = GaugeMetricFamily(PREFIX + name, doc, labels=label)
            g.add_metric([self._model], value)
            yield g
        for name, doc, value in (
                ("engine_forwards", "Forward passes (engine steps) run.", s.forwards),
                ("engine_rows", "Rows (token positions) run through the model.", s.rows)):
            c = CounterMetricFamily(PREFIX + name, doc, labels=label)
            c.add_metric([self._model], value)
            yield c


class ServerMetrics:
    def __init__(self, engine, model_name: str):
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine, model_name))
        labels: dict[str, Any] = {"labelnames": ["model_name"], "registry": self.registry}
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens of admitted requests.",
                                     **labels).labels(model_name)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Generated tokens sent to clients.",
                                         **labels).labels(model_name)
        self._finished = Counter(PREFIX + "request_success",
                                 "Engine requests ended, by finish reason (stop, length, abort).",
                                 labelnames=["model_name", "finished_reason"], registry=self.registry)
        self._model = model_name
        self.rejected = Counter(PREFIX + "http_requests_rejected",
                                "HTTP requests refused before reaching the engine, by status.",
                                labelnames=["model_name", "status"], registry=self.registry)
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds",
                              "From receiving the request to its first generated token.",
                              buckets=_LATENCY_BUCKETS, **labels).labels(model_name)
        self.itl = Histogram(PREFIX + "inter_token_latency_seconds",
                             "Time between output updates divided by the tokens each one added.",
                             buckets=_LATENCY_BUCKETS, **labels).labels(model_name)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds",
                             "From receiving the request to its last token.",
                             buckets=_E2E_BUCKETS, **labels).labels(model_name)
        self.dlm_tokens_per_forward = Histogram(
            PREFIX + "dlm_committed_tokens_per_forward",
            "Block-diffusion requests: committed tokens per forward that ran the request.",
            buckets=_PER_FORWARD_BUCKETS, **labels).labels(model_name)

    def finished(self, reason: str) -> None:
        self._finished.labels(self._model, reason).inc()

    def reject(self, status: int) -> None:
        self.rejected.labels(self._model, str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """Records one engine request's tokens and latencies as its outputs arrive."""

    def __init__(self, metrics: ServerMetrics, arrival: float, dlm: bool):
        self._m, self._arrival, self._dlm = metrics, arrival, dlm
        self._last = arrival
        self._tokens = 0
        self._started = False
        self.done = False

    def update(self, out) -> None:
        now = time.perf_counter()
        if not self._started:
            self._started = True
            self._m.prompt_tokens.inc(len(out.prompt_token_ids))
        new = len(out.token_ids) - self._tokens
        if new > 0:
            if self._tokens == 0:
                self._m.ttft.observe(now - self._arrival)
            else:
                for _ in range(new):
                    self._m.itl.observe((now - self._last) / new)
            self._m.generation_tokens.inc(new)
            self._tokens, self._last = len(out.token_ids), now
        if out.finished:
            self.done = True
            self._m.e2e.observe(now - self._arrival)
            self._m.finished(out.finish_reason)
            if self._dlm and out.metrics.tokens_per_forward is not None:
                self._m.dlm_tokens_per_forward.observe(out.metrics.tokens_per_forward)

    def aborted(self) -> None:
        if not self.done:
            self.done = True
            self._m.finished("abort")
