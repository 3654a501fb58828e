"""Accounts: hashing, login, roles, CSRF and the requests that must be refused."""

from __future__ import annotations

import dataclasses

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from webutil import PASSWORD, csrf_token, make_user, sign_in

from service import create_app
from service.accounts.users import authenticate, create_user
from service.config import Settings
from service.db import utcnow
from service.errors import Conflict, ValidationError
from service.models import Role, User


def test_password_is_stored_hashed_and_verified(db: Session) -> None:
    """A password is stored as a salted hash and only the right one authenticates."""
    make_user(db, "Chef@Example.org")
    user = db.scalar(select(User))
    assert user is not None and user.email == "chef@example.org"
    assert PASSWORD not in user.password_hash and user.password_hash.startswith(("scrypt:", "pbkdf2:"))
    assert authenticate(db, "CHEF@example.org", PASSWORD, now=utcnow()) is not None
    assert authenticate(db, "chef@example.org", "wrong password!", now=utcnow()) is None
    assert authenticate(db, "nobody@example.org", PASSWORD, now=utcnow()) is None


def test_create_user_rejects_short_password_and_duplicates(db: Session) -> None:
    """A short password is a field error; a second account with the same address is a conflict."""
    with pytest.raises(ValidationError) as caught:
        create_user(db, email="a@example.org", password="short", now=utcnow())
    assert caught.value.errors[0].field == "password"
    make_user(db, "a@example.org")
    with pytest.raises(Conflict):
        create_user(db, email="A@example.org", password=PASSWORD, now=utcnow())


def test_anonymous_is_sent_to_login(client: FlaskClient) -> None:
    """Every page but the login page redirects an anonymous visitor to it."""
    for path in ("/", "/contacts", "/releases", "/blasts", "/users", "/blasts/1"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert "/login" in response.headers["Location"]


def test_login_logout_and_session_cookie_flags(client: FlaskClient, db: Session) -> None:
    """Signing in sets an HttpOnly, SameSite=Lax, Secure (HTTPS base URL) cookie; signing out ends it."""
    make_user(db, "chef@example.org")
    token = csrf_token(client)
    response = client.post("/login", data={"email": "chef@example.org", "password": PASSWORD,
                                           "csrf_token": token})
    assert response.status_code == 303
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie
    page = client.get("/")
    assert page.status_code == 200 and "Tableau de bord" in page.get_data(as_text=True)
    response = client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    assert response.status_code == 303
    assert client.get("/").status_code == 302


def test_wrong_password_is_refused_next_to_the_field(client: FlaskClient, db: Session) -> None:
    """A wrong password answers 401 with the message on the form, in French by default."""
    make_user(db, "chef@example.org")
    response = client.post("/login", data={"email": "chef@example.org", "password": "nope nope nope",
                                           "csrf_token": csrf_token(client)})
    assert response.status_code == 401
    assert "Adresse e-mail ou mot de passe incorrect." in response.get_data(as_text=True)


def test_login_is_rate_limited(client: FlaskClient, db: Session) -> None:
    """After ten failures for one address the next attempt answers 429, even with the right password."""
    make_user(db, "chef@example.org")
    token = csrf_token(client)
    for _ in range(10):
        client.post("/login", data={"email": "chef@example.org", "password": "bad password",
                                    "csrf_token": token})
    response = client.post("/login", data={"email": "chef@example.org", "password": PASSWORD,
                                           "csrf_token": token})
    assert response.status_code == 429


def test_post_without_or_with_bad_csrf_token_is_refused(client: FlaskClient, db: Session) -> None:
    """A form post without a CSRF token, or with a forged one, answers 400 and changes nothing."""
    make_user(db, "chef@example.org")
    response = client.post("/login", data={"email": "chef@example.org", "password": PASSWORD})
    assert response.status_code == 400
    response = client.post("/login", data={"email": "chef@example.org", "password": PASSWORD,
                                           "csrf_token": "forged"})
    assert response.status_code == 400
    sign_in(client, "chef@example.org")
    response = client.post("/users", data={"email": "new@example.org", "role": "admin",
                                           "password": PASSWORD})
    assert response.status_code == 400
    assert db.scalar(select(User).where(User.email == "new@example.org")) is None


def test_editor_cannot_manage_users(client: FlaskClient, db: Session) -> None:
    """Only an admin opens the users page; an editor gets 403."""
    make_user(db, "editor@example.org", Role.editor)
    sign_in(client, "editor@example.org")
    assert client.get("/users").status_code == 403


def test_admin_creates_an_account_in_the_web_form(client: FlaskClient, db: Session) -> None:
    """An admin creates a sender account, who can then sign in."""
    make_user(db, "chef@example.org")
    sign_in(client, "chef@example.org")
    response = client.post("/users", data={"email": "sender@example.org", "role": "sender",
                                           "password": PASSWORD, "csrf_token": csrf_token(client, "/users")})
    assert response.status_code == 303
    db.expire_all()
    assert db.scalar(select(User.role).where(User.email == "sender@example.org")) == Role.sender


def test_open_redirect_after_login_is_refused(client: FlaskClient, db: Session) -> None:
    """`next` only sends back to a path on this site, never to another host."""
    make_user(db, "chef@example.org")
    response = client.post("/login", data={"email": "chef@example.org", "password": PASSWORD,
                                           "next": "//evil.example/x", "csrf_token": csrf_token(client)})
    assert response.headers["Location"] == "/"


@pytest.mark.parametrize("target", ["/\t/evil.example", "/\n/evil.example", "/\r\n/x", "/ /evil.example",
                                    "/\\evil.example", "/\x00/x", "https://evil.example/x"])
def test_next_with_control_characters_or_backslash_goes_home(client: FlaskClient, db: Session,
                                                               target: str) -> None:
    """A `next` a browser would read as another host once it drops tabs and newlines (or reads a
    backslash as a slash) sends to the dashboard instead, and never fails."""
    make_user(db, "chef@example.org")
    page = client.get("/login", query_string={"next": target})
    assert page.status_code == 200
    response = client.post("/login", data={"email": "chef@example.org", "password": PASSWORD,
                                           "next": target, "csrf_token": csrf_token(client)})
    assert response.status_code == 303 and response.headers["Location"] == "/"


def test_next_path_on_this_site_is_kept(client: FlaskClient, db: Session) -> None:
    """A plain path with its query string is where the login sends back to."""
    make_user(db, "chef@example.org")
    response = client.post("/login", data={"email": "chef@example.org", "password": PASSWORD,
                                           "next": "/contacts?q=le%20matin",
                                           "csrf_token": csrf_token(client)})
    assert response.status_code == 303 and response.headers["Location"] == "/contacts?q=le%20matin"


def test_users_create_command(runner, db: Session) -> None:  # type: ignore[no-untyped-def]
    """`communique users create EMAIL --admin --password-stdin` makes an admin who can sign in."""
    from service.cli import main

    result = runner.invoke(main, ["users", "create", "boss@example.org", "--admin", "--password-stdin"],
                           input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert "boss@example.org" in result.output
    assert authenticate(db, "boss@example.org", PASSWORD, now=utcnow()).role == Role.admin  # type: ignore[union-attr]
    result = runner.invoke(main, ["users", "create", "x@example.org", "--password-stdin"], input="short\n")
    assert result.exit_code == 1 and "password" in result.output


@pytest.mark.sqlite_only
def test_language_switch_to_english(settings: Settings, engine, db: Session) -> None:  # type: ignore[no-untyped-def]
    """The language button switches the interface to English and the choice sticks to the user."""
    app: Flask = create_app(dataclasses.replace(settings))
    client = app.test_client()
    make_user(db, "chef@example.org")
    sign_in(client, "chef@example.org")
    response = client.post("/language", data={"language": "en", "next": "/",
                                              "csrf_token": csrf_token(client, "/")})
    assert response.status_code == 303
    assert "Upcoming and running blasts" in client.get("/").get_data(as_text=True)
    db.expire_all()
    assert db.scalar(select(User.language)) == "en"
    app.extensions["communique"].engine.dispose()
