"""Public pages: the web version (hidden until the embargo lifts) and the unsubscribe pages."""

from __future__ import annotations

import re
from datetime import timedelta

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import utcnow
from service.models import Blast, BlastStatus, Contact, ContactStatus
from service.releases import store as releases
from service.rendering.unsubscribe import make_token


def _contact(db: Session, language: str = "fr") -> int:
    contact = Contact(email="elodie@lemonde.example", email_key="elodie@lemonde.example",
                      first_name="Élodie", last_name="Martin", language=language)
    db.add(contact)
    db.flush()
    contact_id = contact.id
    db.commit()  # SQLite transactions here begin IMMEDIATE: keep none open across requests
    return contact_id


def _start_blast(db: Session, release_id: int) -> None:
    """A blast of the release that has started sending (the row as blasts.start_blast leaves it)."""
    now = utcnow()
    db.add(Blast(release_id=release_id, status=BlastStatus.running, send_at=now, started_at=now))
    db.commit()


def _status(db: Session, contact_id: int) -> str:
    """Read in a short transaction: an open SQLite read would block the app's write."""
    db.rollback()
    status = db.get(Contact, contact_id).status  # type: ignore[union-attr]
    db.rollback()
    return status


def test_web_version_hidden_until_embargo_lifts(client: FlaskClient, db: Session,
                                                settings: Settings) -> None:
    """/r/<slug> is 404 while embargoed and shows the release once the embargo time has passed."""
    now = utcnow()
    release = releases.create_release(db, settings, title="Lancement", body="**Texte** public.",
                                      embargo_until=now + timedelta(hours=1), now=now)
    _start_blast(db, release.id)
    assert client.get(f"/r/{release.slug}").status_code == 404
    release.embargo_until = now - timedelta(seconds=1)  # sent: no longer editable, set the row
    db.commit()
    response = client.get(f"/r/{release.slug}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "<h1>Lancement</h1>" in page and "<strong>Texte</strong> public." in page
    assert '<html lang="fr" dir="ltr">' in page and "https://" not in page.split("<body>")[0]
    assert client.get("/r/no-such-release").status_code == 404


def test_arabic_web_version_is_right_to_left(client: FlaskClient, db: Session,
                                             settings: Settings) -> None:
    """An Arabic release's web page is served with lang=ar and dir=rtl."""
    release = releases.create_release(db, settings, title="بلاغ", body="نص البلاغ.", language="ar",
                                      now=utcnow())
    _start_blast(db, release.id)
    page = client.get(f"/r/{release.slug}").get_data(as_text=True)
    assert '<html lang="ar" dir="rtl">' in page and "نص البلاغ." in page


def test_web_version_only_once_sending_started(client: FlaskClient, db: Session,
                                              settings: Settings) -> None:
    """/r/<slug> is 404 for a draft and for a release whose only blast was cancelled before it
    started; it shows once a blast of the release (or of a language variant) has started."""
    now = utcnow()
    release = releases.create_release(db, settings, title="Brouillon", body="Pas encore.", now=now)
    english = releases.create_release(db, settings, title="Draft", body="Not yet.", language="en",
                                      variant_of=release.id, now=now)
    db.add(Blast(release_id=release.id, status=BlastStatus.scheduled, send_at=now))
    db.add(Blast(release_id=release.id, status=BlastStatus.cancelled))
    db.commit()
    assert client.get(f"/r/{release.slug}").status_code == 404
    assert client.get(f"/r/{english.slug}").status_code == 404
    _start_blast(db, release.id)
    assert client.get(f"/r/{release.slug}").status_code == 200
    assert client.get(f"/r/{english.slug}").status_code == 200


def test_one_click_post_unsubscribes_without_csrf(client: FlaskClient, db: Session,
                                                  settings: Settings) -> None:
    """RFC 8058: a POST of List-Unsubscribe=One-Click unsubscribes at once, no token needed."""
    contact_id = _contact(db)
    token = make_token(settings, contact_id, 4)
    response = client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert _status(db, contact_id) == ContactStatus.unsubscribed


def test_confirmation_page_then_form_post(client: FlaskClient, db: Session, settings: Settings) -> None:
    """GET asks in the contact's language; the form POST needs its CSRF token, then unsubscribes."""
    contact_id = _contact(db)
    token = make_token(settings, contact_id)
    page = client.get(f"/u/{token}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Me désabonner" in html and "elodie@lemonde.example" in html
    assert _status(db, contact_id) == ContactStatus.active
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    if match:  # CSRF is on in this app: a POST without the token is refused
        assert client.post(f"/u/{token}", data={}).status_code == 400
        assert _status(db, contact_id) == ContactStatus.active
    response = client.post(f"/u/{token}", data={"csrf_token": match.group(1) if match else ""})
    assert response.status_code == 200
    assert "vous ne recevrez plus nos communiqués" in response.get_data(as_text=True)
    assert _status(db, contact_id) == ContactStatus.unsubscribed


def test_forged_token_is_404(client: FlaskClient, db: Session, settings: Settings) -> None:
    """A token not signed with our secret opens nothing."""
    contact_id = _contact(db)
    token = make_token(settings, contact_id)
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    assert client.get(f"/u/{forged}").status_code == 404
    assert client.post(f"/u/{forged}", data={"List-Unsubscribe": "One-Click"}).status_code == 404
