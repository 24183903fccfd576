"""Autoscaling on the engines' own queues: each replica reports its engine's running and
waiting sequences and its ``max_num_seqs``; the deployment wants as many replicas as keep
every sequence running (none waiting)."""
from __future__ import annotations

import math

__all__ = ["ENGINE_METRICS", "engine_queue_policy"]

# The custom metrics a replica reports (``EngineReplica.record_autoscaling_stats``).
ENGINE_METRICS = ("engine_running", "engine_waiting", "engine_max_num_seqs")


def engine_queue_policy(ctx) -> tuple[float, dict]:
    """A Ray Serve autoscaling policy (``AutoscalingPolicy(policy_function=...)``).

    ``ctx.aggregated_metrics`` holds each replica's metrics averaged over Ray's look-back
    window. Desired replicas = (running + waiting over all replicas) / sequences one replica
    runs at once; Ray applies min/max replicas and the up/down delays on top. No report yet
    (replicas just started): keep the current count.
    """
    metrics = ctx.aggregated_metrics or {}
    capacity = list((metrics.get("engine_max_num_seqs") or {}).values())
    if not capacity:
        return ctx.current_num_replicas, {}
    demand = sum((metrics.get("engine_running") or {}).values()) + sum((metrics.get("engine_waiting") or {}).values())
    per_replica = sum(capacity) / len(capacity)
    return math.ceil(demand / per_replica), {}
