"""Hardening of web sessions and logins: logout and account changes end sessions server-side,
idle sessions expire, and behind a reverse proxy the login throttle counts real client addresses."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner
from sqlalchemy import select
from sqlalchemy.orm import Session
from webutil import PASSWORD, csrf_token, make_user, sign_in

from service import create_app
from service.accounts import users
from service.config import Settings
from service.models import Role, User

COOKIE = "communique_session"


def _cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return cookie.value


def _replay(app: Flask, value: str) -> int:
    """GET / from a fresh client that only has the copied session cookie."""
    thief = app.test_client()
    thief.set_cookie(COOKIE, value)
    return thief.get("/").status_code


def _user_id(db: Session, email: str) -> int:
    user_id = db.scalar(select(User.id).where(User.email == email))
    db.rollback()
    assert user_id is not None
    return user_id


def test_logout_ends_the_session_server_side(app: Flask, client: FlaskClient, db: Session) -> None:
    """A session cookie copied before logout no longer signs anyone in after POST /logout."""
    make_user(db, "chef@example.org")
    sign_in(client, "chef@example.org")
    saved = _cookie(client)
    assert _replay(app, saved) == 200
    response = client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    assert response.status_code == 303
    assert _replay(app, saved) == 302
    assert client.get("/").status_code == 302
    sign_in(client, "chef@example.org")  # signing in again works, with a new cookie
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("change", [
    pytest.param(lambda db, user_id: users.set_password(db, user_id, "a brand new password"),
                 id="password"),
    pytest.param(lambda db, user_id: users.set_role(db, user_id, Role.editor), id="role"),
    pytest.param(lambda db, user_id: users.set_active(db, user_id, False), id="disabled"),
])
def test_account_changes_end_existing_sessions(app: Flask, client: FlaskClient, db: Session,
                                               change: Callable[[Session, int], None]) -> None:
    """A password change, a role change or disabling the account ends the user's open sessions."""
    make_user(db, "chef@example.org")
    sign_in(client, "chef@example.org")
    saved = _cookie(client)
    other = app.test_client()  # the same user on another device
    sign_in(other, "chef@example.org")
    assert client.get("/").status_code == 200
    change(db, _user_id(db, "chef@example.org"))
    db.commit()
    assert client.get("/").status_code == 302
    assert other.get("/").status_code == 302
    assert _replay(app, saved) == 302


def test_unrelated_changes_keep_sessions(client: FlaskClient, db: Session) -> None:
    """Saving preferences or setting the same role again does not sign the user out."""
    make_user(db, "chef@example.org")
    sign_in(client, "chef@example.org")
    user_id = _user_id(db, "chef@example.org")
    users.set_role(db, user_id, Role.admin)
    users.update_preferences(db, user_id, language="en")
    db.commit()
    assert client.get("/").status_code == 200


class _Aged(TimestampSigner):
    """Signs as if it were `age_seconds` ago: a cookie the browser last refreshed back then."""

    age_seconds = 0

    def get_timestamp(self) -> int:
        return int(time.time()) - self.age_seconds


def _aged_cookie(app: Flask, value: str, age_seconds: int) -> str:
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    data = serializer.loads(value)
    signer = type("AgedSigner", (_Aged,), {"age_seconds": age_seconds})
    serializer.signer = signer
    return str(serializer.dumps(data))


def test_idle_sessions_expire(app: Flask, client: FlaskClient, db: Session, settings: Settings) -> None:
    """A session last used longer ago than COMMUNIQUE_SESSION_IDLE_MINUTES (480) is over; a
    younger one works, and each request pushes the limit back."""
    assert settings.session_idle_minutes == 480
    make_user(db, "chef@example.org")
    sign_in(client, "chef@example.org")
    saved = _cookie(client)
    assert _replay(app, _aged_cookie(app, saved, 479 * 60)) == 200
    assert _replay(app, _aged_cookie(app, saved, 481 * 60)) == 302
    short = dataclasses.replace(settings, session_idle_minutes=5)
    short_app = create_app(short)
    assert _replay(short_app, _aged_cookie(short_app, saved, 4 * 60)) == 200
    assert _replay(short_app, _aged_cookie(short_app, saved, 6 * 60)) == 302
    short_app.extensions["communique"].engine.dispose()


def _login(client: FlaskClient, email: str, password: str, address: str) -> int:
    return client.post("/login", data={"email": email, "password": password,
                                       "csrf_token": csrf_token(client)},
                       headers={"X-Forwarded-For": address}).status_code


@pytest.fixture
def proxied(settings: Settings, engine: object) -> Iterator[Flask]:
    """The app behind one reverse proxy (every request arrives from 127.0.0.1)."""
    app = create_app(dataclasses.replace(settings, trusted_proxies=1, login_ip_failure_limit=20))
    yield app
    app.extensions["communique"].engine.dispose()


def test_guessing_elsewhere_does_not_lock_the_owner_out(proxied: Flask, db: Session) -> None:
    """Behind a proxy, ten wrong passwords for an account from one address block that address for
    the account (429), while the owner, from their own address, still signs in."""
    make_user(db, "chef@example.org")
    attacker, owner = proxied.test_client(), proxied.test_client()
    for _ in range(10):
        assert _login(attacker, "chef@example.org", "wrong password", "203.0.113.9") == 401
    assert _login(attacker, "chef@example.org", PASSWORD, "203.0.113.9") == 429
    assert _login(owner, "chef@example.org", PASSWORD, "198.51.100.7") == 303
    assert owner.get("/").status_code == 200


def test_client_addresses_come_from_trusted_proxies_only(settings: Settings, engine: object,
                                                         db: Session) -> None:
    """The per-address failure limit counts the address the proxy saw; without a trusted proxy an
    X-Forwarded-For header is ignored, so a guesser cannot escape the limit by inventing one."""
    make_user(db, "chef@example.org")
    for proxies, owner_status in ((1, 303), (0, 429)):
        app = create_app(dataclasses.replace(settings, trusted_proxies=proxies,
                                             login_ip_failure_limit=3))
        client = app.test_client()
        for n in range(3):
            assert _login(client, f"guess{n}@example.org", "wrong password", "203.0.113.9") == 401
        assert _login(client, "other@example.org", "wrong password", "203.0.113.9") == 429
        assert _login(client, "chef@example.org", PASSWORD, "198.51.100.7") == owner_status
        app.extensions["communique"].engine.dispose()



def test_cli_account_changes_end_sessions(client: FlaskClient, db: Session,
                                          runner: CliRunner) -> None:
    """`communique users set-role|set-password|disable` end the user's web sessions; a disabled
    account cannot sign in until `users enable`."""
    from service.cli import main

    make_user(db, "chef@example.org")
    new_password = "a brand new password"
    for command, password in ((["set-role", "chef@example.org", "sender"], PASSWORD),
                              (["set-password", "chef@example.org", "--password-stdin"], PASSWORD),
                              (["disable", "chef@example.org"], new_password)):
        sign_in(client, "chef@example.org", password)
        assert client.get("/").status_code == 200
        result = runner.invoke(main, ["users", *command], input=f"{new_password}\n")
        assert result.exit_code == 0, result.output
        assert client.get("/").status_code == 302, command
    response = client.post("/login", data={"email": "chef@example.org", "password": new_password,
                                           "csrf_token": csrf_token(client)})
    assert response.status_code == 401
    assert runner.invoke(main, ["users", "enable", "chef@example.org"]).exit_code == 0
    sign_in(client, "chef@example.org", new_password)
    assert client.get("/").status_code == 200
    assert runner.invoke(main, ["users", "disable", "nobody@example.org"]).exit_code == 1
