"""The press officer's day in a real headless Chromium (Playwright): sign in, import a CSV, create a
release from a sample, preview it and send a test, schedule a blast, watch it finish while the
worker delivers to a real SMTP server, then unsubscribe from a received email.

The app runs in a real werkzeug server thread on a free port, with the delivery worker and the
APScheduler trigger in background threads, exactly as `communique serve` runs them. The blast is
scheduled one minute ahead in the form; instead of waiting that minute the test calls
`run_due_blasts(now=<two minutes later>)` once, which starts it (the scheduler thread then
finishes it). Screenshots of every page go to test-artifacts/."""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from smtp_server import SmtpServer, free_port
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from webutil import PASSWORD, make_user
from werkzeug.serving import make_server

from service import create_app
from service.config import Settings
from service.contacts.importing import import_contacts
from service.db import utcnow
from service.delivery.blasts import create_blast, run_due_blasts
from service.delivery.scheduler import start_scheduler
from service.delivery.worker import run_worker
from service.models import Blast, BlastStatus, Contact, ContactStatus
from service.releases.store import create_release

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CSV = ROOT / "contacts" / "presse-nationale.csv"
SAMPLE_RELEASE = Path(__file__).resolve().parent.parent / "service" / "demo" / "releases" \
    / "onmt-task-force-2022-07-06.md"

pytestmark = [pytest.mark.browser, pytest.mark.sqlite_only]


@dataclass
class Live:
    url: str
    settings: Settings
    smtpd: SmtpServer
    session_factory: sessionmaker[Session]


@pytest.fixture
def live(settings: Settings, smtpd: SmtpServer, session_factory: sessionmaker[Session]) -> Iterator[Live]:
    port = free_port()
    live_settings = dataclasses.replace(
        settings, smtp_host=smtpd.host, smtp_port=smtpd.port, base_url=f"http://127.0.0.1:{port}",
        worker_poll_seconds=0.1, scheduler_interval_seconds=1, smtp_timeout_seconds=5)
    app = create_app(live_settings)
    server = make_server("127.0.0.1", port, app, threaded=True)
    web = threading.Thread(target=server.serve_forever, name="web", daemon=True)
    web.start()
    stop = threading.Event()
    worker = threading.Thread(target=run_worker, args=(live_settings,),
                              kwargs={"stop_event": stop, "worker_id": "browser-test"}, daemon=True)
    worker.start()
    scheduler = start_scheduler(session_factory, live_settings)
    try:
        yield Live(f"http://127.0.0.1:{port}", live_settings, smtpd, session_factory)
    finally:
        stop.set()
        scheduler.shutdown(wait=False)
        server.shutdown()
        worker.join(timeout=15)
        web.join(timeout=15)
        server.server_close()
        app.extensions["communique"].engine.dispose()


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"BROWSER TESTS SKIPPED: {CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield instance
        finally:
            instance.close()


def _note_csp_violation(message: Any, errors: list[str]) -> None:
    """Pages run under a strict content security policy: anything it blocks is a test failure."""
    if "Content Security Policy" in message.text:
        errors.append(f"{message.page.url if message.page else '?'}: {message.text}")


def _shot(page: Any, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"browser-{name}.png"), full_page=True)


def test_press_officer_day_in_the_browser(live: Live, browser: Any, db: Session, artifacts: Path) -> None:
    """A press officer imports, writes, previews, tests, schedules and follows a blast; a journalist
    unsubscribes from the email they received, and the contact's status changes."""
    make_user(db, "chef@onmt.example.org")
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="fr-FR")
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    context.on("console", lambda message: _note_csp_violation(message, errors))

    # Sign in.
    page.goto(f"{live.url}/")
    assert "/login" in page.url
    page.get_by_label("Adresse e-mail").fill("chef@onmt.example.org")
    page.get_by_label("Mot de passe").fill(PASSWORD)
    _shot(page, artifacts, "01-login")
    page.get_by_role("button", name="Se connecter").click()
    page.get_by_role("heading", name="Tableau de bord").wait_for()

    # Import a CSV and read the report.
    page.goto(f"{live.url}/contacts/import")
    page.get_by_label("Fichier CSV").set_input_files(str(SAMPLE_CSV))
    page.get_by_label("Liste", exact=True).fill("presse-nationale")
    page.get_by_role("button", name="Importer").click()
    report = page.locator("section.report")
    report.wait_for()
    assert "Rapport d’import de presse-nationale.csv" in report.inner_text()
    assert "créés" in report.inner_text()
    _shot(page, artifacts, "02-import-report")
    created = db.scalars(select(Contact)).all()
    db.rollback()  # on SQLite every transaction takes the write lock: never hold one open
    assert len(created) >= 30
    page.goto(f"{live.url}/contacts?list_name=presse-nationale")
    _shot(page, artifacts, "03-contacts")

    # Create a release from a sample Markdown file.
    page.goto(f"{live.url}/releases/new")
    page.get_by_label("Fichier Markdown").set_input_files(str(SAMPLE_RELEASE))
    page.get_by_role("button", name="Importer").click()
    page.get_by_role("heading", name=re.compile("task force")).wait_for()
    page.locator("#live-preview p").first.wait_for()  # the live Markdown preview beside the editor
    _shot(page, artifacts, "04-release-editor")

    # Preview it as a contact, then send a test.
    page.get_by_role("link", name="Aperçu", exact=True).click()
    contact = db.scalars(select(Contact).where(Contact.status == ContactStatus.active)
                         .order_by(Contact.id)).first()
    assert contact is not None
    db.expunge(contact)  # keep its loaded values; rollback() would expire and reload them
    db.rollback()
    page.get_by_label("En tant que contact").select_option(str(contact.id))
    page.get_by_role("button", name="Afficher").click()
    assert "task force" in page.get_by_test_id("preview-subject").inner_text()
    checks = page.get_by_test_id("checks").inner_text()
    assert "✓ partie texte présente" in checks and "✓ lien de désinscription présent" in checks
    assert contact.email in page.locator("dl.meta").inner_text()
    page.get_by_label("Envoyer un test à (séparées par des virgules)").fill("relecture@onmt.example.org")
    _shot(page, artifacts, "05-preview")
    page.get_by_role("button", name="Envoyer le test").click()
    page.get_by_text("Test envoyé à relecture@onmt.example.org").wait_for()
    tests = live.smtpd.handler.received_by("relecture@onmt.example.org")
    assert len(tests) == 1 and tests[0].message()["Subject"].startswith("[TEST]")

    # Schedule a blast one minute ahead, in the office time zone.
    page.get_by_role("link", name="Programmer").first.click()
    page.get_by_role("heading", name="Programmer l’envoi du communiqué").wait_for()
    page.get_by_label(re.compile("presse-nationale")).check()
    count = page.locator("output.live-count")
    # (wait_for_function would evaluate a string: the content security policy forbids eval)
    page.locator("output.live-count[data-count]:not([data-count='0'])").wait_for()
    recipients = int(count.get_attribute("data-count") or 0)
    send_at = (utcnow() + timedelta(minutes=1)).astimezone(live.settings.zone)
    page.get_by_label("Envoyer le", exact=True).fill(send_at.strftime("%Y-%m-%dT%H:%M"))
    _shot(page, artifacts, "06-schedule-form")
    page.get_by_role("button", name="Continuer").click()
    assert int(page.get_by_test_id("confirm-count").inner_text().replace("\u202f", "")) == recipients
    _shot(page, artifacts, "07-schedule-confirm")
    page.get_by_role("button", name="Programmer").click()
    page.get_by_test_id("blast-status").wait_for()
    assert page.get_by_test_id("blast-status").inner_text() == "programmé"
    blast = db.scalars(select(Blast)).one()
    db.expunge(blast)
    db.rollback()
    assert blast.status == BlastStatus.scheduled

    # Advance time: the scheduler's run two minutes later starts the blast; the worker delivers.
    assert run_due_blasts(live.session_factory, live.settings,
                          now=utcnow() + timedelta(minutes=2)) == [blast.id]
    page.get_by_test_id("blast-status").filter(has_text="terminé").wait_for(timeout=60_000)
    assert page.get_by_test_id("count-sent").inner_text() == str(recipients)
    _shot(page, artifacts, "08-blast-finished")
    received = {r.lower() for m in live.smtpd.messages for r in m.rcpt_tos} - {"relecture@onmt.example.org"}
    assert len(received) == recipients
    page.goto(f"{live.url}/")
    _shot(page, artifacts, "09-dashboard")

    # The journalist unsubscribes through the link in the email they received.
    message = live.smtpd.handler.received_by(contact.email)[0].message()
    text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    link = re.search(re.escape(live.url) + r"/u/[^\s>\]\)]+", text)
    assert link, "no unsubscribe link in the text part"
    journalist = browser.new_context(locale="fr-FR").new_page()
    journalist.on("console", lambda message: _note_csp_violation(message, errors))
    journalist.goto(link.group(0))
    _shot(journalist, artifacts, "10-unsubscribe")
    journalist.get_by_role("button", name="Me désabonner").click()
    journalist.locator(".notice").wait_for()
    _shot(journalist, artifacts, "11-unsubscribed")
    db.expire_all()
    assert db.get(Contact, contact.id).status == ContactStatus.unsubscribed  # type: ignore[union-attr]
    db.rollback()
    page.goto(f"{live.url}/contacts/{contact.id}")
    assert "désinscrit" in page.locator("h1").inner_text()

    # Deleting a contact asks first; dismissing the dialog keeps the contact.
    dialogs: list[str] = []

    def dismiss(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.get_by_role("button", name="Supprimer ce contact").click()
    page.wait_for_timeout(200)
    assert dialogs == ["Supprimer ce contact ? C’est définitif."], dialogs
    assert db.get(Contact, contact.id) is not None
    db.rollback()

    # Every page at 360 px wide: no sideways scrolling; a screenshot of each.
    mobile = context.new_page()
    mobile.set_viewport_size({"width": 360, "height": 780})
    release_id = blast.release_id
    for name, path in (("dashboard", "/"), ("contacts", "/contacts"), ("contact", f"/contacts/{contact.id}"),
                       ("import", "/contacts/import"), ("releases", "/releases"),
                       ("release", f"/releases/{release_id}"), ("preview", f"/releases/{release_id}/preview"),
                       ("schedule", f"/releases/{release_id}/schedule"), ("blasts", "/blasts"),
                       ("blast", f"/blasts/{blast.id}")):
        mobile.goto(f"{live.url}{path}")
        _shot(mobile, artifacts, f"12-mobile-{name}")
        width = mobile.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"{path} scrolls sideways at 360 px ({width} px)"
    # Chromium paints an iframe only once it is scrolled into view: shoot the email at 360 px there.
    mobile.goto(f"{live.url}/releases/{release_id}/preview")
    mobile.locator(".frame-mobile iframe").scroll_into_view_if_needed()
    mobile.screenshot(path=str(artifacts / "browser-12-mobile-preview-email.png"))
    mobile.keyboard.press("Tab")  # the skip link, then the first field: focus must be visible
    mobile.keyboard.press("Tab")
    outline = mobile.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", outline
    assert not errors, errors
    context.close()


def test_sent_release_is_read_only_with_a_new_version_button(live: Live, browser: Any, db: Session,
                                                             artifacts: Path) -> None:
    """A release whose blast went out opens read-only with its send history and a "new version"
    button that opens an editable copy; the releases list shows each release's state."""
    make_user(db, "chef@onmt.example.org")
    now = utcnow()
    import_contacts(db, SAMPLE_CSV.read_bytes(), list_name="presse-nationale", now=now)
    release = create_release(db, live.settings, body=SAMPLE_RELEASE.read_text(), actor="x", now=now)
    later = create_release(db, live.settings, title="Tournée régionale", body="Bientôt.", actor="x", now=now)
    create_blast(db, live.settings, release_id=later.id, list_names=["presse-nationale"],
                 send_at=now + timedelta(days=1), actor="x", now=now)
    blast = create_blast(db, live.settings, release_id=release.id, list_names=["presse-nationale"],
                         actor="x", now=now)  # starts now: the worker delivers it
    db.commit()
    release_id, blast_id, recipients, later_id = release.id, blast.id, blast.recipient_count, later.id
    db.rollback()  # on SQLite every transaction takes the write lock: never hold one open
    for _ in range(300):
        status = db.scalar(select(Blast.status).where(Blast.id == blast_id))
        db.rollback()
        if status == BlastStatus.finished:
            break
        threading.Event().wait(0.1)
    assert status == BlastStatus.finished

    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="fr-FR")
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live.url}/login")
    page.get_by_label("Adresse e-mail").fill("chef@onmt.example.org")
    page.get_by_label("Mot de passe").fill(PASSWORD)
    page.get_by_role("button", name="Se connecter").click()
    page.get_by_role("heading", name="Tableau de bord").wait_for()

    page.goto(f"{live.url}/releases/{release_id}")
    assert "ne peut plus être modifié" in page.get_by_test_id("read-only").inner_text()
    assert page.locator("textarea, button:has-text('Enregistrer')").count() == 0
    history = page.get_by_test_id("send-history")
    assert f"#{blast_id}" in history.inner_text() and "terminé" in history.inner_text()
    _shot(page, artifacts, "20-sent-release")

    page.goto(f"{live.url}/releases")
    sent_row = page.get_by_test_id(f"release-{release_id}")
    assert re.search(rf"Envoyé le .+ à {recipients} destinataires", sent_row.inner_text())
    assert "Programmé le" in page.get_by_test_id(f"release-{later_id}").inner_text()
    _shot(page, artifacts, "21-releases-states")

    page.goto(f"{live.url}/releases/{release_id}")
    page.get_by_role("button", name="Nouvelle version").click()
    page.get_by_text("Nouvelle version créée").wait_for()
    assert page.url != f"{live.url}/releases/{release_id}"
    page.get_by_label("Points forts (un par ligne)").wait_for()
    assert "Réunion à Casablanca" in page.get_by_label("Points forts (un par ligne)").input_value()
    page.locator("#live-preview .preview-highlights li").first.wait_for()
    page.get_by_role("button", name="Enregistrer", exact=True).wait_for()
    _shot(page, artifacts, "22-new-version")
    page.goto(f"{live.url}/releases")
    assert page.locator("tbody[data-state=draft]").count() >= 1
    assert not errors, errors
    context.close()
