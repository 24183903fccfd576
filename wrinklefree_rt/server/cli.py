"""``wrinklefree-rt serve MODEL``: the OpenAI-compatible server under uvicorn (asyncio) or
hypercorn's trio worker."""
from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any, cast

from ..ray.cli import parse_replicas
from .app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_WAITING

__all__ = ["main"]

LISTEN_BACKLOG = 2048  # connections the kernel queues before refusing (SYN retries stall clients ~1 s)


def _dlm(value: str) -> dict:
    try:
        fields = json.loads(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--dlm: not JSON ({e})") from None
    if not isinstance(fields, dict):
        raise argparse.ArgumentTypeError("--dlm: expected a JSON object of DiffusionParams fields")
    return fields


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wrinklefree-rt serve",
                                description="Serve a model over an OpenAI-compatible HTTP API (docs/server.md).")
    p.add_argument("model", help="model directory or file (as Engine.from_pretrained takes)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1/*")
    p.add_argument("--served-model-name", help="the `model` clients send (default: the model's file or directory name)")
    p.add_argument("--max-waiting", type=int, default=DEFAULT_MAX_WAITING,
                   help="requests that may wait beyond the --max-num-seqs running ones; "
                        "more get 503 (default %(default)s)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    p.add_argument("--dlm", nargs="?", const={}, type=_dlm, default=None, metavar="JSON",
                   help="decode by block diffusion unless a request says otherwise; optional JSON "
                        "object of defaults, e.g. '{\"block_size\": 32, \"threshold\": 0.9}'")
    p.add_argument("--max-num-seqs", type=int, default=16, help="requests decoded at once (KV slots)")
    p.add_argument("--max-num-batched-tokens", type=int, default=256, help="rows per forward")
    p.add_argument("--kv-cache-tokens", type=int, default=0, help="KV pool size in positions (0: enough for all slots)")
    p.add_argument("--threads", type=int, default=0, help="compute threads (0: all cores)")
    p.add_argument("--lm-head", choices=["int8", "q4", "fp32"], default="int8")
    p.add_argument("--ternary-packing", choices=["2bit", "base3"], default="2bit",
                   help="base3: 5 ternary codes per byte (1.6 bits a weight, same logits)")
    p.add_argument("--server", choices=["uvicorn", "hypercorn-trio"], default="uvicorn",
                   help="uvicorn (asyncio) or hypercorn with its trio worker")
    p.add_argument("--ray", action="store_true",
                   help="serve replicas on Ray Serve (the `ray` extra; docs/scale-out.md)")
    p.add_argument("--replicas", type=parse_replicas,
                   help="with --ray: N replicas, or MIN:MAX autoscaled on the engines' queues "
                        "(default: one per Ray node)")
    p.add_argument("--address", help="with --ray: a running Ray cluster (auto or HOST:PORT); default: start a "
                                     "local one listening on 127.0.0.1 only")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from .. import Engine, WrinklefreeError
    from .app import create_app

    engine_config = {"num_threads": args.threads, "lm_head": args.lm_head, "ternary_packing": args.ternary_packing,
                     "max_num_seqs": args.max_num_seqs,
                     "kv_cache_tokens": args.kv_cache_tokens, "max_num_batched_tokens": args.max_num_batched_tokens}
    app_options = {"model_name": args.served_model_name or Path(args.model).resolve().name, "api_key": args.api_key,
                   "max_waiting": args.max_waiting, "max_body_bytes": args.max_body_bytes, "diffusion": args.dlm}
    if args.ray:
        from ..ray.cli import serve_on_ray
        return serve_on_ray(args.model, engine_config, app_options, replicas=args.replicas, address=args.address,
                            host=args.host, port=args.port)
    try:
        engine = Engine.from_pretrained(args.model, **engine_config)
        app = create_app(engine, **app_options)
        sock = _listen(args.host, args.port)
    except (WrinklefreeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"wrinklefree-rt: serving {app.state.server.model_name!r} on http://{shown}:{port}", flush=True)
    if args.server == "uvicorn":
        import uvicorn
        # On shutdown, streams still open after the grace period end with the engine's close.
        config = uvicorn.Config(app, lifespan="on", log_level=args.log_level, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    else:
        import hypercorn.config
        import hypercorn.trio
        import trio
        hconfig = hypercorn.config.Config()
        hconfig.bind = [f"fd://{sock.fileno()}"]
        hconfig.loglevel = args.log_level.upper()
        hconfig.backlog = LISTEN_BACKLOG  # hypercorn listens again on the socket, with its own (100) by default
        # hypercorn types its ASGI app with its own protocol classes, which Starlette's do not name
        trio.run(hypercorn.trio.serve, cast(Any, app), hconfig)
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that port 0 resolves before the server starts."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    return sock
