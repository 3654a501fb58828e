"""Web pages through the Flask test client: roles on blast actions, French catalog completeness,
the import report, contact editing, the schedule form (confirmation, time limits), the blast
page's ETA and progress endpoint, the approval flow and the demo's Outbox pages."""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from smtp_server import free_port
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from webutil import csrf_token, make_user, sign_in

from service import create_app
from service.config import Settings
from service.contacts.importing import import_contacts
from service.db import utcnow
from service.delivery.blasts import create_blast
from service.models import Blast, BlastStatus, Contact, MessageStatus, QueuedMessage, Role
from service.ops.outbox import start_outbox
from service.releases.store import create_release
from service.web.i18n import CATALOGS

SERVICE = Path(__file__).resolve().parent.parent / "service"
CSV = "email;prénom;nom;langue\nh.benjelloun@atlas.example;Hélène;Benjelloun;fr\nbad-address;X;Y;fr\n"


def _setup_blast(db: Session, settings: Settings, *, by: Role) -> int:
    now = utcnow()
    import_contacts(db, CSV.encode(), list_name="presse", now=now)
    release = create_release(db, settings, title="Titre", body="Bonjour", actor="x", now=now)
    blast = create_blast(db, settings, release_id=release.id, list_names=["presse"],
                         send_at=now + timedelta(hours=1), actor="editor@example.org", actor_role=by,
                         now=now)
    db.commit()
    return blast.id


def test_every_interface_string_has_a_french_translation() -> None:
    """Each `_("...")` in the templates and web modules, and each form label, is in the French catalog."""
    pattern = re.compile(r'''_\(\s*"([^"]+)"''')
    files = [p for p in (SERVICE / "templates").rglob("*.html") if "public" not in p.parts]
    files += [p for p in (SERVICE / "web").glob("*.py") if p.name != "public.py"]
    missing = set()
    for path in files:
        for text in pattern.findall(path.read_text()):
            if text not in CATALOGS["fr"] and not text.endswith(":"):
                missing.add(text)
    labels = re.findall(r'Field\("([^"]+)"', (SERVICE / "web" / "forms.py").read_text())
    missing |= {label for label in labels if label not in CATALOGS["fr"]}
    assert not missing, sorted(missing)


def test_import_report_lists_rejected_rows(client: FlaskClient, db: Session) -> None:
    """Uploading a CSV shows the counts and each rejected row with its reason."""
    make_user(db, "chef@example.org")
    sign_in(client, "chef@example.org")
    response = client.post("/contacts/import", data={
        "file": (io.BytesIO(CSV.encode()), "presse.csv"), "list_name": "presse",
        "csrf_token": csrf_token(client, "/contacts/import")}, content_type="multipart/form-data")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Rapport d’import de presse.csv" in page and "bad-address" in page


@pytest.mark.sqlite_only
def test_editor_needs_approval_and_cannot_send(settings: Settings, engine, db: Session) -> None:  # type: ignore[no-untyped-def]
    """With approval on, an editor's blast waits as a draft; the editor gets 403 on approve, schedule
    and cancel, and a sender's approval schedules it."""
    approval = dataclasses.replace(settings, require_approval=True)
    app = create_app(approval)
    editor, sender = app.test_client(), app.test_client()
    make_user(db, "editor@example.org", Role.editor)
    make_user(db, "sender@example.org", Role.sender)
    blast_id = _setup_blast(db, approval, by=Role.editor)
    assert db.get(Blast, blast_id).status == BlastStatus.draft  # type: ignore[union-attr]
    db.rollback()  # SQLite: a reading test must not hold the write lock the app needs
    sign_in(editor, "editor@example.org")
    token = csrf_token(editor, f"/blasts/{blast_id}")
    for action in ("approve", "schedule", "cancel"):
        assert editor.post(f"/blasts/{blast_id}/{action}", data={"csrf_token": token}).status_code == 403
    sign_in(sender, "sender@example.org")
    response = sender.post(f"/blasts/{blast_id}/approve",
                           data={"csrf_token": csrf_token(sender, f"/blasts/{blast_id}")})
    assert response.status_code == 303
    db.expire_all()
    assert db.get(Blast, blast_id).status == BlastStatus.scheduled  # type: ignore[union-attr]
    app.extensions["communique"].engine.dispose()


def test_schedule_form_confirms_then_schedules(client: FlaskClient, db: Session, settings: Settings) -> None:
    """The schedule form first shows the count and send time with its UTC offset, then schedules."""
    make_user(db, "chef@example.org")
    now = utcnow()
    import_contacts(db, CSV.encode(), list_name="presse", now=now)
    release = create_release(db, settings, title="Titre", body="Bonjour", actor="x", now=now)
    db.commit()
    sign_in(client, "chef@example.org")
    path = f"/releases/{release.id}/schedule"
    form = {"lists": "presse", "send_at": "2031-03-04T10:30", "csrf_token": csrf_token(client, path)}
    confirm = client.post(path, data=form).get_data(as_text=True)
    assert 'data-testid="confirm-count">1<' in confirm and "(UTC+01:00)" in confirm
    assert client.get("/audience-count?lists=presse").get_json()["count"] == 1
    response = client.post(path, data={**form, "confirmed": "yes"})
    assert response.status_code == 303
    blast = db.scalars(select(Blast)).one()
    db.expunge(blast)
    db.rollback()
    assert blast.status == BlastStatus.scheduled
    assert blast.send_at.isoformat() == "2031-03-04T09:30:00+00:00"  # type: ignore[union-attr]
    progress = client.get(f"/blasts/{blast.id}/progress.json").get_json()
    assert progress["status"] == "scheduled" and progress["status_label"] == "programmé"


def test_edit_contact_shows_the_error_beside_the_field_then_saves(client: FlaskClient, db: Session) -> None:
    """A bad address on the contact form is refused beside the email field (linked for screen
    readers); a corrected form is saved."""
    make_user(db, "chef@example.org")
    tagged = ("email;prénom;nom;langue;étiquettes\n"
              "h.benjelloun@atlas.example;Hélène;Benjelloun;fr;économie, tourisme\n")
    import_contacts(db, tagged.encode(), list_name="presse", now=utcnow())
    db.commit()
    contact = db.scalars(select(Contact)).one()
    contact_id = contact.id
    db.rollback()
    sign_in(client, "chef@example.org")
    path = f"/contacts/{contact_id}"
    assert 'name="tags" type="text" value="économie, tourisme"' in client.get(path).get_data(as_text=True)
    form = {"email": "pas-une-adresse", "first_name": "Hélène", "last_name": "Benjelloun",
            "language": "fr", "country": "MA", "media_type": "", "csrf_token": csrf_token(client, path)}
    response = client.post(path, data=form)
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert re.search(r'<input[^>]*aria-describedby="email-error"[^>]*aria-invalid="true"', page) \
        or re.search(r'<input[^>]*aria-invalid="true"[^>]*aria-describedby="email-error"', page)
    assert re.search(r'id="email-error" role="alert">adresse invalide', page), page
    response = client.post(path, data={**form, "email": "helene@atlas.example", "city": "Rabat"})
    assert response.status_code == 303
    db.expire_all()
    saved = db.get(Contact, contact_id)
    assert saved is not None and (saved.email, saved.city) == ("helene@atlas.example", "Rabat")
    db.rollback()


def test_schedule_form_checks_do_not_start_after_and_expiry(client: FlaskClient, db: Session,
                                                            settings: Settings) -> None:
    """'Do not start after' and the expiry are entered in the office time zone (offset shown) and
    must follow the send time: errors appear beside each field, good values reach the blast."""
    make_user(db, "chef@example.org")
    now = utcnow()
    import_contacts(db, CSV.encode(), list_name="presse", now=now)
    release = create_release(db, settings, title="Titre", body="Bonjour", actor="x", now=now)
    db.commit()
    sign_in(client, "chef@example.org")
    path = f"/releases/{release.id}/schedule"
    page = client.get(path).get_data(as_text=True)
    assert 'for="start_before">Ne pas commencer après (facultatif)' in page
    assert re.search(r'id="start_before-hint">[^<]*Africa/Casablanca, UTC\+0[01]:00', page)
    form = {"lists": "presse", "send_at": "2031-03-04T10:30", "start_before": "2031-03-04T10:00",
            "stop_after": "2031-03-04T10:30", "csrf_token": csrf_token(client, path)}
    response = client.post(path, data=form)
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert 'id="start_before-error" role="alert">est avant l’heure d’envoi' in page
    assert 'id="stop_after-error" role="alert">n’est pas après l’heure d’envoi' in page
    good = {**form, "start_before": "2031-03-04T11:00", "stop_after": "2031-03-05T10:30"}
    confirm = client.post(path, data=good).get_data(as_text=True)
    assert "Ne pas commencer après" in confirm and "4 mars 2031, 11:00 (UTC+01:00)" in confirm
    assert client.post(path, data={**good, "confirmed": "yes"}).status_code == 303
    blast = db.scalars(select(Blast)).one()
    assert blast.start_before.isoformat() == "2031-03-04T10:00:00+00:00"  # type: ignore[union-attr]
    assert blast.stop_after.isoformat() == "2031-03-05T09:30:00+00:00"  # type: ignore[union-attr]
    db.rollback()


def test_blast_page_shows_the_eta_in_the_user_time_zone(client: FlaskClient, db: Session,
                                                        settings: Settings) -> None:
    """A running blast's ETA is written like every other time on the page, in the user's zone,
    both in the first render and in the live-update JSON."""
    make_user(db, "chef@example.org")
    now = utcnow()
    rows = "".join(f"j{i}@press.example;J;{i};fr\n" for i in range(6))
    import_contacts(db, ("email;prénom;nom;langue\n" + rows).encode(), list_name="presse", now=now)
    release = create_release(db, settings, title="Titre", body="Bonjour", actor="x", now=now)
    blast = create_blast(db, settings, release_id=release.id, list_names=["presse"], actor="x", now=now)
    first = list(db.scalars(select(QueuedMessage.id).where(QueuedMessage.blast_id == blast.id)
                            .order_by(QueuedMessage.id).limit(3)))
    db.execute(update(QueuedMessage).where(QueuedMessage.id.in_(first))
               .values(status=MessageStatus.sent, sent_at=now - timedelta(seconds=5)))
    db.commit()
    blast_id = blast.id
    db.rollback()
    sign_in(client, "chef@example.org")
    page = client.get(f"/blasts/{blast_id}").get_data(as_text=True)
    eta = re.search(r'data-field="eta">([^<]*)<', page)
    assert eta and re.fullmatch(r"\d{1,2} \w+\.? \d{4}, \d{2}:\d{2}", eta.group(1)), eta
    assert "T" not in eta.group(1)
    progress = client.get(f"/blasts/{blast_id}/progress.json").get_json()
    assert progress["eta"] and progress["eta_label"] == eta.group(1)


@pytest.mark.sqlite_only
def test_approval_flow_through_the_pages(settings: Settings, engine, db: Session) -> None:  # type: ignore[no-untyped-def]
    """With approval on, an editor's schedule form submits for approval (draft), the sender sees
    the approve button on the blast page, approves, and the blast is scheduled at its time."""
    approval = dataclasses.replace(settings, require_approval=True)
    app = create_app(approval)
    editor, sender = app.test_client(), app.test_client()
    make_user(db, "editor@example.org", Role.editor)
    make_user(db, "sender@example.org", Role.sender)
    now = utcnow()
    import_contacts(db, CSV.encode(), list_name="presse", now=now)
    release_id = create_release(db, approval, title="Titre", body="Bonjour", actor="x", now=now).id
    db.commit()
    sign_in(editor, "editor@example.org")
    path = f"/releases/{release_id}/schedule"
    form = {"lists": "presse", "send_at": "2031-03-04T10:30", "csrf_token": csrf_token(editor, path)}
    confirm = editor.post(path, data=form).get_data(as_text=True)
    assert "Soumettre pour validation" in confirm
    response = editor.post(path, data={**form, "confirmed": "yes"})
    assert response.status_code == 303
    blast_page = response.headers["Location"]
    assert "Valider et programmer" not in editor.get(blast_page).get_data(as_text=True)
    blast = db.scalars(select(Blast)).one()
    assert (blast.status, blast.needs_approval) == (BlastStatus.draft, True)
    db.rollback()
    sign_in(sender, "sender@example.org")
    page = sender.get(blast_page).get_data(as_text=True)
    assert "Valider et programmer" in page and "data-confirm=" in page
    response = sender.post(f"{blast_page}/approve", data={"csrf_token": csrf_token(sender, blast_page)})
    assert response.status_code == 303
    db.expire_all()
    blast = db.scalars(select(Blast)).one()
    assert blast.status == BlastStatus.scheduled and blast.approved_by == "sender@example.org"
    assert blast.send_at.isoformat() == "2031-03-04T09:30:00+00:00"  # type: ignore[union-attr]
    db.rollback()
    assert "validé par sender@example.org" in sender.get(blast_page).get_data(as_text=True)
    app.extensions["communique"].engine.dispose()


@pytest.fixture
def outbox_app(settings: Settings, engine) -> Iterator[Flask]:  # type: ignore[no-untyped-def]
    port = free_port()
    demo = dataclasses.replace(settings, smtp_host="127.0.0.1", smtp_port=port, smtp_timeout_seconds=5)
    server = start_outbox(demo)
    app = create_app(demo)
    app.config["COMMUNIQUE_OUTBOX"] = True
    try:
        yield app
    finally:
        server.stop()
        app.extensions["communique"].engine.dispose()


def test_outbox_lists_a_delivered_message_and_shows_both_parts(outbox_app: Flask, db: Session,
                                                               settings: Settings) -> None:
    """A test sent to the demo's catch-all SMTP server appears in the Outbox list; its page shows
    the subject, the HTML part and the text part."""
    client = outbox_app.test_client()
    make_user(db, "chef@example.org")
    release_id = create_release(db, settings, title="Le Maroc accueille", body="Bonjour **à tous**.",
                                actor="x", now=utcnow()).id
    db.commit()
    sign_in(client, "chef@example.org")
    assert "Aucun e-mail pour l’instant" in client.get("/outbox").get_data(as_text=True) \
        or "<table>" not in client.get("/outbox").get_data(as_text=True)
    preview = f"/releases/{release_id}/preview"
    response = client.post(f"/releases/{release_id}/test", data={
        "addresses": "relecture@onmt.example.org", "csrf_token": csrf_token(client, preview)})
    assert response.status_code == 303
    listing = client.get("/outbox").get_data(as_text=True)
    assert "relecture@onmt.example.org" in listing and "[TEST] Le Maroc accueille" in listing
    link = re.search(r'href="(/outbox/[^"]+\.eml)"', listing)
    assert link
    page = client.get(link.group(1)).get_data(as_text=True)
    assert "<h1>[TEST] Le Maroc accueille</h1>" in page
    assert "srcdoc=" in page and "&lt;strong&gt;à tous&lt;/strong&gt;" in page  # the HTML part
    text_part = re.search(r'<summary>Partie texte</summary><pre class="source">([^<]*)</pre>', page)
    assert text_part and "Bonjour" in text_part.group(1), page[-3000:]
    assert client.get("/outbox/../../etc/passwd").status_code == 404
