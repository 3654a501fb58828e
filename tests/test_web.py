"""Web pages through the Flask test client: roles on blast actions, French catalog completeness,
the import report, the schedule confirmation and the progress endpoint."""

from __future__ import annotations

import dataclasses
import io
import re
from datetime import timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from webutil import csrf_token, make_user, sign_in

from service import create_app
from service.blasts import create_blast
from service.config import Settings
from service.contacts import import_contacts
from service.db import utcnow
from service.i18n_catalog import FR
from service.models import Blast, BlastStatus, Role
from service.releases import create_release

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
    files += list(SERVICE.glob("web*.py")) + [SERVICE / "forms.py"]
    missing = set()
    for path in files:
        for text in pattern.findall(path.read_text()):
            if text not in FR and not text.endswith(":"):
                missing.add(text)
    labels = re.findall(r'Field\("([^"]+)"', (SERVICE / "forms.py").read_text())
    missing |= {label for label in labels if label not in FR}
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
