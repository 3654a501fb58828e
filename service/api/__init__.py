"""Blueprint "api": the JSON API under /api/v1, bearer API keys, problem+json errors, and the
OpenAPI 3.1 document built from the routes (`registry`). Resources live beside it, one module each;
every route names the key scope it needs (read, write, send, approve)."""

from __future__ import annotations

from flask import Flask

from service.api.blueprint import bp, init_limits

__all__ = ["bp", "init_app", "init_limits"]


def init_app(app: Flask) -> None:
    from service.api import blasts, contacts, releases  # noqa: F401  (routes register on import)

    app.register_blueprint(bp)
