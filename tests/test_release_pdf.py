"""The release as a PDF: French and Arabic print layouts, /r/<slug>.pdf under the web copy's
embargo rule, the per-blast attachment rendered once per language variant, CLI and API options."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import SAMPLES
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from test_blasts import add_list
from webutil import csrf_token, make_user, sign_in

from service.accounts.api_keys import create_api_key
from service.config import Settings
from service.db import utcnow
from service.delivery import blasts
from service.delivery.worker import run_worker
from service.models import Blast, BlastStatus, Release
from service.releases import store as releases
from service.rendering.pdf import pdf_path, release_pdf
from service.rendering.prepare import prepare_release, release_context

NOW = datetime(2022, 7, 5, 8, 0, tzinfo=UTC)
TASK_FORCE = SAMPLES / "onmt-task-force-2022-07-06.md"
ARABIC_TITLE = "المكتب الوطني المغربي للسياحة يعبئ فريق عمله عبر العالم"
ARABIC_BODY = ("**الدار البيضاء، 6 يوليوز 2022** – يجتمع مندوبو المكتب الوطني المغربي للسياحة في "
               "الدار البيضاء لوضع خطة عمل ترويجية وتجارية للمواسم المقبلة.\n\n"
               "ستنطلق حملات ترويجية في الأسواق الرئيسية بشراكة مع شركات الطيران ووكالات الأسفار.")
POPPLER = shutil.which("pdftoppm") and shutil.which("pdftotext")
needs_poppler = pytest.mark.skipif(not POPPLER, reason="poppler-utils missing: run scripts/setup-system")
BIDI_AND_SPACE = re.compile(r"[\s\u200e\u200f\u202a-\u202e\u2066-\u2069]+")


def _french_and_arabic(db: Session, settings: Settings, *, now: datetime = NOW,
                       embargo_until: datetime | None = None) -> tuple[Release, Release]:
    french = releases.create_release(db, settings, body=TASK_FORCE.read_text(encoding="utf-8"),
                                     now=now, embargo_until=embargo_until)
    arabic = releases.create_release(
        db, settings, title=ARABIC_TITLE, body=ARABIC_BODY, language="ar",
        highlights=["اجتماع جميع المندوبين بالخارج"], variant_of=french.id, now=now,
        press_contacts=[{"organisation": "المكتب الوطني المغربي للسياحة", "name": "سلمى العلوي",
                         "email": "presse@onmt.example.org", "phone": "+212 5 37 00 00 00"}])
    db.commit()
    return french, arabic


def _pdf_of(release: Release, settings: Settings, now: datetime | None) -> bytes:
    return release_pdf(release, settings, release_context(release, settings, now=now), now=now)


def _text(data: bytes, tmp_path: Path) -> str:
    source = tmp_path / "text.pdf"
    source.write_bytes(data)
    return subprocess.run(["pdftotext", "-enc", "UTF-8", str(source), "-"], check=True,
                          capture_output=True, text=True).stdout


def _title_box(data: bytes, tmp_path: Path, word: str) -> tuple[float, float, float]:
    """(xMin, xMax, page width) of the first occurrence of `word` on page 1 (the title's first
    word: the kicker above it has other words)."""
    source = tmp_path / "box.pdf"
    source.write_bytes(data)
    page = subprocess.run(["pdftotext", "-bbox", "-f", "1", "-l", "1", str(source), "-"], check=True,
                          capture_output=True, text=True).stdout
    width = float(re.search(r'<page width="([\d.]+)"', page).group(1))  # type: ignore[union-attr]
    for x_min, x_max, text in re.findall(r'<word xMin="([\d.]+)" yMin="[\d.]+" xMax="([\d.]+)" '
                                         r'yMax="[\d.]+">([^<]*)</word>', page):
        # -bbox gives each word's glyphs in visual order: an Arabic word comes out reversed
        if BIDI_AND_SPACE.sub("", html.unescape(text)) in (word, word[::-1]):
            return float(x_min), float(x_max), width
    raise AssertionError(f"{word!r} not on page 1")


@needs_poppler
def test_french_and_arabic_release_print_as_pdf(db: Session, settings: Settings, artifacts: Path,
                                                tmp_path: Path) -> None:
    """The French sample and its Arabic variant become PDFs with their titles as text; the French
    title starts at the left margin, the Arabic one at the right (right to left) with its phone
    number still left to right; both are kept as PNGs in test-artifacts/ to look at."""
    french, arabic = _french_and_arabic(db, settings)
    after = datetime(2030, 1, 1, tzinfo=UTC)
    for release in (french, arabic):
        data = _pdf_of(release, settings, after)
        assert data.startswith(b"%PDF-")
        text = _text(data, tmp_path)
        assert BIDI_AND_SPACE.sub("", release.title) in BIDI_AND_SPACE.sub("", text)
        assert "presse@onmt.example.org" in text or release.language == "fr"
        pdf_file = artifacts / f"release-pdf-{release.language}.pdf"
        pdf_file.write_bytes(data)
        for old in artifacts.glob(f"release-pdf-{release.language}-*.png"):
            old.unlink()
        subprocess.run(["pdftoppm", "-r", "80", "-png", str(pdf_file),
                        str(artifacts / f"release-pdf-{release.language}")], check=True)
        assert (artifacts / f"release-pdf-{release.language}-1.png").stat().st_size > 10_000
    x_min, _x_max, width = _title_box(_pdf_of(french, settings, after), tmp_path, "L'ONMT")
    assert x_min < width * 0.15
    arabic_pdf = _pdf_of(arabic, settings, after)
    _x_min, x_max, width = _title_box(arabic_pdf, tmp_path, "المكتب")
    assert x_max > width * 0.85
    # the press contact's phone number still reads left to right on the Arabic page
    assert _title_box(arabic_pdf, tmp_path, "+212")[0] < _title_box(arabic_pdf, tmp_path, "37")[0]


def test_public_pdf_hidden_before_the_blast_and_during_the_embargo(client: FlaskClient, db: Session,
                                                                   settings: Settings) -> None:
    """/r/<slug>.pdf is 404 for a release not yet sent and while its embargo runs, and a PDF
    (application/pdf) once sending started and the embargo lifted; the web copy agrees."""
    now = utcnow()
    french, arabic = _french_and_arabic(db, settings, now=now, embargo_until=now + timedelta(hours=1))
    for release in (french, arabic):
        assert client.get(f"/r/{release.slug}.pdf").status_code == 404
    db.add(Blast(release_id=french.id, status=BlastStatus.running, send_at=now, started_at=now))
    db.commit()
    for release in (french, arabic):
        assert client.get(f"/r/{release.slug}.pdf").status_code == 404
        assert client.get(f"/r/{release.slug}").status_code == 404
    db.execute(update(Release).values(embargo_until=now - timedelta(seconds=1)))
    db.commit()
    for release in (french, arabic):
        response = client.get(f"/r/{release.slug}.pdf")
        assert response.status_code == 200 and response.mimetype == "application/pdf"
        assert response.data.startswith(b"%PDF-")
        assert f'filename="{release.slug}.pdf"' in response.headers["Content-Disposition"]
    assert client.get("/r/no-such-release.pdf").status_code == 404


@needs_poppler
def test_public_pdf_after_the_embargo_has_no_embargo_notice(client: FlaskClient, db: Session,
                                                            settings: Settings, tmp_path: Path) -> None:
    """The PDF attached under embargo says EMBARGO; the public one, once lifted, is another file
    without the notice (the cache keeps the two apart)."""
    now = utcnow()
    french, _arabic = _french_and_arabic(db, settings, now=now, embargo_until=now + timedelta(hours=1))
    embargoed = _pdf_of(french, settings, None)
    assert "EMBARGO" in _text(embargoed, tmp_path)
    db.add(Blast(release_id=french.id, status=BlastStatus.running, send_at=now, started_at=now))
    db.execute(update(Release).values(embargo_until=now - timedelta(seconds=1)))
    db.commit()
    public = client.get(f"/r/{french.slug}.pdf")
    assert public.status_code == 200 and "EMBARGO" not in _text(public.data, tmp_path)


def test_blast_with_attach_pdf_sends_each_language_its_pdf_rendered_once(
        db: Session, smtp_settings: Settings, smtpd, session_factory) -> None:  # type: ignore[no-untyped-def]
    """A blast with attach_pdf: every message carries its variant's PDF (French to French
    contacts, Arabic to Arabic ones), the same bytes as the one file per variant in the cache,
    rendered once for all recipients; a blast without it attaches nothing."""
    add_list(db, "presse", 6, language="fr")
    add_list(db, "presse", 4, start=100, language="ar")
    french, arabic = _french_and_arabic(db, smtp_settings, now=utcnow())
    blast = blasts.create_blast(db, smtp_settings, release_id=french.id, list_names=["presse"],
                                now=utcnow(), attach_pdf=True)
    db.commit()
    assert blast.attach_pdf and blast.status == BlastStatus.running
    run_worker(smtp_settings, until_idle=True, include_due=False)

    cached = sorted((Path(smtp_settings.instance_path) / "pdf").glob("*.pdf"))
    assert len(cached) == 2  # one per language variant, not one per recipient
    mtimes = [path.stat().st_mtime_ns for path in cached]
    expected = {"fr": (french, pdf_path(french, smtp_settings, now=None).read_bytes()),
                "ar": (arabic, pdf_path(arabic, smtp_settings, now=None).read_bytes())}
    received = smtpd.handler.recipient_counts()
    assert len(received) == 10 and set(received.values()) == {1}
    for address in received:
        message = smtpd.handler.received_by(address)[0].message()
        language = "ar" if address.startswith("j1") and len(address.split("@")[0]) == 4 else "fr"
        release, data = expected[language]
        attachments = list(message.iter_attachments())
        assert [(a.get_content_type(), a.get_filename()) for a in attachments] == [
            ("application/pdf", f"{release.slug}.pdf")]
        assert attachments[0].get_content() == data
    prepare_release(db, french.id, smtp_settings, attach_pdf=True)  # another blast of it: from the cache
    assert [path.stat().st_mtime_ns for path in cached] == mtimes

    add_list(db, "autres", 2, start=200)
    plain = releases.create_release(db, smtp_settings, title="Sans pièce jointe", body="Texte.",
                                    now=utcnow())
    db.commit()
    other = blasts.create_blast(db, smtp_settings, release_id=plain.id, list_names=["autres"],
                                now=utcnow())
    db.commit()
    assert not other.attach_pdf
    run_worker(smtp_settings, until_idle=True, include_due=False)
    for address in ("j200@example.net", "j201@example.net"):
        message = smtpd.handler.received_by(address)[0].message()
        assert list(message.iter_attachments()) == []


def test_cli_and_api_ask_for_the_pdf_attachment(db: Session, runner, client: FlaskClient) -> None:  # type: ignore[no-untyped-def]
    """`blasts create --attach-pdf` and `"attach_pdf": true` set the blast's option; the API
    shows it, false by default."""
    from service.cli import main

    add_list(db, "presse", 2)
    release = releases.create_release(db, Settings(), title="Communiqué", body="Texte.", now=NOW)
    db.commit()
    created = runner.invoke(main, ["blasts", "create", "--release", str(release.id), "--list", "presse",
                                   "--at", "2031-01-01T09:00", "--attach-pdf", "--json"])
    assert created.exit_code == 0, created.output
    assert json.loads(created.output)["attach_pdf"] is True
    _key, token = create_api_key(db, "tests", now=NOW, scopes=["read", "write", "send"])
    db.commit()
    auth = {"Authorization": f"Bearer {token}"}
    with_pdf = client.post("/api/v1/blasts", headers=auth, json={
        "release_id": release.id, "lists": ["presse"], "send_at": "2031-01-02T09:00:00+00:00",
        "attach_pdf": True, "include_already_sent": True})
    assert with_pdf.status_code == 201, with_pdf.json
    assert with_pdf.json is not None and with_pdf.json["attach_pdf"] is True
    without = client.post("/api/v1/blasts", headers=auth, json={
        "release_id": release.id, "lists": ["presse"], "send_at": "2031-01-03T09:00:00+00:00",
        "include_already_sent": True})
    assert without.status_code == 201 and without.json is not None
    assert without.json["attach_pdf"] is False


def test_schedule_form_has_the_pdf_checkbox_in_french(client: FlaskClient, db: Session,
                                                      settings: Settings) -> None:
    """The schedule form offers "Joindre le communiqué en PDF"; ticked, the confirmation says so
    and carries it to the blast."""
    make_user(db, "chef@example.org")
    add_list(db, "presse", 2)
    release = releases.create_release(db, settings, title="Titre", body="Bonjour", now=utcnow())
    db.commit()
    sign_in(client, "chef@example.org")
    path = f"/releases/{release.id}/schedule"
    page = client.get(path).get_data(as_text=True)
    assert 'name="attach_pdf"' in page and "Joindre le communiqué en PDF" in page
    form = {"lists": "presse", "send_at": "2031-03-04T10:30", "attach_pdf": "y",
            "csrf_token": csrf_token(client, path)}
    confirm = client.post(path, data=form).get_data(as_text=True)
    assert "Le communiqué en PDF" in confirm
    assert '<input type="hidden" name="attach_pdf" value="y">' in confirm
    assert client.post(path, data={**form, "confirmed": "yes"}).status_code == 303
    attach_pdf = db.scalars(select(Blast.attach_pdf)).one()
    db.rollback()
    assert attach_pdf is True
