"""The ledger (`queued_messages` + `delivery_logs`): claim due rows in batches, record attempts in
batches, retry with backoff, release stale claims, pause on error rate, finish and stop blasts."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import String, Table, and_, any_, bindparam, case, exists, func, insert, select, update
from sqlalchemy.orm import Session

from service.config import Settings
from service.events import EventType, record_event
from service.models import (
    Blast,
    BlastEvent,
    BlastStatus,
    Contact,
    ContactStatus,
    DeliveryLog,
    DeliveryOutcome,
    MessageStatus,
    QueuedMessage,
    Suppression,
)
from service.rendering.recipient import CONTACT_COLUMNS, Recipient

log = logging.getLogger(__name__)

PENDING = (MessageStatus.queued, MessageStatus.sending, MessageStatus.deferred)
STOPPED_REPLY = "not sent: the blast's \"stop sending after\" time passed"
_QUEUE: Table = QueuedMessage.__table__  # type: ignore[assignment]
# What a message needs of its contact, as the field definitions say (contacts.fields).
_RECIPIENT_COLUMNS = tuple(getattr(Contact, name) for name in CONTACT_COLUMNS)


@dataclass(frozen=True, slots=True)
class Claimed:
    """One claimed ledger row with what is needed to render and send it."""

    id: int
    blast_id: int
    release_id: int
    email: str
    message_id: str
    attempts: int
    contact_id: int
    recipient: Recipient


@dataclass(frozen=True, slots=True)
class Attempt:
    """The result of one SMTP attempt, to be recorded."""

    row_id: int
    blast_id: int
    contact_id: int
    attempt: int
    outcome: DeliveryOutcome
    smtp_code: int | None
    smtp_reply: str | None
    error_type: str | None
    duration_seconds: float | None
    at: datetime


def running_blast_ids(session: Session) -> list[int]:
    return list(session.scalars(select(Blast.id).where(Blast.status == BlastStatus.running)))


def claim_due_messages(session: Session, *, worker_id: str, now: datetime, limit: int,
                       blast_ids: Sequence[int]) -> list[Claimed]:
    """Move up to `limit` due rows (deferred and due, then queued) of the given running blasts
    to `sending`, in one short transaction. On PostgreSQL the rows are picked with FOR UPDATE
    SKIP LOCKED, so concurrent workers never take the same row; SQLite serializes writers."""
    if not blast_ids or limit <= 0:
        return []
    table = _QUEUE
    postgresql = session.get_bind().dialect.name == "postgresql"
    ids: list[int] = []
    # One pick per status, each served by an index in id order (ix_queued_messages_due, and
    # ix_queued_messages_blast_status: blast, status, id): a claim reads about `limit` index
    # entries however many rows of the blast were already sent. (An OR of both made the
    # planners walk every row of the blast, or the whole table, on every claim.)
    for due in (and_(table.c.status == MessageStatus.deferred, table.c.next_attempt_at <= now),
                table.c.status == MessageStatus.queued):
        wanted = limit - len(ids)
        if wanted <= 0:
            break
        pick = (select(table.c.id).where(table.c.blast_id.in_(list(blast_ids)), due)
                .order_by(table.c.id).limit(wanted))
        if postgresql:
            # = ANY(ARRAY(...)) updates the picked rows by primary key; with IN (...) the planner
            # hashes the whole table for each claim.
            picked = table.c.id == any_(func.array(pick.with_for_update(skip_locked=True)
                                                   .scalar_subquery()))
        else:
            picked = table.c.id.in_(pick.scalar_subquery())
        ids += session.scalars(
            update(table).where(picked)
            .values(status=MessageStatus.sending, claimed_at=now, claimed_by=worker_id, updated_at=now)
            .returning(table.c.id))
    if not ids:
        return []
    # Plain columns, not ORM objects: a batch is built in a fraction of the time.
    rows = session.execute(
        select(QueuedMessage.id, QueuedMessage.blast_id, Blast.release_id, QueuedMessage.email,
               QueuedMessage.message_id, QueuedMessage.attempts, Contact.id, Contact.status,
               Suppression.id, *_RECIPIENT_COLUMNS)
        .join(Blast, Blast.id == QueuedMessage.blast_id)
        .join(Contact, Contact.id == QueuedMessage.contact_id)
        .outerjoin(Suppression, Suppression.email_key == Contact.email_key)
        .where(QueuedMessage.id.in_(ids)).order_by(QueuedMessage.id)).all()
    claimed, not_mailable = [], []
    for (row_id, blast_id, release_id, email, message_id, attempts, contact_id, status,
         suppression_id, *personal) in rows:
        if status != ContactStatus.active or suppression_id is not None:
            reason = "suppressed" if suppression_id is not None else status
            not_mailable.append((row_id, blast_id, attempts, reason))
            continue
        claimed.append(Claimed(row_id, blast_id, release_id, email, message_id, attempts, contact_id,
                               Recipient(email, contact_id, *personal)))
    if not_mailable:
        _drop_not_mailable(session, not_mailable, now=now)
    return claimed


def _drop_not_mailable(session: Session, rows: Sequence[tuple[int, int, int, str]], *,
                       now: datetime) -> None:
    """Rows whose contact unsubscribed, bounced or was suppressed after the blast was queued:
    never sent, failed with the reason (consent wins over a queue that is already built)."""
    connection = session.connection()
    replies = {row_id: f"not sent: the contact is {reason} since the blast was queued"
               for row_id, _blast_id, _attempts, reason in rows}
    connection.execute(_RECORD_ROW, [
        {"b_id": row_id, "b_status": str(MessageStatus.failed), "b_attempts": attempts, "b_next": None,
         "b_code": None, "b_reply": replies[row_id], "b_at": now, "b_sent": None}
        for row_id, _blast_id, attempts, _reason in rows])
    connection.execute(_LOG_ATTEMPT, [
        {"queued_message_id": row_id, "blast_id": blast_id, "attempt": attempts,
         "outcome": str(DeliveryOutcome.failed), "smtp_code": None, "smtp_reply": replies[row_id],
         "error_type": "ContactNotMailable", "duration_seconds": None, "at": now}
        for row_id, blast_id, attempts, _reason in rows])
    log.info("dropped %d queued messages whose contacts may no longer be mailed", len(rows))


def release_claims(session: Session, row_ids: Iterable[int]) -> int:
    """Put claimed but unsent rows back in the queue (blast paused, worker stopping). Only rows
    still `sending`: those of a cancelled blast are `cancelled` already (cancel_unsent)."""
    ids = list(row_ids)
    if not ids:
        return 0
    result = session.execute(
        update(QueuedMessage).where(QueuedMessage.id.in_(ids), QueuedMessage.status == MessageStatus.sending)
        .values(status=MessageStatus.queued, claimed_at=None, claimed_by=None)
        .execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def renew_claims(session: Session, *, worker_id: str, now: datetime) -> int:
    """Extend the lease of every row this worker still holds, so no one (itself included)
    mistakes rows waiting in its queue for a dead worker's."""
    result = session.execute(
        update(QueuedMessage).where(QueuedMessage.status == MessageStatus.sending,
                                    QueuedMessage.claimed_by == worker_id)
        .values(claimed_at=now).execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def release_stale_claims(session: Session, settings: Settings, *, now: datetime) -> int:
    """A `sending` row whose lease ran out belongs to a worker that died: queue it again."""
    cutoff = now - timedelta(seconds=settings.lease_seconds)
    result = session.execute(
        update(QueuedMessage).where(QueuedMessage.status == MessageStatus.sending,
                                    QueuedMessage.claimed_at < cutoff)
        .values(status=MessageStatus.queued, claimed_at=None, claimed_by=None)
        .execution_options(synchronize_session=False))
    count = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if count:
        log.warning("released %d stale claims (lease of %ss ran out)", count, settings.lease_seconds)
    return count


# Built once: the worker runs these hundreds of times a second. A row already recorded as sent
# never goes back (a late duplicate result must not undo it). A row cancelled while its message
# was in flight takes the result (sent, failed, bounced: what happened), except a temporary
# refusal: it stays `cancelled`, nothing retries it.
_NEW_STATUS = bindparam("b_status", type_=String())  # typed: PostgreSQL compares it in the CASE
_RECORD_ROW = (
    update(_QUEUE).where(_QUEUE.c.id == bindparam("b_id"), _QUEUE.c.status != MessageStatus.sent)
    .values(status=case((and_(_QUEUE.c.status == MessageStatus.cancelled,
                              _NEW_STATUS == MessageStatus.deferred), _QUEUE.c.status),
                        else_=_NEW_STATUS),
            attempts=bindparam("b_attempts"),
            next_attempt_at=case((_QUEUE.c.status == MessageStatus.cancelled, None),
                                 else_=bindparam("b_next", type_=_QUEUE.c.next_attempt_at.type)),
            last_smtp_code=bindparam("b_code"),
            last_smtp_reply=bindparam("b_reply"), updated_at=bindparam("b_at"),
            sent_at=bindparam("b_sent"), claimed_at=None, claimed_by=None))
_LOG_ATTEMPT = insert(DeliveryLog.__table__)  # type: ignore[arg-type]
# PostgreSQL: the same two writes as one statement each, the batch passed as arrays. An
# executemany runs (and plans) one UPDATE per row; this halves the cost of recording a batch.
_PG_RECORD_ROWS = """
UPDATE queued_messages AS q SET status = CASE WHEN q.status = 'cancelled' AND v.status = 'deferred'
        THEN q.status ELSE v.status END, attempts = v.attempts,
    next_attempt_at = CASE WHEN q.status = 'cancelled' THEN NULL ELSE v.next_at END,
    last_smtp_code = v.code, last_smtp_reply = v.reply,
    updated_at = v.at, sent_at = v.sent, claimed_at = NULL, claimed_by = NULL
FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::timestamptz[], %s::int[], %s::text[],
            %s::timestamptz[], %s::timestamptz[]) AS v(id, status, attempts, next_at, code, reply, at, sent)
WHERE q.id = v.id AND q.status <> 'sent'"""
_PG_LOG_ATTEMPTS = """
INSERT INTO delivery_logs (queued_message_id, blast_id, attempt, outcome, smtp_code, smtp_reply,
                           error_type, duration_seconds, at)
SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::int[], %s::text[], %s::int[], %s::text[],
                     %s::text[], %s::float8[], %s::timestamptz[])"""


def _backoff(settings: Settings, attempt: int) -> timedelta:
    delay = settings.retry_base_seconds * 2 ** min(max(attempt - 1, 0), 20)
    return timedelta(seconds=delay * random.uniform(1.0, 1.2))  # jitter spreads the retries


def record_attempts(session: Session, settings: Settings, attempts: Sequence[Attempt]) -> None:
    """Write one batch of results: an executemany UPDATE of the rows, a bulk INSERT of the logs,
    contacts marked bounced. A deferral past the retry lifetime becomes a failure."""
    if not attempts:
        return
    deferred_ids = [a.row_id for a in attempts if a.outcome == DeliveryOutcome.deferred]
    first_at: dict[int, datetime] = {}
    if deferred_ids:
        first_at = dict(session.execute(  # type: ignore[arg-type]
            select(DeliveryLog.queued_message_id, func.min(DeliveryLog.at))
            .where(DeliveryLog.queued_message_id.in_(deferred_ids))
            .group_by(DeliveryLog.queued_message_id)).all())
    updates, logs = [], []
    for a in attempts:
        status, reply, next_at = MessageStatus(a.outcome), a.smtp_reply, None
        if a.outcome == DeliveryOutcome.deferred:
            started = first_at.get(a.row_id, a.at)
            if (a.at - started).total_seconds() >= settings.retry_max_age_seconds:
                status = MessageStatus.failed
                reply = f"gave up after {a.attempt} attempts since {started.isoformat()}: {a.smtp_reply}"
            else:
                next_at = a.at + _backoff(settings, a.attempt)
        updates.append({"b_id": a.row_id, "b_status": str(status), "b_attempts": a.attempt,
                        "b_next": next_at, "b_code": a.smtp_code, "b_reply": reply, "b_at": a.at,
                        "b_sent": a.at if status == MessageStatus.sent else None})
        logs.append({"queued_message_id": a.row_id, "blast_id": a.blast_id, "attempt": a.attempt,
                     "outcome": str(a.outcome), "smtp_code": a.smtp_code, "smtp_reply": a.smtp_reply,
                     "error_type": a.error_type, "duration_seconds": a.duration_seconds, "at": a.at})
    connection = session.connection()  # Core: a third of the ORM's per-batch overhead
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(_PG_RECORD_ROWS, tuple(
            [row[key] for row in updates] for key in
            ("b_id", "b_status", "b_attempts", "b_next", "b_code", "b_reply", "b_at", "b_sent")))
        connection.exec_driver_sql(_PG_LOG_ATTEMPTS, tuple(
            [row[key] for row in logs] for key in
            ("queued_message_id", "blast_id", "attempt", "outcome", "smtp_code", "smtp_reply",
             "error_type", "duration_seconds", "at")))
    else:
        connection.execute(_RECORD_ROW, updates)
        connection.execute(_LOG_ATTEMPT, logs)
    bounced = [a for a in attempts if a.outcome == DeliveryOutcome.bounced]
    if bounced:
        from service.contacts.store import mark_bounced  # here: the worker rarely needs the contact stack

        for a in bounced:
            mark_bounced(session, a.contact_id, now=a.at)


def pause_on_error_rate(session: Session, settings: Settings, blast_ids: Iterable[int], *,
                        now: datetime) -> list[int]:
    """Pause a running blast when failed/deferred attempts reach the threshold share of its last
    `error_window` attempts (a full window is needed, so a few bad addresses never pause it)."""
    paused = []
    for blast_id in set(blast_ids):
        recent = session.execute(
            select(DeliveryLog.outcome, DeliveryLog.smtp_code, DeliveryLog.smtp_reply)
            .where(DeliveryLog.blast_id == blast_id)
            .order_by(DeliveryLog.id.desc()).limit(settings.error_window)).all()
        if len(recent) < settings.error_window:
            continue
        bad = [r for r in recent if r.outcome in (DeliveryOutcome.failed, DeliveryOutcome.deferred)]
        if len(bad) / len(recent) < settings.error_pause_threshold:
            continue
        sample = bad[0]
        reason = (f"the relay refused {len(bad)} of the last {len(recent)} attempts: "
                  f"{sample.smtp_code or ''} {sample.smtp_reply or ''}".strip())
        result = session.execute(update(Blast).where(Blast.id == blast_id,
                                                     Blast.status == BlastStatus.running)
                                 .values(status=BlastStatus.paused, paused_reason=reason[:2000],
                                         updated_at=now)
                                 .execution_options(synchronize_session=False))
        if result.rowcount == 1:  # type: ignore[attr-defined]
            session.add(BlastEvent(blast_id=blast_id, action="paused", actor="worker", detail=reason,
                                   at=now))
            record_event(session, EventType.blast_paused, {"blast_id": blast_id, "reason": reason},
                         now=now)
            log.warning("blast %s: paused, %s", blast_id, reason)
            paused.append(blast_id)
    return paused


def finish_done_blasts(session: Session, *, now: datetime) -> list[int]:
    """A running blast with no row left queued, sending or deferred is finished."""
    pending = exists().where(QueuedMessage.blast_id == Blast.id, QueuedMessage.status.in_(PENDING))
    finished = []
    for blast_id in session.scalars(select(Blast.id).where(Blast.status == BlastStatus.running, ~pending)):
        result = session.execute(update(Blast).where(Blast.id == blast_id,
                                                     Blast.status == BlastStatus.running,
                                                     ~exists().where(QueuedMessage.blast_id == blast_id,
                                                                     QueuedMessage.status.in_(PENDING)))
                                 .values(status=BlastStatus.finished, finished_at=now, updated_at=now)
                                 .execution_options(synchronize_session=False))
        if result.rowcount == 1:  # type: ignore[attr-defined]
            _record_finish(session, blast_id, "finished", now)
            finished.append(blast_id)
    return finished


def stop_overdue_blasts(session: Session, *, now: datetime) -> list[int]:
    """Past "stop sending after": rows not yet sent fail with a clear reply and the blast is
    `expired` (it did not reach everyone in time; resend_to_unsent can pick them up)."""
    stopped = []
    for blast_id in session.scalars(select(Blast.id).where(
            Blast.status.in_([BlastStatus.running, BlastStatus.paused]), Blast.stop_after < now)):
        result = session.execute(update(Blast).where(Blast.id == blast_id,
                                                     Blast.status.in_([BlastStatus.running,
                                                                       BlastStatus.paused]))
                                 .values(status=BlastStatus.expired, finished_at=now, updated_at=now)
                                 .execution_options(synchronize_session=False))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            continue
        session.execute(update(QueuedMessage).where(
            QueuedMessage.blast_id == blast_id,
            QueuedMessage.status.in_([MessageStatus.queued, MessageStatus.deferred]))
            .values(status=MessageStatus.failed, last_smtp_reply=STOPPED_REPLY, next_attempt_at=None,
                    updated_at=now).execution_options(synchronize_session=False))
        _record_finish(session, blast_id, "expired", now, STOPPED_REPLY)
        stopped.append(blast_id)
    return stopped


def _record_finish(session: Session, blast_id: int, action: str, now: datetime,
                   detail: str | None = None) -> None:
    counts = dict(session.execute(select(QueuedMessage.status, func.count())  # type: ignore[arg-type]
                                  .where(QueuedMessage.blast_id == blast_id)
                                  .group_by(QueuedMessage.status)).all())
    session.add(BlastEvent(blast_id=blast_id, action=action, detail=detail, at=now))
    record_event(session, EventType.blast_finished,
                 {"blast_id": blast_id, "status": action, "counts": {str(k): v for k, v in counts.items()}},
                 now=now)
    log.info("blast %s: %s (%s)", blast_id, action, counts)


def housekeep(session: Session, settings: Settings, *, now: datetime) -> None:
    release_stale_claims(session, settings, now=now)
    stop_overdue_blasts(session, now=now)
    finish_done_blasts(session, now=now)


def has_pending_work(session: Session, *, now: datetime, include_due: bool = True) -> bool:
    """True while a running blast has rows queued, sending or deferred, or (with include_due) a
    scheduled blast is due."""
    pending = session.scalar(select(QueuedMessage.id).join(Blast, Blast.id == QueuedMessage.blast_id).where(
        Blast.status == BlastStatus.running, QueuedMessage.status.in_(PENDING)).limit(1))
    if pending is not None:
        return True
    if include_due:
        return session.scalar(select(Blast.id).where(and_(Blast.status == BlastStatus.scheduled,
                                                          Blast.send_at <= now)).limit(1)) is not None
    return False
