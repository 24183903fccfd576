"""``wrinklefree-rt serve MODEL --ray``: the server's replicas on a Ray cluster (a local one on
127.0.0.1 unless ``--address`` names one), until interrupted."""
from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading

__all__ = ["parse_replicas", "serve_on_ray"]


def parse_replicas(value: str) -> int | tuple[int, int]:
    """``--replicas N`` (fixed) or ``MIN:MAX`` (autoscaled on the engines' queues), checked
    before any cluster starts."""
    low, sep, high = value.partition(":")
    try:
        bounds = (int(low), int(high)) if sep else (int(value), int(value))
    except ValueError:
        bounds = (0, 0)
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected N >= 1 or MIN:MAX with 1 <= MIN <= MAX, got {value!r}")
    return bounds if sep else bounds[0]


def serve_on_ray(model: str, engine_config: dict, app_options: dict, *, replicas: int | tuple[int, int] | None,
                 address: str | None, host: str, port: int) -> int:
    from .proxy import connect

    try:
        connect(address)  # before anything else imports ray (a local cluster binds 127.0.0.1 only then)
    except ImportError:
        print("error: --ray needs Ray Serve: pip install 'wrinklefree_rt[ray]'", file=sys.stderr)
        return 1
    import ray
    from ray import serve

    from .deployment import APP_NAME, build_app

    if port == 0:  # Ray's proxy takes a fixed port: pick a free one here
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(model, engine_config=engine_config, app_options=app_options, replicas=replicas),
                  name=APP_NAME, route_prefix="/")
        count = serve.status().applications[APP_NAME].deployments["EngineReplica"].replica_states.get("RUNNING", 0)
        shown = f"[{host}]" if ":" in host else host
        print(f"wrinklefree-rt: serving {app_options.get('model_name')!r} on http://{shown}:{port} "
              f"(Ray Serve, {count} replicas; Ray cluster at {ray.get_runtime_context().gcs_address})", flush=True)
        stop.wait()
    except (ValueError, RuntimeError) as e:  # a bad option, or a deployment that failed to start
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if address is None:
            serve.shutdown()  # the local cluster goes with this process
        elif ray.is_initialized():
            serve.delete(APP_NAME)
        ray.shutdown()
    return 0
