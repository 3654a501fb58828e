"""Send safety in the web interface: the confirmation says who already received the release, a send
time in the past or "send now" with a date is a form error, "send now" can be undone during its
countdown, and test sends respect the do-not-contact list, a per-user cap and approval."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import SAMPLES
from sqlalchemy import select
from test_blasts import add_list
from test_browser import browser, live  # noqa: F401  (fixtures)
from webutil import PASSWORD, csrf_token, make_user, sign_in

from service import create_app
from service.delivery import blasts
from service.delivery.worker import run_worker
from service.models import Blast, BlastStatus, Role, Suppression
from service.releases.store import create_release

TASK_FORCE = SAMPLES / "onmt-task-force-2022-07-06.md"


def _release(db, settings):  # type: ignore[no-untyped-def]
    release = create_release(db, settings, body=TASK_FORCE.read_text(encoding="utf-8"),
                             now=datetime.now(UTC))
    db.commit()
    return release


def _schedule(client, release_id: int, **fields: Any):  # type: ignore[no-untyped-def]
    data = {"lists": "presse", "csrf_token": csrf_token(client, f"/releases/{release_id}/schedule"),
            **fields}
    return client.post(f"/releases/{release_id}/schedule", data=data)


def test_confirmation_names_who_already_received_it_and_includes_them_only_if_asked(  # type: ignore[no-untyped-def]
        client, db, smtp_settings, smtpd) -> None:
    """After 3 journalists got the release, the confirmation for the same list (now 5) shows 2
    recipients and "3 … — écartés" with a checkbox; confirmed as is, only the 2 newcomers are
    queued; ticked, all 5 would be."""
    release = _release(db, smtp_settings)
    add_list(db, "presse", 3)
    blasts.create_blast(db, smtp_settings, release_id=release.id, list_names=["presse"],
                        now=datetime.now(UTC))
    db.commit()
    run_worker(smtp_settings, until_idle=True, include_due=False)
    add_list(db, "presse", 2, start=3)
    make_user(db, "chef@onmt.example.org")
    sign_in(client, "chef@onmt.example.org")
    later = (datetime.now(smtp_settings.zone) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")

    page = _schedule(client, release.id, send_at=later).get_data(as_text=True)
    assert 'data-testid="confirm-count">2<' in page
    assert "3 ont déjà reçu ce communiqué le" in page and "écartés" in page
    assert "Les inclure quand même (5 destinataires en tout)" in page
    included = _schedule(client, release.id, send_at=later, include_already_sent="y")
    assert 'data-testid="confirm-count">5<' in included.get_data(as_text=True)

    done = _schedule(client, release.id, send_at=later, confirmed="yes")
    assert done.status_code == 303
    blast = db.scalars(select(Blast).order_by(Blast.id.desc())).first()
    assert (blast.recipient_count, blast.already_sent_count, blast.include_already_sent) == (2, 3, False)
    db.commit()


def test_past_time_and_now_with_a_date_are_form_errors(client, db, settings) -> None:  # type: ignore[no-untyped-def]
    """10:00 yesterday is refused on the field, in French; "send now" with a date too; nothing is
    created."""
    release = _release(db, settings)
    add_list(db, "presse", 2)
    make_user(db, "chef@onmt.example.org")
    sign_in(client, "chef@onmt.example.org")
    yesterday = (datetime.now(settings.zone) - timedelta(days=1)).replace(hour=10, minute=0)
    past = _schedule(client, release.id, send_at=yesterday.strftime("%Y-%m-%dT%H:%M"))
    assert past.status_code == 400
    assert "est dans le passé" in past.get_data(as_text=True)
    both = _schedule(client, release.id, send_at=(yesterday + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M"),
                     send_now="y")
    assert both.status_code == 400
    assert "pas les deux" in both.get_data(as_text=True)
    assert db.scalars(select(Blast)).first() is None
    db.commit()


def test_send_now_waits_for_its_undo_window_and_undo_returns_a_draft(client, db, settings,  # type: ignore[no-untyped-def]
                                                                     session_factory) -> None:
    """"Send now" from the web schedules the blast COMMUNIQUE_UNDO_SECONDS ahead; Undo during the
    countdown makes it a draft that the scheduler never starts; with the setting at 0 it starts at
    once."""
    release = _release(db, settings)
    add_list(db, "presse", 2)
    make_user(db, "chef@onmt.example.org")
    sign_in(client, "chef@onmt.example.org")
    before = datetime.now(UTC)
    response = _schedule(client, release.id, send_now="y", confirmed="yes")
    assert response.status_code == 303
    blast = db.scalars(select(Blast)).one()
    assert blast.status == BlastStatus.scheduled
    assert blast.send_at >= before + timedelta(seconds=settings.undo_seconds - 1)
    db.commit()
    page = client.get(f"/blasts/{blast.id}").get_data(as_text=True)
    assert 'data-testid="undo"' in page and "Défaire : revenir au brouillon" in page
    token = {"csrf_token": csrf_token(client, f"/blasts/{blast.id}")}
    undo = client.post(f"/blasts/{blast.id}/undo", data=token)
    assert undo.status_code == 303
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert blasts.run_due_blasts(session_factory, settings, now=later) == []
    db.expire_all()
    assert db.get(Blast, blast.id).status == BlastStatus.draft
    assert [e.action for e in db.get(Blast, blast.id).events][-1] == "undone"
    db.commit()
    late = client.post(f"/blasts/{blast.id}/undo", data=token)
    assert late.status_code in (303, 409)  # a draft cannot be undone again: a flashed conflict


def test_without_an_undo_window_send_now_starts_at_once(db, settings) -> None:  # type: ignore[no-untyped-def]
    """COMMUNIQUE_UNDO_SECONDS=0: the web "send now" starts the blast at once."""
    release = _release(db, settings)
    add_list(db, "presse", 1)
    make_user(db, "chef@onmt.example.org")
    app = create_app(dataclasses.replace(settings, undo_seconds=0))
    try:
        immediate = app.test_client()
        sign_in(immediate, "chef@onmt.example.org")
        assert _schedule(immediate, release.id, send_now="y", confirmed="yes").status_code == 303
        assert db.scalars(select(Blast)).one().status == BlastStatus.running
        db.commit()
    finally:
        app.extensions["communique"].engine.dispose()


def test_test_sends_skip_suppressed_addresses_and_are_capped(client, db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """A test to a suppressed address is not sent (and said so); a user's tests are capped per hour;
    with approval required an editor may test only to this installation's accounts."""
    settings = dataclasses.replace(smtp_settings, test_sends_per_hour=3)
    release = _release(db, settings)
    db.add(Suppression(email_key="blocked@example.org", reason="asked by phone"))
    db.commit()
    now = datetime.now(UTC)
    results = blasts.send_test(db, settings, release.id, ["ok@example.org", "blocked@example.org"],
                               now=now, actor="chef@x.org", actor_role=Role.admin)
    db.commit()
    assert [r["outcome"] for r in results] == ["sent", "suppressed"]
    assert set(smtpd.handler.recipient_counts()) == {"ok@example.org"}
    with pytest.raises(blasts.ValidationError, match="at most 3 test addresses an hour; 1 left"):
        blasts.send_test(db, settings, release.id, ["a@example.org", "b@example.org"], now=now,
                         actor="chef@x.org", actor_role=Role.admin)
    db.rollback()

    strict = dataclasses.replace(settings, require_approval=True)
    make_user(db, "redaction@onmt.example.org", role=Role.editor)
    with pytest.raises(blasts.ValidationError, match="only to the addresses of this installation"):
        blasts.send_test(db, strict, release.id, ["journaliste@lemonde.example"], now=now,
                         actor="redaction@onmt.example.org", actor_role=Role.editor)
    db.rollback()
    blasts.send_test(db, strict, release.id, ["redaction@onmt.example.org"], now=now,
                     actor="redaction@onmt.example.org", actor_role=Role.editor)
    db.commit()
    assert "redaction@onmt.example.org" in smtpd.handler.recipient_counts()


@pytest.mark.browser
@pytest.mark.sqlite_only
def test_confirmation_and_undo_countdown_in_the_browser(live, browser, db, artifacts) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """In Chromium: the confirmation for a release 2 journalists already got says so; "Envoyer
    maintenant" shows a countdown with an Undo button; Undo makes it a draft and nobody gets it."""
    release = _release(db, live.settings)
    add_list(db, "presse", 2)
    first = blasts.create_blast(db, live.settings, release_id=release.id, list_names=["presse"],
                                now=datetime.now(UTC))
    db.commit()
    deadline = time.monotonic() + 60
    while db.get(Blast, first.id).status != BlastStatus.finished and time.monotonic() < deadline:
        db.commit()
        db.expire_all()
        time.sleep(0.2)
    db.commit()
    add_list(db, "presse", 1, start=2)
    make_user(db, "chef@onmt.example.org")
    release_id = release.id
    db.close()  # on SQLite an open transaction holds the write lock: the app needs it
    received_before = len(live.smtpd.messages)

    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="fr-FR")
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto(f"{live.url}/login")
    page.get_by_label("Adresse e-mail").fill("chef@onmt.example.org")
    page.get_by_label("Mot de passe").fill(PASSWORD)
    page.get_by_role("button", name="Se connecter").click()
    page.get_by_role("heading", name="Tableau de bord").wait_for()
    page.goto(f"{live.url}/releases/{release_id}/schedule")
    page.get_by_label("presse (3)").check()
    page.get_by_label("Envoyer maintenant").check()
    page.get_by_role("button", name="Continuer").click()
    assert page.get_by_test_id("confirm-count").inner_text() == "1"
    assert "2 ont déjà reçu ce communiqué le" in page.get_by_test_id("already-sent").inner_text()
    page.screenshot(path=str(artifacts / "browser-send-safety-confirm.png"), full_page=True)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Envoyer maintenant").click()
    page.get_by_test_id("undo").wait_for()
    seconds = int(page.locator("[data-countdown]").inner_text())
    assert 0 < seconds <= live.settings.undo_seconds
    page.screenshot(path=str(artifacts / "browser-send-safety-undo.png"), full_page=True)
    page.get_by_test_id("undo").get_by_role("button").click()
    page.get_by_test_id("blast-status").filter(has_text="brouillon").wait_for()
    assert len(live.smtpd.messages) == received_before
    context.close()
