"""Release pages through the Flask test client: language variants (create, list, preview as an
Arabic contact), attachment uploads (accepted and refused) and the translation of every
warning the preview page can show."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from webutil import csrf_token, make_user, sign_in

from service import create_app
from service.config import Settings
from service.contacts.store import create_contact
from service.db import utcnow
from service.models import Attachment, Release, Role
from service.releases.checks import check_message
from service.releases.store import add_attachment, create_release, validate_release
from service.rendering.prepare import RenderedMessage
from service.web.i18n import translate_reason

ARABIC = """# المكتب الوطني المغربي للسياحة يطلق فريق عمل

الدار البيضاء، 6 يوليو 2022 — أطلق المكتب الوطني المغربي للسياحة فريق عمل جديدا.
"""
PDF = b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n"


def _release(db: Session, settings: Settings, **fields: object) -> Release:
    values: dict[str, object] = {"title": "Le Maroc accueille", "body": "Bonjour **à tous**.",
                                 "actor": "x", "now": utcnow(), **fields}
    release = create_release(db, settings, **values)  # type: ignore[arg-type]
    db.commit()
    return release


def test_create_arabic_variant_and_preview_it_as_an_arabic_contact(
        client: FlaskClient, db: Session, settings: Settings) -> None:
    """Pasting an Arabic release on a release page creates a variant, listed on both pages, and
    the preview as an Arabic-language contact shows it right to left."""
    make_user(db, "chef@example.org")
    base = _release(db, settings)
    contact = create_contact(db, {"email": "s.idrissi@massae.example", "first_name": "Salma",
                                  "language": "ar"}, now=utcnow())
    db.commit()
    contact_id, base_id = contact.id, base.id
    db.rollback()
    sign_in(client, "chef@example.org")
    path = f"/releases/{base_id}"
    page = client.get(path).get_data(as_text=True)
    assert "Créer une version dans une autre langue" in page and 'name="var-body"' in page
    response = client.post(f"{path}/variants", data={
        "var-language": "ar", "var-body": ARABIC, "csrf_token": csrf_token(client, path)})
    assert response.status_code == 303
    variant = db.scalars(select(Release).where(Release.language == "ar")).one()
    variant_id, group_id = variant.id, variant.group_id
    db.rollback()
    assert group_id == base_id
    base_page = client.get(path).get_data(as_text=True)
    assert f'href="/releases/{variant_id}/preview"' in base_page and "المكتب الوطني" in base_page
    assert f'href="/releases/{base_id}"' in client.get(f"/releases/{variant_id}").get_data(as_text=True)

    preview = client.get(f"/releases/{base_id}/preview?contact_id={contact_id}").get_data(as_text=True)
    assert "المكتب الوطني المغربي للسياحة يطلق فريق عمل" in preview
    assert 'dir=&#34;rtl&#34;' in preview or "dir=&quot;rtl&quot;" in preview

    again = client.post(f"{path}/variants", data={
        "var-language": "ar", "var-body": ARABIC, "csrf_token": csrf_token(client, path)})
    page = again.get_data(as_text=True)
    assert again.status_code == 400
    assert 'id="var-language-error"' in page and "ce communiqué a déjà une version dans cette langue" in page
    empty = client.post(f"{path}/variants", data={
        "var-language": "en", "var-body": " ", "csrf_token": csrf_token(client, path)})
    assert empty.status_code == 400
    assert "Choisissez un fichier Markdown ou collez le texte." in empty.get_data(as_text=True)


def test_variant_from_a_markdown_file(client: FlaskClient, db: Session, settings: Settings) -> None:
    """A variant can also be imported from a Markdown file; its title comes from the file."""
    make_user(db, "chef@example.org")
    base_id = _release(db, settings).id
    db.rollback()
    sign_in(client, "chef@example.org")
    path = f"/releases/{base_id}"
    english = b"# Morocco welcomes the world\n\nCasablanca, 6 July 2022 - Hello.\n"
    response = client.post(f"{path}/variants", data={
        "var-language": "en", "var-file": (io.BytesIO(english), "en.md"),
        "csrf_token": csrf_token(client, path)}, content_type="multipart/form-data")
    assert response.status_code == 303
    titles = [r.title for r in db.scalars(select(Release).where(Release.language == "en"))]
    db.rollback()
    assert titles == ["Morocco welcomes the world"]


@pytest.fixture
def small_upload_app(settings: Settings, engine: object) -> Iterator[Flask]:
    app = create_app(dataclasses.replace(settings, attachment_max_bytes=1024, upload_max_bytes=4096))
    yield app
    app.extensions["communique"].engine.dispose()


def test_attachment_upload_accepts_pdf_and_refuses_others(
        small_upload_app: Flask, db: Session, settings: Settings) -> None:
    """A PDF is stored and listed; a text file, an oversized PDF and an upload past the request
    limit are refused with a message a press officer understands."""
    client = small_upload_app.test_client()
    make_user(db, "chef@example.org")
    release_id = _release(db, settings).id
    db.rollback()
    sign_in(client, "chef@example.org")
    path, target = f"/releases/{release_id}", f"/releases/{release_id}/attachments"

    def upload(data: bytes, name: str, mimetype: str) -> tuple[int, str]:
        response = client.post(target, data={
            "att-file": (io.BytesIO(data), name, mimetype), "csrf_token": csrf_token(client, path)},
            content_type="multipart/form-data")
        return response.status_code, response.get_data(as_text=True)

    assert upload(PDF, "dossier.pdf", "application/pdf")[0] == 303
    assert "dossier.pdf" in client.get(path).get_data(as_text=True)
    status, page = upload(b"hello", "notes.txt", "text/plain")
    assert status == 400 and 'id="att-file-error"' in page
    assert "seuls les PDF et les images (PNG, JPEG, GIF, WebP) peuvent être joints" in page
    status, page = upload(PDF + b"0" * 2000, "gros.pdf", "application/pdf")
    assert status == 400 and "dépasse 1024 octets" in page
    status, page = upload(PDF + b"0" * 8000, "enorme.pdf", "application/pdf")
    assert status == 413 and "Le fichier dépasse 4 Ko. Choisissez un fichier plus petit." in page
    stored = [a.filename for a in db.scalars(select(Attachment))]
    db.rollback()
    assert stored == ["dossier.pdf"]


def _every_warning(db: Session, settings: Settings) -> list[str]:
    """Each wording releases.validate_release and message_checks.check_message can produce."""
    long = _release(db, settings, title="T" * 130, body="![vue](https://example.org/a.png)")
    attachment_settings = dataclasses.replace(settings, attachment_max_bytes=8 * 1024 * 1024)
    add_attachment(db, attachment_settings, long.id, filename="lourd.pdf",
                   content_type="application/pdf", data=PDF + b"0" * (6 * 1024 * 1024), now=utcnow())
    empty = _release(db, settings, title="Vide", body=" ")
    warnings = validate_release(db, settings, long.id) + validate_release(db, settings, empty.id)
    bad = RenderedMessage("s", '<a href="">x</a><img src="data:image/png;base64,' + "A" * 300_000
                          + '"><img src="https://x.example/big.png" width="2400">', "", {}, "<id@x>",
                          b"")
    good = RenderedMessage("s", '<a href="https://x.example/u/t">u</a>', "text",
                           {"List-Unsubscribe": "<https://x.example/u/t>"}, "<id@x>", b"")
    checks = check_message(bad) + check_message(good)
    details = [d for c in checks if c.detail for d in c.detail.split("; ")
               if not c.message.startswith("links")]
    return warnings + [c.message for c in checks] + details


def test_every_preview_warning_has_a_french_and_english_label(db: Session, settings: Settings) -> None:
    """Every warning and check the preview page can show reads in French, and in English as written."""
    every = _every_warning(db, settings)
    assert len(every) >= 14, every
    untranslated = [w for w in every if translate_reason(w, "fr") == w]
    assert not untranslated, untranslated
    assert all(translate_reason(w, "en") == w for w in every)
    assert translate_reason("attachments weigh 6144 KB: consider linking to them instead", "fr") \
        == "les pièces jointes pèsent 6144 Ko : mettez plutôt un lien vers elles"
    assert not [w for w in every if "#" in translate_reason(w, "fr")]


def test_sender_may_not_create_a_variant(client: FlaskClient, db: Session,
                                                          settings: Settings) -> None:
    """A sender (who may not edit) gets 403 when creating a variant."""
    make_user(db, "sender@example.org", Role.sender)
    base_id = _release(db, settings).id
    db.rollback()
    sign_in(client, "sender@example.org")
    response = client.post(f"/releases/{base_id}/variants", data={
        "var-language": "en", "var-body": "# Hi\n\nText", "csrf_token": csrf_token(client, "/")})
    assert response.status_code == 403
