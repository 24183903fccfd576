"""An OpenAI-compatible HTTP server for an ``Engine`` (docs/server.md).

``create_app(engine, ...)`` is a Starlette ASGI app (mountable in another ASGI service);
``wrinklefree-rt serve MODEL`` runs one under uvicorn (or hypercorn's trio worker).
Needs the ``server`` extra: ``pip install wrinklefree_rt[server]``.
"""
try:
    from .app import create_app
except ModuleNotFoundError as e:  # the extra is not installed: say which
    raise ModuleNotFoundError(f"wrinklefree_rt.server needs the server extra "
                              f"(pip install 'wrinklefree_rt[server]'): {e}", name=e.name) from e

__all__ = ["create_app"]
