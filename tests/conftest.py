"""Fixtures: settings, db, app, client, runner, smtpd. Real SQLite per test; the same tests on
PostgreSQL (one fresh schema per test) when COMMUNIQUE_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).parent))

from smtp_server import SmtpServer, start_smtp_server  # noqa: E402

from service import create_app  # noqa: E402
from service.config import Settings  # noqa: E402
from service.db import make_engine, make_session_factory, upgrade_schema  # noqa: E402

POSTGRES_URL = os.environ.get("COMMUNIQUE_TEST_POSTGRES_URL", "")
ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT.parent / "shared" / "samples" / "releases"
if not SAMPLES.is_dir():
    SAMPLES = ROOT / "service" / "demo" / "releases"  # the same two files, shipped for the demo
DATA = Path(__file__).parent / "data"
ARTIFACTS = ROOT / "test-artifacts"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: run on SQLite only, not on PostgreSQL")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that touches the database runs on SQLite and on PostgreSQL."""
    if "backend" in metafunc.fixturenames:
        backends = ["sqlite"]
        if not metafunc.definition.get_closest_marker("sqlite_only"):
            backends.append("postgresql")
        metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    name = getattr(request, "param", "sqlite")
    if name == "postgresql" and not POSTGRES_URL:
        pytest.skip("PostgreSQL tests skipped: COMMUNIQUE_TEST_POSTGRES_URL is not set")
    return str(name)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if not POSTGRES_URL:
        terminalreporter.write_line(
            "WARNING: PostgreSQL tests were SKIPPED (set COMMUNIQUE_TEST_POSTGRES_URL to run them)",
            yellow=True, bold=True)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'communique.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        instance_path=str(tmp_path / "instance"),
        secret_key="test-secret-key-" + "x" * 32,
        base_url="https://press.example.org",
        mail_from="Office National Marocain du Tourisme <presse@onmt.example.org>",
        retry_base_seconds=1,
        worker_poll_seconds=0.05,
        webhook_secret="whsec_" + "dGVzdC13ZWJob29rLXNlY3JldC1rZXktMzJieXRlcyE=",
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    upgrade_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def db(engine: Engine) -> Iterator[Session]:
    """A session on a freshly migrated database."""
    factory = make_session_factory(engine)
    session = factory()
    yield session
    session.close()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def app(settings: Settings, engine: Engine) -> Iterator[Flask]:
    app = create_app(settings)
    app.config.update(TESTING=True)
    yield app
    app.extensions["communique"].engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(settings: Settings, engine: Engine) -> CliRunner:
    """Runs `communique ...` in-process with the test settings in the environment."""
    return CliRunner(env=settings_environ(settings))


def settings_environ(settings: Settings) -> dict[str, str]:
    """The COMMUNIQUE_* variables that reproduce `settings` (for CLI runs and subprocesses)."""
    env = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        env[f"COMMUNIQUE_{f.name.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value))
    return env


@pytest.fixture
def smtpd() -> Iterator[SmtpServer]:
    server = start_smtp_server()
    yield server
    server.stop()


@pytest.fixture
def smtp_settings(settings: Settings, smtpd: SmtpServer) -> Settings:
    """The test settings pointed at the recording SMTP server."""
    return dataclasses.replace(settings, smtp_host=smtpd.host, smtp_port=smtpd.port)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
