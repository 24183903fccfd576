"""Replicas of the OpenAI-compatible server on Ray Serve (docs/scale-out.md).

``build_app(model, ...)`` is a Ray Serve application: each replica holds one ``Engine`` and
serves ``wrinklefree_rt.server.create_app(engine)``, the same routes and shapes as
``wrinklefree-rt serve``; Ray Serve routes the requests. ``connect(address)`` joins (or starts)
the Ray cluster with what the HTTP proxy needs to turn a lost replica into a clear error.
``wrinklefree-rt serve MODEL --ray`` does both. Needs the ``ray`` extra:
``pip install wrinklefree_rt[ray]``.

``connect`` is importable without importing ray itself: a local cluster must be started before
anything imports ray for all its ports to listen on 127.0.0.1 only.
"""
from .proxy import PROXY_CALLBACK, connect

__all__ = [
    "APP_NAME",
    "PROXY_CALLBACK",
    "EngineReplica",
    "build_app",
    "connect",
    "engine_queue_policy",
    "replica_reports",
]

_LAZY = {"APP_NAME": "deployment", "EngineReplica": "deployment", "build_app": "deployment",
         "replica_reports": "deployment", "engine_queue_policy": "autoscale"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
