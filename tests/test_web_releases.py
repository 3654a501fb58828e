"""Release pages through the Flask test client: language variants (create, list, preview as an
Arabic contact), attachment uploads (accepted and refused), the translation of every warning the
preview page can show, and release editing: highlights and press contacts in the form and its live
preview, a sent release read-only with its history, "new version", each release's state."""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from webutil import csrf_token, make_user, sign_in

from service import create_app
from service.config import Settings
from service.contacts.importing import import_contacts
from service.contacts.store import create_contact
from service.db import utcnow
from service.delivery.blasts import create_blast
from service.models import Attachment, Blast, BlastStatus, MessageStatus, QueuedMessage, Release, Role
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


# ---- release editing: highlights and press contacts, sent releases, new versions, states ------

CONTACTS_CSV = ("email;prénom;nom;langue\nh.benjelloun@atlas.example;Hélène;Benjelloun;fr\n"
                "k.alaoui@matin.example;Karim;Alaoui;fr\nn.tazi@eco.example;Nadia;Tazi;fr\n")


def _contacts(db: Session) -> None:
    import_contacts(db, CONTACTS_CSV.encode(), list_name="presse", now=utcnow())
    db.commit()


def _sent(db: Session, settings: Settings, release_id: int) -> int:
    """A blast of the release that started now and went out to the three contacts of "presse"."""
    now = utcnow()
    blast = create_blast(db, settings, release_id=release_id, list_names=["presse"], actor="x", now=now)
    db.execute(update(QueuedMessage).where(QueuedMessage.blast_id == blast.id)
               .values(status=MessageStatus.sent, sent_at=now))
    blast.status, blast.finished_at = BlastStatus.finished, now
    db.commit()
    blast_id = blast.id
    db.rollback()
    return blast_id


def _form(release: dict[str, str], **changes: str) -> dict[str, str]:
    return {"title": "Le Maroc accueille", "language": "fr", "body": "Bonjour **à tous**.", **release,
            **changes}


def test_form_shows_and_saves_highlights_kicker_dateline_about_and_press_contacts(
        client: FlaskClient, db: Session, settings: Settings) -> None:
    """The release form shows the highlights, kicker, dateline, "about" and press contacts parsed
    from Markdown, saves changes to them (empty contact rows ignored), and refuses a bad contact
    email with an error naming the row and the field, beside it, saving nothing."""
    make_user(db, "chef@example.org")
    release_id = _release(db, settings, highlights=["Réunion à Casablanca"], kicker="Communiqué",
                          dateline="Casablanca, le 6 juillet 2022", about="L’ONMT promeut le Maroc.",
                          press_contacts=[{"organisation": "ONMT", "name": "Salma Idrissi",
                                           "email": "presse@onmt.example", "phone": "+212 5 22 00 00 00"}]).id
    db.rollback()
    sign_in(client, "chef@example.org")
    path = f"/releases/{release_id}"
    page = client.get(path).get_data(as_text=True)
    assert "\nRéunion à Casablanca</textarea>" in page and 'value="Communiqué"' in page
    assert 'value="Casablanca, le 6 juillet 2022"' in page and "L’ONMT promeut le Maroc.</textarea>" in page
    assert 'id="press_contacts-0-name"' in page and 'value="Salma Idrissi"' in page
    assert 'value="presse@onmt.example"' in page and "<legend>Contact presse 3</legend>" in page
    assert "<label for=\"press_contacts-0-organisation\">Organisme ou fonction</label>" in page

    contacts = {"press_contacts-0-organisation": "ONMT", "press_contacts-0-name": "Salma Idrissi",
                "press_contacts-0-phone": "+212 5 22 00 00 00",
                "press_contacts-0-email": "presse@onmt.example",
                "press_contacts-1-name": "", "press_contacts-1-email": "",
                "press_contacts-2-organisation": "Agence Atlas", "press_contacts-2-name": "Karim Alaoui",
                "press_contacts-2-email": "k.alaoui@atlas.example"}
    response = client.post(path, data=_form(contacts, highlights="Un plan d’action\n\n  Deux saisons  \n",
                                            kicker="Information presse", dateline="Rabat, le 7 juillet",
                                            about="L’Office national.", csrf_token=csrf_token(client, path)))
    assert response.status_code == 303
    db.expire_all()
    saved = db.get(Release, release_id)
    assert saved is not None
    assert saved.highlights == ["Un plan d’action", "Deux saisons"]
    assert (saved.kicker, saved.dateline, saved.about) == ("Information presse", "Rabat, le 7 juillet",
                                                          "L’Office national.")
    assert [(c["organisation"], c["name"], c["email"]) for c in saved.press_contacts] == [
        ("ONMT", "Salma Idrissi", "presse@onmt.example"), ("Agence Atlas", "Karim Alaoui",
                                                           "k.alaoui@atlas.example")]
    db.rollback()

    bad = {**contacts, "press_contacts-2-email": "karim.atlas", "press_contacts-2-phone": "appelez-moi"}
    response = client.post(path, data=_form(bad, highlights="Autre", csrf_token=csrf_token(client, path)))
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'id="press_contacts-2-email-error"' in page
    assert "Contact presse 3, e-mail : cette adresse n’est pas valide." in page
    assert "Contact presse 3, téléphone : uniquement des chiffres" in page
    assert 'aria-describedby="press_contacts-2-email-error" aria-invalid="true" id="press_contacts-2-email"' \
        in page
    assert 'value="karim.atlas"' in page  # what was typed stays in the form
    db.expire_all()
    assert db.get(Release, release_id).highlights == ["Un plan d’action", "Deux saisons"]  # type: ignore[union-attr]
    db.rollback()


def test_live_preview_shows_every_part_of_the_release(client: FlaskClient, db: Session) -> None:
    """The live preview beside the editor renders the kicker, title, highlights, dateline with the
    body, "about" and the press contacts from the form as typed (sanitized)."""
    make_user(db, "chef@example.org")
    sign_in(client, "chef@example.org")
    response = client.post("/releases/markdown-preview", data=_form(
        {"press_contacts-0-organisation": "ONMT", "press_contacts-0-name": "Salma Idrissi",
         "press_contacts-0-email": "presse@onmt.example", "press_contacts-1-name": ""},
        kicker="Communiqué", highlights="Réunion à Casablanca\nPlan d’action",
        dateline="Casablanca, le 6 juillet 2022", about="L’ONMT <script>x()</script>promeut le Maroc.",
        csrf_token=csrf_token(client, "/releases/new")))
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert '<p class="preview-kicker">Communiqué</p>' in html and ">Le Maroc accueille</h2>" in html
    assert "<li><strong>Réunion à Casablanca</strong></li>" in html and "Plan d’action" in html
    assert "<strong>Casablanca, le 6 juillet 2022</strong> : Bonjour <strong>à tous</strong>." in html
    assert "promeut le Maroc." in html and "<script>" not in html
    assert "<strong>ONMT</strong><br>Salma Idrissi" in html
    assert 'href="mailto:presse@onmt.example"' in html
    body_only = client.post("/releases/markdown-preview", data={
        "body": "*vite*", "csrf_token": csrf_token(client, "/releases/new")}).get_data(as_text=True)
    assert "<em>vite</em>" in body_only


def test_started_release_opens_read_only_and_an_edit_posted_late_is_kept(
        client: FlaskClient, db: Session, settings: Settings) -> None:
    """A release whose blast started opens read-only (no form, no save button) with its send
    history; an edit posted from a form opened before is refused with a clear message, shown
    back, and can be kept as a new version instead of being lost."""
    make_user(db, "chef@example.org")
    _contacts(db)
    release_id = _release(db, settings, press_contacts=[{"name": "Salma Idrissi",
                                                         "email": "presse@onmt.example"}]).id
    sign_in(client, "chef@example.org")
    path = f"/releases/{release_id}"
    token = csrf_token(client, path)  # the form opened before sending started
    blast_id = _sent(db, settings, release_id)

    page = client.get(path).get_data(as_text=True)
    assert 'name="body"' not in page and 'name="title"' not in page and ">Enregistrer<" not in page
    assert "L’envoi de ce communiqué a commencé : il ne peut plus être modifié" in page
    assert f'action="/releases/{release_id}/new-version"' in page and ">Nouvelle version<" in page
    history = page.split('data-testid="send-history"')[1].split("</table>")[0]
    assert f'href="/blasts/{blast_id}">#{blast_id}</a>' in history and "terminé" in history
    assert "<td>3</td><td>3</td><td>0</td>" in history  # recipients, sent, failed
    assert "Salma Idrissi" in page and "Bonjour <strong>à tous</strong>" in page

    late = client.post(path, data=_form({}, title="Le Maroc accueille le monde", csrf_token=token))
    page = late.get_data(as_text=True)
    assert late.status_code == 409
    assert "L’envoi de ce communiqué a commencé" in page
    assert "Vos modifications n’ont pas été enregistrées" in page
    assert 'value="Le Maroc accueille le monde"' in page and ">Enregistrer mes modifications" in page
    db.expire_all()
    assert db.get(Release, release_id).title == "Le Maroc accueille"  # type: ignore[union-attr]
    db.rollback()

    kept = client.post(f"{path}/new-version", data=_form(
        {"press_contacts-0-name": "Salma Idrissi", "press_contacts-0-email": "presse@onmt.example"},
        title="Le Maroc accueille le monde", csrf_token=token))
    assert kept.status_code == 303
    copy_id = int(kept.headers["Location"].rsplit("/", 1)[1])
    copy = db.get(Release, copy_id)
    assert copy is not None and copy_id != release_id
    assert (copy.title, copy.status, copy.press_contacts[0]["name"]) == (
        "Le Maroc accueille le monde", "draft", "Salma Idrissi")
    assert db.scalars(select(Blast).where(Blast.release_id == copy_id)).all() == []
    db.rollback()
    editable = client.get(f"/releases/{copy_id}").get_data(as_text=True)
    assert 'name="body"' in editable and ">Enregistrer<" in editable
    refused = client.post(f"{path}/attachments", data={
        "att-file": (io.BytesIO(PDF), "dossier.pdf", "application/pdf"), "csrf_token": token},
        content_type="multipart/form-data")
    assert refused.status_code == 303 and db.scalars(select(Attachment)).all() == []
    db.rollback()


def test_new_version_copies_the_release_its_variants_and_attachments(
        client: FlaskClient, db: Session, settings: Settings) -> None:
    """"New version" on a sent release makes a draft copy of it and of its language variants, with
    new slugs, its attachments and no blasts, and opens the copy's form."""
    make_user(db, "chef@example.org")
    _contacts(db)
    base = _release(db, settings, highlights=["Réunion"], external_id="cms-42")
    english = create_release(db, settings, body="# Morocco welcomes\n\nHello.", language="en",
                             variant_of=base.id, actor="x", now=utcnow())
    add_attachment(db, settings, base.id, filename="dossier.pdf", content_type="application/pdf",
                   data=PDF, now=utcnow())
    db.commit()
    base_id, english_id, base_slug = base.id, english.id, base.slug
    _sent(db, settings, base_id)
    sign_in(client, "chef@example.org")
    response = client.post(f"/releases/{english_id}/new-version",
                           data={"csrf_token": csrf_token(client, f"/releases/{english_id}")})
    assert response.status_code == 303
    copy_id = int(response.headers["Location"].rsplit("/", 1)[1])
    copies = db.scalars(select(Release).where(Release.id > english_id).order_by(Release.id)).all()
    assert [(r.language, r.title, r.status) for r in copies] == [
        ("fr", "Le Maroc accueille", "draft"), ("en", "Morocco welcomes", "draft")]
    head, copy = copies
    assert copy.id == copy_id and copy.group_id == head.id == head.group_id
    assert head.slug != base_slug and head.highlights == ["Réunion"] and head.external_id is None
    assert [a.filename for a in head.attachments] == ["dossier.pdf"]
    assert db.scalars(select(Blast).where(Blast.release_id.in_([head.id, copy.id]))).all() == []
    db.rollback()
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Nouvelle version créée" in page and 'name="body"' in page and ">Enregistrer<" in page


def test_releases_list_shows_each_state_and_variants_under_their_release(
        client: FlaskClient, db: Session, settings: Settings) -> None:
    """The releases list says where each release stands (draft, scheduled for a time, sending,
    sent on a date to N) and lists its language variants under it."""
    make_user(db, "chef@example.org")
    _contacts(db)
    now = utcnow()
    draft = _release(db, settings, title="Brouillon", body="a")
    scheduled = _release(db, settings, title="Programmé", body="b")
    create_blast(db, settings, release_id=scheduled.id, list_names=["presse"],
                 send_at=now + timedelta(days=2), actor="x", now=now)
    sending = _release(db, settings, title="En cours", body="c")
    create_blast(db, settings, release_id=sending.id, list_names=["presse"], actor="x", now=now)
    sent = _release(db, settings, title="Parti", body="d")
    english = create_release(db, settings, title="Gone", body="d", language="en", variant_of=sent.id,
                             actor="x", now=now)
    db.commit()
    ids = {"draft": draft.id, "scheduled": scheduled.id, "sending": sending.id, "sent": sent.id}
    english_id = english.id
    _sent(db, settings, ids["sent"])
    sign_in(client, "chef@example.org")
    page = client.get("/releases").get_data(as_text=True)

    def group(state: str) -> str:
        return page.split(f'data-testid="release-{ids[state]}"')[1].split("</tbody>")[0]

    assert 'data-state="draft"' in group("draft") and "brouillon" in group("draft")
    assert re.search(r"Programmé le \d{1,2} \w+\.? \d{4}, \d\d:\d\d", group("scheduled"))
    assert "En cours d’envoi" in group("sending")
    assert re.search(r"Envoyé le \d{1,2} \w+\.? \d{4}, \d\d:\d\d à 3 destinataires", group("sent"))
    assert f'href="/releases/{english_id}" lang="en"' in group("sent") and "Gone" in group("sent")
    assert page.count(f'href="/releases/{english_id}"') == 1  # under its release, not on its own
