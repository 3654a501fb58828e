"""The database as the Flask app sees it: one engine per app, one session per request."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import make_engine, make_session_factory


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]


def init_app(app: Flask, settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    app.extensions["communique"] = Runtime(settings, engine, make_session_factory(engine))
    app.teardown_appcontext(_close_session)


def runtime() -> Runtime:
    return current_app.extensions["communique"]  # type: ignore[no-any-return]


def current_settings() -> Settings:
    return runtime().settings


def db_session() -> Session:
    """The request's session; committed by the view that writes, closed at teardown."""
    if "db_session" not in g:
        g.db_session = runtime().session_factory()
    return g.db_session  # type: ignore[no-any-return]


def _close_session(_exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
