"""Communiqué: press-release distribution. `create_app(settings)` builds the Flask app."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from service.config import Settings

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # flask is imported by create_app only: CLI commands and the worker start faster
    from flask import Flask


def create_app(settings: Settings | None = None) -> Flask:
    """The Flask application factory (also the gunicorn entry point: `service:create_app()`)."""
    from flask import Flask

    from service import api, web, webhook
    from service.http import context, inputs, security
    from service.ops import health, request_log
    from service.web import public

    settings = settings or Settings.from_env()
    app = Flask(__name__, instance_path=None)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.upload_max_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=security.is_cookie_secure(settings),
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=settings.session_idle_minutes),
        SESSION_COOKIE_NAME="communique_session",
        WTF_CSRF_TIME_LIMIT=None,
        JSON_SORT_KEYS=False,
    )
    request_log.init_app(app, settings)
    context.init_app(app, settings)
    inputs.init_app(app)  # the `id` URL converter, before any blueprint's routes
    limiter = security.init_limiter(app, settings)
    public.init_app(app)
    web.init_app(app)
    api.init_app(app)
    webhook.init_app(app)
    health.init_app(app)
    # Machine clients authenticate with bearer keys or signatures, not cookies: no CSRF there.
    csrf = app.extensions["csrf"]
    csrf.exempt(api.bp)
    csrf.exempt(webhook.bp)
    api.init_limits(limiter, settings)
    security.init_app(app, settings)  # after the blueprints: the email pages get their own policy
    for warning in settings.startup_warnings():  # the worker says it too
        log.warning("%s", warning)
    return app
