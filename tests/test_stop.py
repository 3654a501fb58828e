"""Stop means stop: a pause or cancel reaches every worker within a second at any send rate; no
SMTP transaction of the blast starts once the worker has seen it, claimed rows go back to
`queued` (pause) or are `cancelled` (cancel), and what the relay received is what the ledger says."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from test_blasts import add_list, add_release, ledger

from service.config import Settings
from service.delivery import blasts
from service.delivery.worker import run_worker
from service.models import Blast, MessageStatus, QueuedMessage


def now() -> datetime:
    return datetime.now(UTC)


def start(db: Session, settings: Settings, count: int) -> Blast:
    add_list(db, "presse", count)
    release = add_release(db)
    blast = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"], now=now())
    db.commit()
    return blast


@contextmanager
def worker(settings: Settings) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(settings,),
                              kwargs={"stop_event": stop, "include_due": False})
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive()


def wait_for(predicate: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def wait_quiet(count: Callable[[], int], quiet_seconds: float, limit_seconds: float = 30) -> int:
    """Wait until `count()` has not changed for `quiet_seconds`; its value then."""
    deadline = time.monotonic() + limit_seconds
    last, since = count(), time.monotonic()
    while time.monotonic() - since < quiet_seconds:
        assert time.monotonic() < deadline, "never settled"
        time.sleep(0.05)
        if (current := count()) != last:
            last, since = current, time.monotonic()
    return last


def rows_by_status(db: Session, blast_id: int) -> dict[str, set[str]]:
    db.expire_all()
    rows: dict[str, set[str]] = {}
    for email, status in db.execute(select(QueuedMessage.email, QueuedMessage.status)
                                    .where(QueuedMessage.blast_id == blast_id)):
        rows.setdefault(status, set()).add(email.lower())
    db.commit()
    return rows


def test_pause_at_a_low_rate_stops_within_a_second_and_resume_sends_each_once(
        db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """At 2 messages a second over 8 connections (each sender holding a rate slot up to 4 s
    ahead), a pause lets at most a second's worth of transactions start; once the claimed rows are
    back in `queued` none starts; resume sends the rest, each recipient exactly once."""
    settings = dataclasses.replace(smtp_settings, send_rate=2, smtp_connections=8)
    blast = start(db, settings, 20)
    handler = smtpd.handler
    with worker(settings):
        wait_for(lambda: len(smtpd.messages) >= 3, 30)
        blasts.pause_blast(db, blast.id, actor="amal", now=now())
        db.commit()
        started_at_pause = handler.mail_count
        wait_for(lambda: ledger(db, blast.id)["sending"] == 0, 10)  # the worker put its claims back
        started_when_seen = handler.mail_count
        time.sleep(2.5)  # the old worker sent 4 more in this time at this rate
        assert handler.mail_count == started_when_seen
        # The rate allows one every 0.5 s: a second's worth, and one that had just passed the check.
        assert started_when_seen - started_at_pause <= 3
        counts = ledger(db, blast.id)
        assert counts["sent"] == len(smtpd.messages) < 20
        assert counts["queued"] == 20 - counts["sent"] and counts["cancelled"] == 0

        blasts.resume_blast(db, blast.id, actor="amal", now=now())
        db.commit()
        wait_for(lambda: ledger(db, blast.id)["sent"] == 20, 60)
    assert sorted(handler.recipient_counts().values()) == [1] * 20


def test_cancel_against_a_slow_relay_cancels_the_unsent_and_stops(
        db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """A relay taking a second to accept each message: after cancel the blast has no row queued or
    sending, the unsent rows are `cancelled`, the messages already past DATA finish and are
    recorded `sent`, and the relay receives nothing more."""
    settings = dataclasses.replace(smtp_settings, smtp_connections=4)
    handler = smtpd.handler
    handler.delay_seconds = 1.0
    blast = start(db, settings, 40)
    with worker(settings):
        wait_for(lambda: len(smtpd.messages) >= 4, 30)
        blasts.cancel_blast(db, blast.id, actor="amal", now=now())
        db.commit()
        received_at_cancel, started_at_cancel = len(smtpd.messages), handler.mail_count
        wait_for(lambda: (lambda c: c["queued"] == 0 and c["sending"] == 0)(ledger(db, blast.id)), 2)
        received = wait_quiet(lambda: len(smtpd.messages), quiet_seconds=2.5)
        # In flight at the cancel (one per connection), and at most one more per connection
        # started before the worker saw it (a send takes a second, the worker looks every 0.5 s).
        assert received - received_at_cancel <= 2 * settings.smtp_connections
        assert handler.mail_count - started_at_cancel <= settings.smtp_connections
        rows = rows_by_status(db, blast.id)
        counts = ledger(db, blast.id)
    assert handler.mail_count == wait_quiet(lambda: handler.mail_count, quiet_seconds=0.5)
    assert len(smtpd.messages) == received
    assert set(rows) == {MessageStatus.sent, MessageStatus.cancelled}
    assert rows[MessageStatus.sent] == set(handler.recipient_counts())
    assert sorted(handler.recipient_counts().values()) == [1] * received
    assert counts["sent"] == received and counts["cancelled"] == 40 - received
    assert counts["queued"] == counts["sending"] == counts["deferred"] == 0


def test_cancel_with_chained_envelopes_delivers_exactly_what_the_ledger_says(
        db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """With pipelining, each message's successor has its envelope written behind its content.
    Cancelling mid-blast drops those open envelopes: every message the relay accepted is `sent`
    once, every other row is `cancelled`."""
    settings = dataclasses.replace(smtp_settings, smtp_connections=4, batch_size=50)
    handler = smtpd.handler
    handler.pipelining = True
    handler.delay_seconds = 0.02
    blast = start(db, settings, 400)
    with worker(settings):
        wait_for(lambda: len(smtpd.messages) >= 60, 30)
        blasts.cancel_blast(db, blast.id, actor="amal", now=now())
        db.commit()
        wait_for(lambda: (lambda c: c["queued"] == 0 and c["sending"] == 0)(ledger(db, blast.id)), 2)
        received = wait_quiet(lambda: len(smtpd.messages), quiet_seconds=1.0)
    rows = rows_by_status(db, blast.id)
    assert handler.chained_count > 0
    assert received < 400 and len(smtpd.messages) == received
    assert rows[MessageStatus.sent] == set(handler.recipient_counts())
    assert sorted(handler.recipient_counts().values()) == [1] * received
    assert set(rows) == {MessageStatus.sent, MessageStatus.cancelled}
    assert len(rows[MessageStatus.cancelled]) == 400 - received


def test_show_json_counts_cancelled(db: Session, runner) -> None:  # type: ignore[no-untyped-def]
    """`blasts show --json` counts the cancelled rows; a cancelled blast has none queued."""
    from service.cli import main

    add_list(db, "presse", 3)
    release = add_release(db)
    created = json.loads(runner.invoke(main, ["blasts", "create", "--release", str(release.id),
                                              "--list", "presse", "--json"]).output)
    assert "cancelled" in runner.invoke(main, ["blasts", "cancel", str(created["id"])]).output
    shown = json.loads(runner.invoke(main, ["blasts", "show", str(created["id"]), "--json"]).output)
    assert shown["status"] == "cancelled"
    assert shown["counts"]["cancelled"] == 3 and shown["counts"]["queued"] == 0
    assert shown["counts"]["sending"] == 0


def test_results_of_messages_in_flight_at_cancel_are_recorded_but_never_retried(
        db: Session, settings: Settings) -> None:
    """Rows a worker holds when the blast is cancelled are `cancelled` at once; its results then
    win (a sent message is `sent`), except a temporary refusal: nothing retries a cancelled row."""
    from service.delivery.queue import Attempt, claim_due_messages, record_attempts, release_claims
    from service.models import DeliveryOutcome

    blast = start(db, settings, 3)
    claimed = claim_due_messages(db, worker_id="w", now=now(), limit=3, blast_ids=[blast.id])
    db.commit()
    blasts.cancel_blast(db, blast.id, actor="amal", now=now())
    db.commit()
    assert ledger(db, blast.id)["cancelled"] == 3
    sent, deferred, unstarted = claimed
    record_attempts(db, settings, [
        Attempt(job.id, blast.id, job.contact_id, 1, outcome, code, "reply", None, 0.1, now())
        for job, outcome, code in ((sent, DeliveryOutcome.sent, 250),
                                   (deferred, DeliveryOutcome.deferred, 451))])
    release_claims(db, [unstarted.id])
    db.commit()
    counts = ledger(db, blast.id)
    assert counts["sent"] == 1 and counts["cancelled"] == 2
    assert counts["queued"] == counts["sending"] == counts["deferred"] == 0
    db.expire_all()
    assert db.get(QueuedMessage, deferred.id).next_attempt_at is None  # type: ignore[union-attr]
