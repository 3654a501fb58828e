"""Accessibility of the server-rendered pages: every field has a label, every error is tied to its
field with aria-describedby, and irreversible actions ask for confirmation first."""

from __future__ import annotations

from datetime import timedelta
from html.parser import HTMLParser

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from webutil import csrf_token, make_user, sign_in

from service.config import Settings
from service.contacts.importing import import_contacts
from service.db import utcnow
from service.delivery.blasts import create_blast
from service.models import Contact
from service.releases.store import create_release

CSV = "email;prénom;nom;langue\nh.benjelloun@atlas.example;Hélène;Benjelloun;fr\n"
NOT_FIELDS = {"hidden", "submit", "button", "reset", "image"}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.label_for: set[str] = set()
        self.fields: list[dict[str, str]] = []
        self.in_label = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if "id" in values:
            self.ids.add(values["id"])
        if tag == "label":
            self.in_label += 1
            if values.get("for"):
                self.label_for.add(values["for"])
        if tag in ("input", "select", "textarea") and values.get("type", "") not in NOT_FIELDS:
            self.fields.append({**values, "_tag": tag, "_wrapped": "1" if self.in_label else ""})

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self.in_label = max(0, self.in_label - 1)


def _problems(path: str, html: str) -> list[str]:
    page = _Page()
    page.feed(html)
    problems = []
    for field in page.fields:
        name = field.get("name") or field.get("id") or field["_tag"]
        labelled = field["_wrapped"] or field.get("id") in page.label_for \
            or field.get("aria-label") or field.get("aria-labelledby")
        if not labelled:
            problems.append(f"{path}: {name} has no label")
        if field.get("aria-invalid") == "true" and not field.get("aria-describedby"):
            problems.append(f"{path}: {name} is invalid but its error is not linked")
        for target in field.get("aria-describedby", "").split():
            if target not in page.ids:
                problems.append(f"{path}: {name} points to a missing #{target}")
    return problems


def _setup(client: FlaskClient, db: Session, settings: Settings) -> tuple[int, int, int]:
    make_user(db, "chef@example.org")
    now = utcnow()
    import_contacts(db, CSV.encode(), list_name="presse", now=now)
    release = create_release(db, settings, title="Titre", body="Bonjour", actor="x", now=now)
    blast = create_blast(db, settings, release_id=release.id, list_names=["presse"],
                         send_at=now + timedelta(hours=1), actor="x", now=now)
    db.commit()
    ids = release.id, blast.id, db.scalars(select(Contact.id)).one()
    db.rollback()
    sign_in(client, "chef@example.org")
    return ids


def test_every_field_has_a_label_and_errors_are_linked(client: FlaskClient, db: Session,
                                                       settings: Settings) -> None:
    """On every page (and on forms showing errors) each field has a label, and each error message
    is referenced by its field's aria-describedby."""
    anonymous = _problems("/login", client.get("/login").get_data(as_text=True))
    release_id, blast_id, contact_id = _setup(client, db, settings)
    pages = ["/", "/contacts", "/contacts/new", f"/contacts/{contact_id}", "/contacts/import",
             "/suppressions", "/releases", "/releases/new", f"/releases/{release_id}",
             f"/releases/{release_id}/preview", f"/releases/{release_id}/schedule", "/blasts",
             f"/blasts/{blast_id}", "/preferences", "/users"]
    problems = list(anonymous)
    for path in pages:
        response = client.get(path)
        assert response.status_code == 200, path
        problems += _problems(path, response.get_data(as_text=True))
    schedule = f"/releases/{release_id}/schedule"
    with_errors = {
        schedule: {"lists": "presse", "send_at": "2031-03-04T10:30", "stop_after": "2031-03-04T09:00"},
        "/contacts/new": {"email": "pas-une-adresse"},
        f"/releases/{release_id}": {"title": ""},
        "/users": {"email": "x", "password": "court"},
    }
    for path, data in with_errors.items():
        response = client.post(path, data={**data, "csrf_token": csrf_token(client, path)})
        html = response.get_data(as_text=True)
        assert response.status_code in (200, 400) and 'aria-invalid="true"' in html, path
        problems += _problems(f"POST {path}", html)
    lists_error = client.post(schedule, data={"send_at": "2031-03-04T10:30",
                                              "csrf_token": csrf_token(client, schedule)})
    html = lists_error.get_data(as_text=True)
    assert 'aria-describedby="lists-error"' in html and 'id="lists-error"' in html
    assert not problems, problems


def test_irreversible_actions_ask_for_confirmation(client: FlaskClient, db: Session,
                                                   settings: Settings) -> None:
    """Cancelling a blast, deleting a contact and sending now each sit in a form that asks first."""
    release_id, blast_id, contact_id = _setup(client, db, settings)
    blast_page = client.get(f"/blasts/{blast_id}").get_data(as_text=True)
    assert f'action="/blasts/{blast_id}/cancel" class="inline" data-confirm="Annuler cet envoi' in blast_page
    contact_page = client.get(f"/contacts/{contact_id}").get_data(as_text=True)
    assert f'action="/contacts/{contact_id}/delete" class="inline" data-confirm="' in contact_page
    path = f"/releases/{release_id}/schedule"
    confirm = client.post(path, data={"lists": "presse", "send_now": "y",
                                      "csrf_token": csrf_token(client, path)}).get_data(as_text=True)
    assert 'data-confirm="Envoyer ce communiqué maintenant à 1 destinataires ?' in confirm
    later = client.post(path, data={"lists": "presse", "send_at": "2031-03-04T10:30",
                                    "csrf_token": csrf_token(client, path)}).get_data(as_text=True)
    assert "data-confirm" not in later  # a scheduled blast can still be cancelled
