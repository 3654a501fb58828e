"""Hardening of the API and the operations endpoints: rate limits per key and per client address
(429 problem documents with Retry-After), counted in Redis when configured so that every gunicorn
worker shares them; /metrics required to be protected in production; /readyz details only for
the token holder."""

from __future__ import annotations

import dataclasses
import socket
import uuid
from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from sqlalchemy.orm import Session
from webutil import PASSWORD, csrf_token, make_user

from service import create_app
from service.accounts.api_keys import create_api_key
from service.config import Settings
from service.db import utcnow
from service.errors import ConfigError

REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def make_app() -> Iterator[Callable[[Settings], Flask]]:
    """create_app, with every app's database engine closed at the end of the test."""
    apps: list[Flask] = []

    def make(settings: Settings) -> Flask:
        apps.append(create_app(settings))
        return apps[-1]

    yield make
    for app in apps:
        app.extensions["communique"].engine.dispose()


def _key(db: Session) -> dict[str, str]:
    _key_row, token = create_api_key(db, f"k-{uuid.uuid4().hex[:8]}", now=utcnow(), scopes=["read"])
    db.commit()
    return {"Authorization": f"Bearer {token}"}


def _assert_too_many(response: object) -> None:
    assert response.status_code == 429  # type: ignore[attr-defined]
    assert response.mimetype == "application/problem+json"  # type: ignore[attr-defined]
    body = response.get_json()  # type: ignore[attr-defined]
    assert body["status"] == 429 and body["title"] == "Too Many Requests"
    assert body["errors"] and "too many requests" in body["detail"]
    assert 0 < int(response.headers["Retry-After"]) <= 61  # type: ignore[attr-defined]


def test_api_limits_each_key(settings: Settings, engine: object, db: Session,
        make_app: Callable[[Settings], Flask]) -> None:
    """Past COMMUNIQUE_API_RATE_LIMIT requests with one key, it gets 429 problem documents with
    Retry-After; another key is not affected."""
    app = make_app(dataclasses.replace(settings, api_rate_limit="5/minute"))
    client, first, second = app.test_client(), _key(db), _key(db)
    for _ in range(5):
        assert client.get("/api/v1/contacts", headers=first).status_code == 200
    _assert_too_many(client.get("/api/v1/contacts", headers=first))
    assert client.get("/api/v1/contacts", headers=second).status_code == 200


def test_api_limits_bad_keys_and_each_client_address(settings: Settings, engine: object,
                                                     db: Session,
        make_app: Callable[[Settings], Flask]) -> None:
    """Requests with a bad key are limited per client address (COMMUNIQUE_API_AUTH_FAILURE_RATE_LIMIT),
    all requests too (COMMUNIQUE_API_IP_RATE_LIMIT); behind a trusted proxy, per real client."""
    app = make_app(dataclasses.replace(settings, api_auth_failure_rate_limit="3/minute",
                                       api_ip_rate_limit="6/minute", trusted_proxies=1))
    client = app.test_client()
    guesser = {"X-Forwarded-For": "203.0.113.9"}
    for n in range(3):
        bad = {**guesser, "Authorization": f"Bearer cq_wrong{n}"}
        assert client.get("/api/v1/contacts", headers=bad).status_code == 401
    _assert_too_many(client.get("/api/v1/contacts",
                                headers={**guesser, "Authorization": "Bearer cq_wrong9"}))
    busy = {"X-Forwarded-For": "198.51.100.7"}
    for _ in range(6):  # a different key each time: only the per-address limit applies
        assert client.get("/api/v1/contacts", headers={**busy, **_key(db)}).status_code == 200
    _assert_too_many(client.get("/api/v1/contacts", headers={**busy, **_key(db)}))
    other = {"X-Forwarded-For": "192.0.2.1", **_key(db)}
    assert client.get("/api/v1/contacts", headers=other).status_code == 200


def _redis_or_skip() -> None:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        pytest.skip("REDIS TESTS SKIPPED: nothing listens on 127.0.0.1:6379 (apt-get install redis-server)")


def test_limits_in_redis_are_shared_by_every_worker(settings: Settings, engine: object,
                                                    db: Session,
        make_app: Callable[[Settings], Flask]) -> None:
    """With COMMUNIQUE_RATE_LIMIT_STORAGE_URL=redis://…, two app processes (gunicorn workers)
    count one key's requests and one account's failed logins together."""
    _redis_or_skip()
    shared = dataclasses.replace(settings, rate_limit_storage_url=REDIS_URL, api_rate_limit="4/minute",
                                 login_failure_limit=3)
    one, two = make_app(shared), make_app(shared)
    key = _key(db)
    for app in (one, two):
        for _ in range(2):
            assert app.test_client().get("/api/v1/contacts", headers=key).status_code == 200
    _assert_too_many(one.test_client().get("/api/v1/contacts", headers=key))
    _assert_too_many(two.test_client().get("/api/v1/contacts", headers=key))
    email = make_user(db, f"chef-{uuid.uuid4().hex[:8]}@example.org")  # fresh counts in Redis
    for app in (one, two, one):
        client = app.test_client()
        assert client.post("/login", data={"email": email, "password": "wrong password",
                                           "csrf_token": csrf_token(client)}).status_code == 401
    client = two.test_client()
    assert client.post("/login", data={"email": email, "password": PASSWORD,
                                        "csrf_token": csrf_token(client)}).status_code == 429


@pytest.mark.parametrize(("variable", "value"), [
    ("COMMUNIQUE_SESSION_IDLE_MINUTES", "0"),
    ("COMMUNIQUE_TRUSTED_PROXIES", "-1"),
    ("COMMUNIQUE_TRUSTED_PROXIES", "nginx"),
    ("COMMUNIQUE_RATE_LIMIT_STORAGE_URL", "postgresql://db/limits"),
    ("COMMUNIQUE_API_RATE_LIMIT", "lots"),
    ("COMMUNIQUE_API_IP_RATE_LIMIT", ""),
    ("COMMUNIQUE_API_AUTH_FAILURE_RATE_LIMIT", "3 per fortnight"),
    ("COMMUNIQUE_LOGIN_FAILURE_LIMIT", "0"),
])
def test_bad_hardening_settings_stop_start_up(tmp_path: object, variable: str, value: str) -> None:
    """A bad value of a new setting stops start-up with a ConfigError naming the variable."""
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value, "COMMUNIQUE_INSTANCE_PATH": str(tmp_path)})


def test_production_refuses_to_start_without_a_metrics_token() -> None:
    """COMMUNIQUE_ENV=production without COMMUNIQUE_METRICS_TOKEN (or with a short one) is a
    ConfigError, like a missing secret key; with one it starts."""
    environ = {"COMMUNIQUE_ENV": "production", "COMMUNIQUE_SECRET_KEY": "s" * 48}
    for token in ({}, {"COMMUNIQUE_METRICS_TOKEN": "short"}):
        with pytest.raises(ConfigError, match="COMMUNIQUE_METRICS_TOKEN"):
            Settings.from_env({**environ, **token})
    assert Settings.from_env({**environ, "COMMUNIQUE_METRICS_TOKEN": "m" * 32}).metrics_token


def test_readyz_details_only_for_the_token_holder(settings: Settings, engine: object,
        make_app: Callable[[Settings], Flask]) -> None:
    """/readyz names what is down to anyone (503, "down": ["smtp"]) but the relay's error text
    only to a caller with the metrics bearer token."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    app = make_app(dataclasses.replace(settings, smtp_host="127.0.0.1", smtp_port=closed_port,
                                       metrics_token="ops-token-0123456789"))
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = client.get("/readyz", headers=headers)
        assert response.status_code == 503
        assert response.get_json() == {"status": "unavailable", "down": ["smtp"]}
        assert "unreachable" not in response.get_data(as_text=True)
    response = client.get("/readyz", headers={"Authorization": "Bearer ops-token-0123456789"})
    assert response.status_code == 503
    assert response.get_json()["down"]["smtp"].startswith("unreachable")
