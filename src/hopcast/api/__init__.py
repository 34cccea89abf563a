"""The HTTP API (FastAPI): ``create_app(graph)`` builds it, ``serve(graph)`` runs it.

Needs the ``server`` extra (``pip install 'hopcast[server]'``); nothing else in hopcast imports
FastAPI or uvicorn.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the hopcast HTTP API needs FastAPI and uvicorn: pip install 'hopcast[server]'"
    ) from exc

from hopcast.api.app import MAX_BODY_BYTES, MAX_MUTATIONS, create_app
from hopcast.api.server import DEFAULT_HOST, DEFAULT_PORT, make_server, serve

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "MAX_BODY_BYTES",
    "MAX_MUTATIONS",
    "create_app",
    "make_server",
    "serve",
]
