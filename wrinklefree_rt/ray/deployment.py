"""The Ray Serve deployment: one ``Engine`` and one ``create_app`` per replica."""
from __future__ import annotations

import os
from typing import Any

import msgspec
import ray
from ray import serve

from ..params import EngineConfig, validate
from ..server import create_app
from .autoscale import engine_queue_policy

__all__ = ["APP_NAME", "REPLICA_HEADER", "EngineReplica", "build_app", "replica_reports"]

APP_NAME = "wrinklefree"
# Names the replica that answered, so a client (or a test) can tell replicas apart.
REPLICA_HEADER = "x-wrinklefree-replica"


@serve.ingress()
class EngineReplica:
    """One replica: loads the model and serves the OpenAI-compatible app on it. The app's
    lifespan (run by Ray Serve on the replica's event loop) starts and stops the engine."""

    def __init__(self, model: str, engine_config: dict, app_options: dict):
        from ..engine import Engine

        self._engine = Engine.from_pretrained(model, **engine_config)
        self._app = create_app(self._engine, **app_options)
        self._replica_id = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self):
        app, tag = self._app, (REPLICA_HEADER.encode(), self._replica_id.encode())

        async def tagged(scope, receive, send):
            async def send_tagged(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", ()), tag]}
                await send(message)

            await app(scope, receive, send_tagged)

        return tagged

    def record_autoscaling_stats(self) -> dict[str, float]:
        stats = self._engine.stats()
        return {"engine_running": stats.running, "engine_waiting": stats.waiting,
                "engine_max_num_seqs": self._engine.config.max_num_seqs}

    def replica_report(self) -> dict[str, Any]:
        """This replica's id, process, node and engine counters (``replica_reports``)."""
        return {"replica": self._replica_id, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "stats": msgspec.to_builtins(self._engine.stats())}


def build_app(model: str, *, engine_config: EngineConfig | dict | None = None, app_options: dict | None = None,
              replicas: int | tuple[int, int] | None = None, ray_actor_options: dict | None = None,
              max_ongoing_requests: int | None = None, autoscaling: dict | None = None) -> serve.Application:
    """The Ray Serve application for ``model`` (a path every node can read).

    ``engine_config``: ``EngineConfig`` fields for each replica's engine (``num_threads`` is the
    threads per replica). ``app_options``: ``create_app`` keywords (``model_name``, ``api_key``,
    ``max_waiting``, ``max_body_bytes``, ``diffusion``). ``replicas``: a count, ``(min, max)`` to
    autoscale on the engines' queues (``engine_queue_policy``; ``autoscaling`` adds Ray
    ``AutoscalingConfig`` fields), or ``None`` for one replica per node of the running cluster.
    ``ray_actor_options``: Ray's per-replica resources (default ``num_cpus`` = the threads, 1
    for all cores). ``max_ongoing_requests``: requests Ray sends one replica at once (default:
    the replica's ``max_num_seqs`` + ``max_waiting``, what its app admits).
    """
    config = validate(engine_config, EngineConfig, "engine config")
    app_options = dict(app_options or {})
    if "max_waiting" not in app_options:
        from ..server.app import DEFAULT_MAX_WAITING
        app_options["max_waiting"] = DEFAULT_MAX_WAITING
    options: dict[str, Any] = {
        "name": "EngineReplica",
        "ray_actor_options": ray_actor_options or {"num_cpus": config.num_threads or 1},
        "max_ongoing_requests": max_ongoing_requests or config.max_num_seqs + app_options["max_waiting"],
    }
    if replicas is None:
        options["num_replicas"] = sum(1 for node in ray.nodes() if node["Alive"])
        options["max_replicas_per_node"] = 1
    elif isinstance(replicas, int):
        if replicas < 1:
            raise ValueError(f"replicas: must be >= 1, got {replicas}")
        options["num_replicas"] = replicas
    else:
        low, high = replicas
        if not 1 <= low <= high:
            raise ValueError(f"replicas: (min, max) must have 1 <= min <= max, got {replicas}")
        options["num_replicas"] = "auto"
        options["autoscaling_config"] = {
            "min_replicas": low, "max_replicas": high, "initial_replicas": low,
            "policy": {"policy_function": engine_queue_policy}, **(autoscaling or {})}
    deployment = serve.deployment(EngineReplica).options(**options)
    return deployment.bind(str(model), msgspec.to_builtins(config), app_options)


def replica_reports(app_name: str = APP_NAME) -> list[dict[str, Any]]:
    """``EngineReplica.replica_report()`` of every running replica of the application."""
    handle = serve.get_deployment_handle("EngineReplica", app_name)
    return handle.broadcast("replica_report").results()
