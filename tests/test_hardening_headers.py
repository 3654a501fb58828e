"""Hardening of responses: security headers and the content security policy on the press
office's pages and the journalists' public pages, HSTS only over https, Secure cookies in
production. (That the policy breaks no page is checked in Chromium by tests/test_browser.py.)"""

from __future__ import annotations

import dataclasses

from flask.testing import FlaskClient
from sqlalchemy.orm import Session
from webutil import make_user, sign_in

from service import create_app
from service.config import Settings
from service.db import utcnow
from service.models import Blast, BlastStatus, Contact
from service.releases import store as releases
from service.rendering.unsubscribe import make_token


def _policy(response: object) -> dict[str, str]:
    header = response.headers.get("Content-Security-Policy", "")  # type: ignore[attr-defined]
    return {part.split()[0]: part.strip() for part in header.split(";") if part.strip()}


def _assert_hardened(path: str, response: object) -> None:
    headers = response.headers  # type: ignore[attr-defined]
    policy = _policy(response)
    assert policy.get("frame-ancestors") == "frame-ancestors 'none'", (path, policy)
    assert policy.get("script-src") == "script-src 'self'", (path, policy)  # no inline script
    assert policy.get("object-src") == "object-src 'none'", (path, policy)
    assert headers.get("X-Frame-Options") == "DENY", path
    assert headers.get("X-Content-Type-Options") == "nosniff", path
    assert headers.get("Referrer-Policy") == "same-origin", path


def test_every_page_carries_security_headers(client: FlaskClient, db: Session,
                                             settings: Settings) -> None:
    """/, /login, /blasts/*, /r/* and /u/* answer with a CSP (no inline script, not framable),
    X-Frame-Options DENY, nosniff and a Referrer-Policy."""
    now = utcnow()
    release = releases.create_release(db, settings, title="Lancement", body="Texte.", now=now)
    blast = Blast(release_id=release.id, status=BlastStatus.running, send_at=now, started_at=now)
    contact = Contact(email="elodie@lemonde.example", email_key="elodie@lemonde.example")
    db.add_all([blast, contact])
    db.commit()
    pages = {"/login": 200, f"/r/{release.slug}": 200,
             f"/u/{make_token(settings, contact.id, blast.id)}": 200, "/r/nope": 404}
    for path, status in pages.items():
        response = client.get(path)
        assert response.status_code == status, path
        _assert_hardened(path, response)
    make_user(db, "chef@example.org")
    sign_in(client, "chef@example.org")
    for path in ("/", "/blasts", f"/blasts/{blast.id}", f"/releases/{release.id}/preview"):
        response = client.get(path)
        assert response.status_code == 200, path
        _assert_hardened(path, response)
    # Only where an email is shown may inline styles (of the email's HTML) apply.
    assert "'unsafe-inline'" not in _policy(client.get("/"))["style-src"]
    assert "'unsafe-inline'" in _policy(client.get(f"/releases/{release.id}/preview"))["style-src"]


def test_hsts_only_when_served_over_https(settings: Settings, engine: object) -> None:
    """Strict-Transport-Security is sent for an https installation's https requests, never over
    plain http nor when COMMUNIQUE_BASE_URL is http."""
    https_app = create_app(settings)  # base_url https://press.example.org
    client = https_app.test_client()
    hsts = client.get("/login", base_url="https://press.example.org").headers
    assert hsts.get("Strict-Transport-Security", "").startswith("max-age=")
    assert "Strict-Transport-Security" not in client.get("/login").headers
    http_app = create_app(dataclasses.replace(settings, base_url="http://127.0.0.1:8000"))
    plain = http_app.test_client().get("/login", base_url="https://127.0.0.1:8000")
    assert "Strict-Transport-Security" not in plain.headers
    for app in (https_app, http_app):
        app.extensions["communique"].engine.dispose()


def test_cookies_are_secure_in_production(settings: Settings, engine: object) -> None:
    """In production the session cookie is Secure even before the base URL is https; in
    development over http it is not (the browser would drop it)."""
    production = dataclasses.replace(settings, env="production", base_url="http://127.0.0.1:8000",
                                     metrics_token="m" * 32)
    development = dataclasses.replace(production, env="development")
    for value, secure in ((production, True), (development, False)):
        app = create_app(value)
        cookie = app.test_client().get("/login").headers["Set-Cookie"]
        assert ("; Secure" in cookie) is secure, cookie
        app.extensions["communique"].engine.dispose()
