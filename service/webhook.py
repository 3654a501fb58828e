"""Blueprint "webhook" (being built)."""

from __future__ import annotations

from flask import Blueprint, Flask

bp = Blueprint("webhook", __name__)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
