"""The worker against a real SMTP server: outcomes, retries, bounces, dropped connections, slow
server, error-rate pause, pause/resume without duplicates, cancel, test sends; the send limits."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from test_blasts import add_list, add_release, ledger

from service.config import Settings
from service.delivery import blasts
from service.delivery.limits import (
    MAX_RELAY_BACKOFF_SECONDS,
    DomainLimiter,
    RateLimiter,
    RelayBackoff,
    recipient_domain,
)
from service.delivery.smtp import classify_reply
from service.delivery.worker import run_worker
from service.models import (
    Blast,
    BlastStatus,
    Contact,
    ContactStatus,
    DeliveryLog,
    MessageStatus,
    QueuedMessage,
)


def now() -> datetime:
    return datetime.now(UTC)


def start(session: Session, settings: Settings, count: int, **list_fields: object) -> Blast:
    add_list(session, "presse", count, **list_fields)
    release = add_release(session)
    blast = blasts.create_blast(session, settings, release_id=release.id, list_names=["presse"], now=now())
    session.commit()
    return blast


def logs(session: Session, email: str) -> list[DeliveryLog]:
    row_id = session.scalar(select(QueuedMessage.id).where(QueuedMessage.email == email))
    return list(session.scalars(select(DeliveryLog).where(DeliveryLog.queued_message_id == row_id)
                                .order_by(DeliveryLog.id)))


def row(session: Session, email: str) -> QueuedMessage:
    session.expire_all()
    found = session.scalar(select(QueuedMessage).where(QueuedMessage.email == email))
    session.commit()  # end the read: on SQLite every transaction holds the write lock
    assert found is not None
    return found


def test_every_recipient_gets_one_message_over_reused_connections(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """A blast of 30 is sent once to each recipient, over no more connections than the pool, each
    message with its ledger Message-ID, and the blast is finished."""
    settings = dataclasses.replace(smtp_settings, smtp_connections=4, batch_size=7)
    blast = start(db, settings, 30)
    worker = run_worker(settings, until_idle=True, include_due=False)
    assert worker.sent_count == 30
    assert sorted(smtpd.handler.recipient_counts().values()) == [1] * 30
    assert smtpd.handler.connections <= 4
    assert ledger(db, blast.id)["sent"] == 30
    assert db.get(Blast, blast.id).status == BlastStatus.finished  # type: ignore[union-attr]
    message = smtpd.handler.received_by("j7@example.net")[0].message()
    assert message["Message-ID"] == row(db, "j7@example.net").message_id
    assert len(db.scalars(select(DeliveryLog)).all()) == 30


def test_temporary_replies_are_retried_until_accepted(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """421 then 451 at RCPT defer the message twice with backoff; the third attempt is accepted."""
    smtpd.handler.fail("j1@example.net", 421, "4.7.0 Try again later", times=1)
    smtpd.handler.fail("j2@example.net", 451, "4.3.0 Temporary local problem", times=2)
    blast = start(db, smtp_settings, 3)
    run_worker(smtp_settings, until_idle=True, include_due=False)
    assert ledger(db, blast.id)["sent"] == 3
    assert row(db, "j1@example.net").attempts == 2 and row(db, "j2@example.net").attempts == 3
    assert [(entry.outcome, entry.smtp_code) for entry in logs(db, "j2@example.net")] == [
        ("deferred", 451), ("deferred", 451), ("sent", 250)]
    assert smtpd.handler.recipient_counts()["j2@example.net"] == 1


def test_permanent_refusal_fails_and_no_such_user_bounces_the_contact(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """550 fails the row after one attempt; 550 5.1.1 bounces it and marks the contact bounced."""
    smtpd.handler.fail("j0@example.net", 550, "5.7.1 Message rejected as spam")
    smtpd.handler.fail("j1@example.net", 550, "5.1.1 No such user here")
    blast = start(db, smtp_settings, 3)
    run_worker(smtp_settings, until_idle=True, include_due=False)
    failed, bounced = row(db, "j0@example.net"), row(db, "j1@example.net")
    assert (failed.status, failed.attempts, failed.last_smtp_code) == (MessageStatus.failed, 1, 550)
    assert bounced.status == MessageStatus.bounced and "5.1.1" in (bounced.last_smtp_reply or "")
    contact = db.scalar(select(Contact).where(Contact.email == "j1@example.net"))
    assert contact is not None and contact.status == ContactStatus.bounced
    assert ledger(db, blast.id)["sent"] == 1
    assert db.get(Blast, blast.id).status == BlastStatus.finished  # type: ignore[union-attr]


def test_connection_dropped_during_data_is_deferred_then_sent(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """A connection closed during DATA is logged as 444 (no reply), the connection replaced, and the
    message sent on the next attempt; the others are not disturbed."""
    smtpd.handler.fail("j1@example.net", 0, "", times=1, at="drop")
    blast = start(db, smtp_settings, 4)
    run_worker(dataclasses.replace(smtp_settings, smtp_connections=1), until_idle=True, include_due=False)
    assert [(entry.outcome, entry.smtp_code) for entry in logs(db, "j1@example.net")] == [
        ("deferred", 444), ("sent", 250)]
    assert ledger(db, blast.id)["sent"] == 4
    assert sorted(smtpd.handler.recipient_counts().values()) == [1] * 4


def test_slow_server_times_out_then_succeeds(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """A server slower than the final-dot timeout defers (444, timeout); once it speeds up the
    message goes out. Duplicates are possible only for the timed-out attempt, which the server
    dropped. (The final dot's own limit is long by default: tests/test_hardening_smtp.py.)"""
    smtpd.handler.delay_seconds = 1.5
    settings = dataclasses.replace(smtp_settings, smtp_timeout_seconds=0.5, smtp_data_timeout_seconds=0.5,
                                   smtp_connections=1)
    blast = start(db, settings, 1)
    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(settings,), kwargs={"stop_event": stop,
                                                                          "include_due": False})
    thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not row(db, "j0@example.net").attempts:
        time.sleep(0.05)
    smtpd.handler.delay_seconds = 0
    while time.monotonic() < deadline and ledger(db, blast.id)["sent"] != 1:
        time.sleep(0.05)
    stop.set()
    thread.join(10)
    first = logs(db, "j0@example.net")[0]
    assert (first.outcome, first.smtp_code) == ("deferred", 444) and "Timeout" in (first.error_type or "")
    assert ledger(db, blast.id)["sent"] == 1


def test_error_rate_pauses_the_blast_with_the_reason(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """When the relay refuses most of the recent attempts, the blast pauses itself and says why."""
    settings = dataclasses.replace(smtp_settings, error_window=10, error_pause_threshold=0.5, batch_size=5,
                                   smtp_connections=2)
    for i in range(40):
        smtpd.handler.fail(f"j{i}@example.net", 554, "5.7.1 Relay access denied")
    blast = start(db, settings, 40)
    run_worker(settings, until_idle=True, include_due=False)
    db.expire_all()
    paused = db.get(Blast, blast.id)
    assert paused is not None and paused.status == BlastStatus.paused
    assert "refused" in (paused.paused_reason or "") and "554" in (paused.paused_reason or "")
    counts = ledger(db, blast.id)
    assert counts["failed"] < 40 and counts["queued"] > 0 and counts["sending"] == 0


def test_pause_and_resume_send_nothing_twice(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """Pausing mid-blast stops claiming; resuming sends the rest; nobody gets the message twice."""
    settings = dataclasses.replace(smtp_settings, send_rate=100, batch_size=10, smtp_connections=2)
    blast = start(db, settings, 60)
    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(settings,), kwargs={"stop_event": stop,
                                                                          "include_due": False})
    thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and ledger(db, blast.id)["sent"] < 10:
        time.sleep(0.02)
    blasts.pause_blast(db, blast.id, actor="amal", now=now())
    db.commit()
    time.sleep(0.5)
    frozen = ledger(db, blast.id)
    assert 10 <= frozen["sent"] < 60 and frozen["sending"] == 0
    time.sleep(0.3)
    assert len(smtpd.messages) == frozen["sent"]
    blasts.resume_blast(db, blast.id, actor="amal", now=now())
    db.commit()
    while time.monotonic() < deadline and ledger(db, blast.id)["sent"] < 60:
        time.sleep(0.05)
    stop.set()
    thread.join(10)
    assert ledger(db, blast.id)["sent"] == 60
    assert sorted(smtpd.handler.recipient_counts().values()) == [1] * 60


def test_cancelled_blast_is_not_sent(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """A cancelled blast's rows are `cancelled`, never claimed; the worker has nothing to do."""
    blast = start(db, smtp_settings, 5)
    blasts.cancel_blast(db, blast.id, actor="amal", now=now())
    db.commit()
    worker = run_worker(smtp_settings, until_idle=True, include_due=False)
    assert worker.attempt_count == 0 and smtpd.messages == []
    counts = ledger(db, blast.id)
    assert counts["cancelled"] == 5 and counts["queued"] == 0


def test_test_send_goes_outside_the_ledger_with_a_marked_subject(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """A test send reaches each given address with [TEST] in the subject and writes no ledger row."""
    add_list(db, "presse", 1)
    release = add_release(db)
    contact = db.scalar(select(Contact))
    assert contact is not None
    smtpd.handler.fail("nobody@example.org", 550, "5.1.1 No such user")
    results = blasts.send_test(db, smtp_settings, release.id, ["Amal@Example.org", "nobody@example.org"],
                               as_contact_id=contact.id, now=now())
    assert [r["outcome"] for r in results] == ["sent", "bounced"]
    message = smtpd.handler.received_by("amal@example.org")[0].message()
    assert message["Subject"].startswith("[TEST]")
    assert db.scalars(select(QueuedMessage)).all() == []


def test_reply_classification_follows_the_temporary_permanent_rule() -> None:
    """2xx sent; 4xx and 552 at RCPT deferred (421/452 reconnect); 5xx failed; 5.1.x bounced."""
    assert classify_reply(250, "OK").outcome == "sent"
    assert classify_reply(452, "4.5.3 Too many recipients").reconnect
    assert classify_reply(552, "5.5.3 Too many recipients", "SMTPRecipientRefused").outcome == "deferred"
    assert classify_reply(552, "5.3.4 Message too big", "SMTPDataError").outcome == "failed"
    assert classify_reply(554, "5.7.1 Rejected").outcome == "failed"
    assert classify_reply(550, "5.1.1 User unknown").outcome == "bounced"


def test_fast_data_paths_put_the_same_bytes_on_the_wire() -> None:
    """The fast line-ending and dot-stuffing checks give exactly aiosmtplib's own results."""
    import re

    from aiosmtplib import protocol

    line_endings, period = re.compile(rb"(?:\r\n|\n|\r(?!\n))"), re.compile(rb"(?m)^\.")
    samples = [b"a\r\nb\r\n", b"a\nb", b"a\rb\r\n", b".start\r\n", b"x\r\n.y\r\n..z\r\n", b"no end",
               b"\r\n", b"caf\xc3\xa9\r\n\r\n.\r\n", b"a\r\r\nb\n\r\n"]
    for sample in samples:
        expected = line_endings.sub(b"\r\n", sample)
        expected = expected if expected.endswith(b"\r\n") else expected + b"\r\n"
        assert protocol.normalize_message_line_endings(sample) == expected
        assert protocol.PERIOD_REGEX.sub(b"..", expected) == period.sub(b"..", expected)


# ---- the worker's limits -----------------------------------------------------------------------------------

def test_rate_limiter_gives_each_send_its_own_slot_at_the_rate() -> None:
    """At 40 messages per second, the k-th of 12 sends from three tasks goes no earlier than k/40 s
    after the first; unlimited (0), a send never even yields to the event loop."""

    async def scenario() -> tuple[list[float], bool]:
        limiter = RateLimiter(40)
        started = time.monotonic()
        done: list[float] = []

        async def send_four() -> None:
            for _ in range(4):
                await limiter.wait()
                done.append(time.monotonic() - started)

        await asyncio.gather(*(send_four() for _ in range(3)))
        unlimited, other_ran = RateLimiter(0), []

        async def other() -> None:
            other_ran.append(True)

        task = asyncio.create_task(other())
        for _ in range(1000):
            await unlimited.wait()
        yielded = bool(other_ran)
        await task
        return sorted(done), yielded

    done, yielded = asyncio.run(scenario())
    assert len(done) == 12
    for k, at in enumerate(done):
        assert at >= k / 40 - 0.001, (k, at)
    assert done[-1] < 10  # generous: the whole run takes about 0.3 s
    assert not yielded


def test_domain_limit_holds_sends_to_one_domain_and_forgets_idle_domains() -> None:
    """No more than the limit of sends run at once to one domain; a domain with none in flight is
    dropped, and `available` says whether a send could start without waiting."""

    async def scenario() -> tuple[int, int, list[bool]]:
        limiter, running, peak = DomainLimiter(2), [0], [0]

        async def send(domain: str) -> None:
            async with limiter.hold(domain):
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                await asyncio.sleep(0.01)
                running[0] -= 1

        await asyncio.gather(*[send("lematin.example") for _ in range(6)], send("other.example"))
        seen = [limiter.available("lematin.example")]
        await limiter.acquire("lematin.example")
        await limiter.acquire("lematin.example")
        seen += [limiter.available("lematin.example"), limiter.available("other.example")]
        limiter.release("lematin.example")
        seen.append(limiter.available("lematin.example"))
        limiter.release("lematin.example")
        return peak[0], len(limiter), seen

    # 2 to lematin + 1 to other at most; none kept; full at 2, free again after a release
    assert asyncio.run(scenario()) == (3, 0, [True, False, True, True])
    assert recipient_domain("J.Dupont@LeMatin.Example") == "lematin.example"


def test_relay_backoff_doubles_to_a_minute_logs_once_and_resets_when_the_relay_answers(  # type: ignore[no-untyped-def]
        caplog) -> None:
    """Each failure to reach the relay doubles the wait (0.5 s, 1 s, 2 s … at most 60 s); the outage
    is logged once, its end once, and an answer clears the wait."""
    caplog.set_level(logging.INFO, logger="service.delivery.limits")
    relay = RelayBackoff("w1", "relay.example:25")
    waits = []
    for _ in range(12):
        relay.down_until = time.monotonic()  # the previous wait is over: the next failure doubles it
        before = time.monotonic()
        relay.note(True, "Connection refused")
        waits.append(relay.backoff_seconds)
        assert relay.down_until >= before + relay.backoff_seconds
    assert waits[:4] == [0.5, 1.0, 2.0, 4.0] and waits[-1] == MAX_RELAY_BACKOFF_SECONDS
    relay.note(False, "250 OK")
    relay.note(False, "250 OK")
    assert (relay.failure_count, relay.down_until, relay.backoff_seconds) == (0, 0.0, 0.0)
    assert [r.getMessage() for r in caplog.records] == [
        "worker w1: cannot reach the relay relay.example:25: Connection refused",
        "worker w1: the relay answers again"]


def test_dead_relay_is_logged_once_and_the_worker_backs_off(db, settings, caplog) -> None:  # type: ignore[no-untyped-def]
    """With nothing listening on the relay port, messages are deferred (444), the outage is logged
    once, and the worker backs off instead of hammering the relay."""
    from smtp_server import free_port

    dead = dataclasses.replace(settings, smtp_host="127.0.0.1", smtp_port=free_port(), smtp_connections=2)
    blast = start(db, dead, 3)
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="service.delivery.limits")
    thread = threading.Thread(target=run_worker, args=(dead,), kwargs={"stop_event": stop,
                                                                      "include_due": False})
    thread.start()
    time.sleep(2.5)
    stop.set()
    thread.join(10)
    assert ledger(db, blast.id)["sent"] == 0
    attempts = db.scalars(select(DeliveryLog)).all()
    assert attempts and {(a.outcome, a.smtp_code) for a in attempts} == {("deferred", 444)}
    assert len(attempts) <= 8  # backoff: a handful of attempts in 2.5 s, not hundreds
    outages = [r for r in caplog.records if "cannot reach the relay" in r.getMessage()]
    assert len(outages) == 1


def test_contacts_who_opt_out_after_queuing_are_never_sent(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """An unsubscribe, a suppression or a bounce elsewhere after the blast was queued wins: those
    rows fail with the reason and nothing reaches them."""
    from service.contacts import store as contacts

    blast = start(db, smtp_settings, 4)
    ids = dict(db.execute(select(Contact.email, Contact.id)).all())
    contacts.unsubscribe_contact(db, ids["j0@example.net"], now=now())
    contacts.suppress(db, ["j1@example.net"], reason="asked by phone", now=now())
    contacts.mark_bounced(db, ids["j2@example.net"], now=now())
    db.commit()
    run_worker(smtp_settings, until_idle=True, include_due=False)
    assert sorted(smtpd.handler.recipient_counts()) == ["j3@example.net"]
    assert ledger(db, blast.id)["failed"] == 3 and ledger(db, blast.id)["sent"] == 1
    assert "unsubscribed" in (row(db, "j0@example.net").last_smtp_reply or "")
    assert "suppressed" in (row(db, "j1@example.net").last_smtp_reply or "")
    assert "bounced" in (row(db, "j2@example.net").last_smtp_reply or "")


def test_a_release_that_cannot_be_prepared_fails_its_rows_not_the_worker(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """A release the renderer chokes on (here a sender address with a non-ASCII local part that
    slipped past validation) fails its own blast's rows; other blasts are still delivered."""
    from test_blasts import add_list, add_release

    good = start(db, smtp_settings, 2)
    add_list(db, "autres", 2, start=10)
    bad_release = add_release(db, title="Adresse d'expéditeur invalide")
    bad_release.from_email = "josé@example.com"
    db.commit()
    bad = blasts.create_blast(db, smtp_settings, release_id=bad_release.id, list_names=["autres"],
                              now=now())
    db.commit()
    run_worker(smtp_settings, until_idle=True, include_due=False)
    assert ledger(db, good.id)["sent"] == 2
    assert ledger(db, bad.id)["failed"] == 2
    assert "cannot be rendered" in (row(db, "j10@example.net").last_smtp_reply or "")


def test_a_relay_refusing_everything_fails_a_handful_not_the_list(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """A fast relay that refuses every message: the worker stops the blast as soon as its error
    window is full, before the recorder has paused it, so only about a window of journalists get
    a failure and the rest stay queued for when the relay is fixed."""
    settings = dataclasses.replace(smtp_settings, error_window=10, error_pause_threshold=0.5,
                                   batch_size=50, smtp_connections=4)
    for i in range(300):
        smtpd.handler.fail(f"j{i}@example.net", 554, "5.7.1 Relay access denied")
    blast = start(db, settings, 300)
    run_worker(settings, until_idle=True, include_due=False)
    db.expire_all()
    assert db.get(Blast, blast.id).status == BlastStatus.paused  # type: ignore[union-attr]
    counts = ledger(db, blast.id)
    assert counts["failed"] <= settings.error_window + settings.smtp_connections, counts
    assert counts["queued"] == 300 - counts["failed"] and counts["sending"] == 0
