"""An OpenAI-compatible HTTP server for an ``Engine`` (docs/server.md).

``create_app(engine, ...)`` is a Starlette ASGI app (mountable in another ASGI service);
``wrinklefree-rt serve MODEL`` runs one under uvicorn (or hypercorn's trio worker).
Needs the ``server`` extra: ``pip install wrinklefree_rt[server]``.
"""
from .app import create_app

__all__ = ["create_app"]
