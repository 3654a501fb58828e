"""Helpers for web tests: make accounts, read CSRF tokens from pages, sign in."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from service.accounts.users import create_user
from service.db import utcnow
from service.models import Role

PASSWORD = "correct horse battery"
_TOKEN = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def make_user(db: Session, email: str, role: Role = Role.admin, language: str = "fr") -> str:
    create_user(db, email=email, password=PASSWORD, role=role, language=language, now=utcnow())
    db.commit()
    return email


def csrf_token(client: FlaskClient, path: str = "/login") -> str:
    page = client.get(path).get_data(as_text=True)
    match = _TOKEN.search(page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def sign_in(client: FlaskClient, email: str, password: str = PASSWORD) -> None:
    response = client.post("/login", data={"email": email, "password": password,
                                           "csrf_token": csrf_token(client)})
    assert response.status_code == 303, response.get_data(as_text=True)
