"""The worker's parts, each on its own: the error brake, the claimer and the recorder against a real
database, the sender against a real SMTP server (the limits are in test_delivery.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from test_blasts import ledger
from test_delivery import logs, row, start

from service.config import Settings
from service.delivery import blasts
from service.delivery.brake import ErrorBrake
from service.delivery.claimer import Claimer
from service.delivery.db_thread import DbThread
from service.delivery.queue import Attempt, Claimed
from service.delivery.recorder import Recorder
from service.delivery.sender import Sender
from service.models import (
    Blast,
    BlastStatus,
    Contact,
    ContactStatus,
    DeliveryOutcome,
    MessageStatus,
    QueuedMessage,
)

T = TypeVar("T")
WORKER_ID = "parts@test"


def now() -> datetime:
    return datetime.now(UTC)


def attempt(blast_id: int, outcome: DeliveryOutcome, *, row_id: int = 0, contact_id: int = 0,
            code: int | None = None, reply: str | None = None) -> Attempt:
    return Attempt(row_id, blast_id, contact_id, 1, outcome, code, reply, None, None, now())


def result_of(job: Claimed, outcome: DeliveryOutcome, code: int, reply: str) -> Attempt:
    return Attempt(job.id, job.blast_id, job.contact_id, job.attempts + 1, outcome, code, reply,
                   None, 0.01, now())


@dataclasses.dataclass
class Parts:
    """A brake, recorder and claimer wired as the worker wires them, on one database."""

    brake: ErrorBrake
    recorder: Recorder
    claimer: Claimer
    stopping: asyncio.Event
    databases: tuple[DbThread, DbThread]

    def close(self) -> None:
        for database in self.databases:
            database.close()


def with_parts(settings: Settings, session_factory: sessionmaker[Session],
               scenario: Callable[[Parts], Awaitable[T]], **claimer_options: bool) -> T:
    """Build the parts inside a fresh event loop, run `scenario` with them, close their threads."""

    async def main() -> T:
        databases = (DbThread(session_factory, "claim"), DbThread(session_factory, "record"))
        running: set[int] = set()
        stopping = asyncio.Event()
        brake = ErrorBrake(settings.error_window, settings.error_pause_threshold, WORKER_ID)
        recorder = Recorder(settings, WORKER_ID, databases[1], brake, running)
        claimer = Claimer(settings, WORKER_ID, databases[0], brake, running, stopping,
                          is_drained=recorder.is_idle, **claimer_options)
        parts = Parts(brake, recorder, claimer, stopping, databases)
        try:
            return await asyncio.wait_for(scenario(parts), 60)
        finally:
            parts.close()

    return asyncio.run(main())


def queued_jobs(claimer: Claimer) -> list[Claimed]:
    jobs = []
    while not claimer.queue.empty():
        job = claimer.queue.get_nowait()
        assert job is not None
        jobs.append(job)
    return jobs


# ---- the error brake --------------------------------------------------------------------------

def test_brake_holds_a_running_blast_once_its_full_window_is_bad_enough() -> None:
    """With a window of 4 and a threshold of half: three bad results never brake (the window is not
    full); 1 bad of 4 does not; 3 bad of the last 4 take the blast out of `running`; a blast not
    running is never held."""
    brake, running = ErrorBrake(4, 0.5, "w1"), {1, 2, 3}
    for outcome in (DeliveryOutcome.failed, DeliveryOutcome.deferred, DeliveryOutcome.failed):
        brake.note(attempt(1, outcome), running)
    assert running == {1, 2, 3}
    for outcome in (DeliveryOutcome.sent, DeliveryOutcome.failed, DeliveryOutcome.sent,
                    DeliveryOutcome.bounced, DeliveryOutcome.sent):
        brake.note(attempt(2, outcome), running)
    assert running == {1, 2, 3}  # a bounce is the recipient's fault, not the relay's
    brake.note(attempt(1, DeliveryOutcome.sent), running)
    assert running == {2, 3} and set(brake.held_blast_ids) == {1}
    for _ in range(4):
        brake.note(attempt(4, DeliveryOutcome.failed), running)
    assert set(brake.held_blast_ids) == {1}


def test_brake_lets_go_only_after_a_claim_that_began_after_the_results_were_committed() -> None:
    """A held blast stays held until its braking result is committed, and then until a claim that
    began after that commit; its window then starts afresh."""
    brake, running = ErrorBrake(2, 1.0, "w1"), {1}
    first, braking = attempt(1, DeliveryOutcome.failed), attempt(1, DeliveryOutcome.failed)
    brake.note(first, running)
    brake.note(braking, running)
    assert not running
    brake.release_judged(time.monotonic() + 1)
    brake.recorded([first, attempt(1, DeliveryOutcome.failed)])
    brake.release_judged(time.monotonic() + 1)
    assert set(brake.held_blast_ids) == {1}  # not committed yet: a claim reads nothing new
    before_commit = time.monotonic()
    brake.recorded([first, braking])
    brake.release_judged(before_commit)
    assert set(brake.held_blast_ids) == {1}  # that claim began before the commit
    brake.release_judged(time.monotonic() + 1)
    assert not brake.held_blast_ids
    running.add(1)
    brake.note(attempt(1, DeliveryOutcome.failed), running)
    assert running == {1}  # one result in a fresh window of two


# ---- the claimer (real database) --------------------------------------------------------------

def test_claimer_keeps_a_batch_queued_and_prepares_each_release_once(  # type: ignore[no-untyped-def]
        db, settings, session_factory) -> None:
    """A claim moves a batch of due rows, in id order, to `sending` under this worker's id and
    queues them; with a full queue it claims nothing; the release is prepared once per blast."""
    settings = dataclasses.replace(settings, batch_size=3)
    blast = start(db, settings, 7)

    async def scenario(parts: Parts) -> tuple[list[tuple[int, int] | None], list[int], list[int]]:
        claimer = parts.claimer
        rounds = [await claimer.fill(), await claimer.fill()]
        first = [job.id for job in queued_jobs(claimer)]
        prepared = claimer.prepared[blast.id]
        rounds += [await claimer.fill(), await claimer.fill()]
        assert claimer.prepared[blast.id] is prepared and prepared.release is not None
        assert claimer.running == {blast.id}
        return rounds, first, claimer.close_queue(2)

    rounds, first, unstarted = with_parts(settings, session_factory, scenario)
    assert rounds == [(3, 3), (0, 0), (3, 3), (0, 0)]
    assert first == sorted(first) and max(first) < min(unstarted) and len(unstarted) == 3
    assert ledger(db, blast.id)["sending"] == 6 and ledger(db, blast.id)["queued"] == 1
    claimed_by = set(db.scalars(select(QueuedMessage.claimed_by)
                                .where(QueuedMessage.status == MessageStatus.sending)))
    assert claimed_by == {WORKER_ID}


def test_claimer_forgets_a_paused_blast_and_renews_the_leases_it_holds(  # type: ignore[no-untyped-def]
        db, settings, session_factory) -> None:
    """Once its blast is paused, the next claim takes it out of `running` and forgets its prepared
    release; meanwhile each claim renews the lease of the rows the worker still holds."""
    settings = dataclasses.replace(settings, batch_size=5, lease_seconds=1)  # renewed every 1/3 s
    blast = start(db, settings, 5)

    def leases() -> set[datetime]:
        found = set(db.scalars(select(QueuedMessage.claimed_at)))
        db.commit()
        return found

    async def scenario(parts: Parts) -> tuple[set[datetime], set[datetime]]:
        claimer = parts.claimer
        assert await claimer.fill() == (5, 5)
        claimed = leases()
        assert len(claimed) == 1 and blast.id in claimer.prepared
        blasts.pause_blast(db, blast.id, actor="amal", now=now())
        db.commit()
        await asyncio.sleep(0.4)
        assert await claimer.fill() == (0, 0)
        assert claimer.running == set() and claimer.prepared == {}
        return claimed, leases()

    claimed, renewed = with_parts(settings, session_factory, scenario)
    assert len(renewed) == 1 and min(renewed) > max(claimed)


def test_claimer_skips_a_braked_blast_until_a_claim_reads_its_judgement(  # type: ignore[no-untyped-def]
        db, settings, session_factory) -> None:
    """A blast the brake holds stays out of `running` though the database says running, until its
    results are committed and a later claim has read its status."""
    settings = dataclasses.replace(settings, batch_size=2, error_window=1, error_pause_threshold=1.0)
    blast = start(db, settings, 4)

    async def scenario(parts: Parts) -> list[bool]:
        claimer, brake = parts.claimer, parts.brake
        await claimer.fill()
        braking = attempt(blast.id, DeliveryOutcome.failed)
        brake.note(braking, claimer.running)
        seen = [blast.id in claimer.running]
        queued_jobs(claimer)
        await claimer.fill()
        seen.append(blast.id in claimer.running)
        brake.recorded([braking])
        await claimer.fill()
        seen.append(blast.id in claimer.running)
        return seen

    assert with_parts(settings, session_factory, scenario) == [False, False, True]


def test_claimer_until_idle_stops_when_nothing_is_left_and_finishes_the_blast(  # type: ignore[no-untyped-def]
        db, settings, session_factory) -> None:
    """With nothing queued, sending or deferred, the claim loop housekeeps once more and returns:
    the blast whose rows were all sent is finished."""
    blast = start(db, settings, 2)
    db.execute(update(QueuedMessage).values(status=MessageStatus.sent, sent_at=now()))
    db.commit()

    async def scenario(parts: Parts) -> None:
        await parts.claimer.run()

    with_parts(settings, session_factory, scenario, until_idle=True, include_due=False)
    db.expire_all()
    assert db.get(Blast, blast.id).status == BlastStatus.finished  # type: ignore[union-attr]


# ---- the recorder (real database) -------------------------------------------------------------

def test_recorder_writes_results_in_one_group_commit_and_puts_unsent_rows_back(  # type: ignore[no-untyped-def]
        db, settings, session_factory) -> None:
    """Results handed over together share one commit (one future); each row gets its status and
    a log row, a 5.1.1 bounces the contact, and a row taken but not sent goes back to the queue."""
    blast = start(db, settings, 4)

    async def scenario(parts: Parts) -> tuple[int, int, int, int]:
        claimer, recorder = parts.claimer, parts.recorder
        await claimer.fill()
        jobs = queued_jobs(claimer)
        recorder.in_flight += len(jobs)  # as the senders count them when they take them
        futures = {recorder.add(result_of(jobs[0], DeliveryOutcome.sent, 250, "OK")),
                   recorder.add(result_of(jobs[1], DeliveryOutcome.deferred, 451, "4.3.0 Later")),
                   recorder.add(result_of(jobs[2], DeliveryOutcome.bounced, 550, "5.1.1 No such user"))}
        recorder.put_back(jobs[3].id)
        task = asyncio.create_task(recorder.run())
        [done] = futures
        await done
        recorder.finish()
        await task
        return len(futures), recorder.attempt_count, recorder.sent_count, recorder.in_flight

    assert with_parts(settings, session_factory, scenario) == (1, 3, 1, 0)
    assert [row(db, f"j{i}@example.net").status for i in range(4)] == [
        MessageStatus.sent, MessageStatus.deferred, MessageStatus.bounced, MessageStatus.queued]
    assert [(e.outcome, e.smtp_code) for e in logs(db, "j1@example.net")] == [("deferred", 451)]
    assert logs(db, "j3@example.net") == []
    contact = db.scalar(select(Contact).where(Contact.email == "j2@example.net"))
    assert contact is not None and contact.status == ContactStatus.bounced
    assert ledger(db, blast.id)["sending"] == 0


def test_recorder_pauses_a_failing_blast_and_the_brake_lets_go_at_the_next_claim(  # type: ignore[no-untyped-def]
        db, settings, session_factory) -> None:
    """A full window of refusals: the brake holds the blast at once, the commit pauses it in the
    database with the reason, and the next claim finds it paused (the brake has let go)."""
    settings = dataclasses.replace(settings, error_window=3, error_pause_threshold=0.5, batch_size=5)
    blast = start(db, settings, 5)

    async def scenario(parts: Parts) -> list[object]:
        claimer, recorder, brake = parts.claimer, parts.recorder, parts.brake
        await claimer.fill()
        jobs = queued_jobs(claimer)
        recorder.in_flight += 3
        for job in jobs[:3]:
            done = recorder.add(result_of(job, DeliveryOutcome.failed, 554, "5.7.1 Relay access denied"))
        seen: list[object] = [blast.id in claimer.running, set(brake.held_blast_ids)]
        recorder.put_back_unstarted(job.id for job in jobs[3:])
        task = asyncio.create_task(recorder.run())
        await done
        await claimer.fill()
        seen += [blast.id in claimer.running, set(brake.held_blast_ids)]
        recorder.finish()
        await task
        return seen

    assert with_parts(settings, session_factory, scenario) == [False, {blast.id}, False, set()]
    db.expire_all()
    paused = db.get(Blast, blast.id)
    assert paused is not None and paused.status == BlastStatus.paused
    assert "refused 3 of the last 3" in (paused.paused_reason or "")
    assert ledger(db, blast.id)["queued"] == 2 and ledger(db, blast.id)["failed"] == 3


# ---- the sender (real SMTP server) ------------------------------------------------------------

def send_queued(settings: Settings, session_factory: sessionmaker[Session], connections: int,
                prepare: Callable[[Parts], Awaitable[None]] | None = None) -> Recorder:
    """Claim one batch, then let `connections` sender tasks send it with a recorder running."""

    async def scenario(parts: Parts) -> Recorder:
        await parts.claimer.fill()
        if prepare is not None:
            await prepare(parts)
        sender = Sender(settings, WORKER_ID, parts.claimer, parts.recorder, parts.stopping)
        recording = asyncio.create_task(parts.recorder.run())
        for _ in range(connections):
            parts.claimer.queue.put_nowait(None)
        await asyncio.gather(*(sender.run() for _ in range(connections)))
        parts.recorder.finish()
        await recording
        assert len(sender.domains) == 0
        return parts.recorder

    return with_parts(settings, session_factory, scenario)


@pytest.mark.parametrize("pipelining", [False, True])
def test_sender_sends_each_job_once_and_chains_envelopes_on_a_pipelining_relay(  # type: ignore[no-untyped-def]
        db, smtp_settings, smtpd, session_factory, pipelining) -> None:
    """Ten queued jobs over one connection: each recipient gets its message with its ledger
    Message-ID, every result is recorded; on a relay that pipelines, most messages' content goes
    out with the next envelope behind it."""
    smtpd.handler.pipelining = pipelining
    settings = dataclasses.replace(smtp_settings, batch_size=10)
    blast = start(db, settings, 10)
    recorder = send_queued(settings, session_factory, connections=1)
    assert (recorder.sent_count, recorder.in_flight) == (10, 0)
    assert sorted(smtpd.handler.recipient_counts().values()) == [1] * 10
    assert smtpd.handler.connections == 1
    message = smtpd.handler.received_by("j4@example.net")[0].message()
    assert message["Message-ID"] == row(db, "j4@example.net").message_id
    assert ledger(db, blast.id)["sent"] == 10
    if pipelining:
        assert smtpd.handler.chained_count >= 5
    else:
        assert smtpd.handler.chained_count == 0


def test_sender_records_a_refused_chained_envelope_and_goes_on(  # type: ignore[no-untyped-def]
        db, smtp_settings, smtpd, session_factory) -> None:
    """On a pipelining relay, a recipient refused while its envelope rode behind the previous
    message is recorded with the refusal; the messages before and after it go out."""
    smtpd.handler.pipelining = True
    smtpd.handler.fail("j2@example.net", 550, "5.1.1 No such user")
    settings = dataclasses.replace(smtp_settings, batch_size=5)
    blast = start(db, settings, 5)
    recorder = send_queued(settings, session_factory, connections=1)
    assert (recorder.attempt_count, recorder.sent_count) == (5, 4)
    assert sorted(smtpd.handler.recipient_counts()) == [f"j{i}@example.net" for i in (0, 1, 3, 4)]
    # no duration of its own: its envelope went behind j1's content, refused before its turn
    assert [(e.outcome, e.smtp_code, e.duration_seconds) for e in logs(db, "j2@example.net")] == [
        ("bounced", 550, None)]
    assert ledger(db, blast.id)["sent"] == 4 and smtpd.handler.connections == 1


def test_sender_puts_back_the_jobs_of_a_blast_that_stopped_running(  # type: ignore[no-untyped-def]
        db, smtp_settings, smtpd, session_factory) -> None:
    """Jobs already queued when their blast was paused are not sent: they go back to `queued`."""
    blast = start(db, smtp_settings, 4)

    async def pause(parts: Parts) -> None:
        blasts.pause_blast(db, blast.id, actor="amal", now=now())
        db.commit()
        jobs = queued_jobs(parts.claimer)
        await parts.claimer.fill()  # reads the pause; the queue was emptied, so it claims nothing new
        for job in jobs:
            parts.claimer.queue.put_nowait(job)

    recorder = send_queued(smtp_settings, session_factory, connections=2, prepare=pause)
    assert (recorder.attempt_count, recorder.in_flight) == (0, 0)
    assert smtpd.messages == []
    assert ledger(db, blast.id)["queued"] == 4 and ledger(db, blast.id)["sending"] == 0
