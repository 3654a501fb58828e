"""Blasts: audience, schedule, pause, resume, cancel, approve; the atomic start that enqueues the
ledger (`enqueue_blast`); finish and expiry; resend to the unsent; progress; test sends."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any

from sqlalchemy import String, Table, and_, cast, exists, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import session_scope
from service.delivery.queue import PENDING, housekeep
from service.errors import Conflict, FieldError, NotFound, ValidationError
from service.events import EventType, record_event
from service.inbound.listing import blast_inbound_counts
from service.models import (
    Blast,
    BlastEvent,
    BlastStatus,
    Contact,
    ContactList,
    ContactStatus,
    MessageStatus,
    QueuedMessage,
    Release,
    Role,
    Suppression,
    TestSend,
    User,
    list_memberships,
)
from service.releases.fingerprint import content_fingerprint

log = logging.getLogger(__name__)

FILTER_KEYS = ("languages", "countries", "media_types", "tags")
RATE_WINDOW_SECONDS = 60
PAST_TOLERANCE = timedelta(minutes=1)  # a send time this close to now is "now", not a mistake
LIVE = (BlastStatus.scheduled, BlastStatus.running, BlastStatus.paused)


@dataclass(frozen=True)
class Audience:
    """Who a blast would reach: `count` contacts, after leaving out the `already_sent` who already
    received the release (any language variant, any earlier blast; `last_sent_at` the latest)."""

    count: int
    already_sent: int
    last_sent_at: datetime | None


# ---- audience -------------------------------------------------------------------------------

def clean_filters(filters: dict[str, Any] | None) -> dict[str, list[str]]:
    """Validate filters: each key one of FILTER_KEYS, each value a list of non-empty strings."""
    cleaned: dict[str, list[str]] = {}
    for key, values in (filters or {}).items():
        if key not in FILTER_KEYS:
            raise ValidationError(FieldError(f"filters.{key}",
                                             f"unknown filter; use {', '.join(FILTER_KEYS)}"))
        if isinstance(values, str):
            values = [v for v in values.split(",")]
        if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
            raise ValidationError(FieldError(f"filters.{key}", "must be a list of strings"))
        values = [v.strip() for v in values if v.strip()]
        if values:
            cleaned[key] = values
    return cleaned


def _lists_by_name(session: Session, list_names: Sequence[str]) -> list[ContactList]:
    names = list(dict.fromkeys(n.strip() for n in list_names if n and n.strip()))
    if not names:
        raise ValidationError(FieldError("lists", "choose at least one contact list"))
    found = {c.name: c for c in session.scalars(select(ContactList).where(ContactList.name.in_(names)))}
    missing = [n for n in names if n not in found]
    if missing:
        raise ValidationError([FieldError("lists", f"no list named {n!r}", value=n) for n in missing])
    return [found[n] for n in names]


def release_group_id(session: Session, release_id: int) -> int:
    """The id shared by a release and its language variants: one release for "one copy each"."""
    release = session.get(Release, release_id)
    if release is None:
        raise NotFound(f"release {release_id} does not exist")
    return release.group_id or release.id


def _reached(group_id: int) -> Any:
    """Contacts who received the release group, or are still pending in a live blast of it."""
    return (select(QueuedMessage.contact_id).join(Blast, Blast.id == QueuedMessage.blast_id)
            .join(Release, Release.id == Blast.release_id)
            .where(func.coalesce(Release.group_id, Release.id) == group_id,
                   or_(QueuedMessage.status == MessageStatus.sent,
                       and_(Blast.status.in_(LIVE), QueuedMessage.status.in_(PENDING)))))


def _audience_where(list_ids: Sequence[int], filters: dict[str, list[str]],
                    resend_of_id: int | None = None, *, leave_out_group: int | None = None) -> list[Any]:
    """Conditions on Contact: on one of the lists, matching the filters, active, not suppressed.
    Each contact once: membership is an IN (subquery), so no join multiplies rows. With
    `leave_out_group`, whoever already received that release group is left out."""
    conditions: list[Any] = [
        Contact.id.in_(select(list_memberships.c.contact_id)
                       .where(list_memberships.c.list_id.in_(list(list_ids)))),
        Contact.status == ContactStatus.active,
        ~exists().where(Suppression.email_key == Contact.email_key),
    ]
    if languages := filters.get("languages"):
        # "fr" also matches regional variants such as "fr-MA".
        conditions.append(or_(func.lower(Contact.language).in_([v.lower() for v in languages]),
                              *[func.lower(Contact.language).like(f"{v.lower()}-%") for v in languages]))
    if countries := filters.get("countries"):
        conditions.append(func.upper(Contact.country).in_([v.upper() for v in countries]))
    if media_types := filters.get("media_types"):
        conditions.append(func.lower(Contact.media_type).in_([v.lower() for v in media_types]))
    if tags := filters.get("tags"):  # any of the tags
        conditions.append(or_(*[Contact.tags.like(f"%,{t.lower()},%") for t in tags]))
    if resend_of_id is not None:
        conditions.append(Contact.id.in_(
            select(QueuedMessage.contact_id).where(QueuedMessage.blast_id == resend_of_id,
                                                   QueuedMessage.status != MessageStatus.sent)))
        # Never a second copy: not to whoever got this release from any blast, nor to whoever is
        # still pending in a live one (a resend clicked twice, an API retry).
        release_id = select(Blast.release_id).where(Blast.id == resend_of_id).scalar_subquery()
        conditions.append(~Contact.id.in_(
            select(QueuedMessage.contact_id).join(Blast, Blast.id == QueuedMessage.blast_id)
            .where(Blast.release_id == release_id,
                   or_(QueuedMessage.status == MessageStatus.sent,
                       and_(Blast.status.in_(LIVE), QueuedMessage.status.in_(PENDING))))))
    if leave_out_group is not None:
        conditions.append(~Contact.id.in_(_reached(leave_out_group)))
    return conditions


def count_audience(session: Session, list_names: Sequence[str], filters: dict[str, Any] | None,
                   *, release_id: int | None = None, include_already_sent: bool = False) -> int:
    """How many contacts a blast would reach; of a release, without those who already received it
    unless `include_already_sent`."""
    lists = _lists_by_name(session, list_names)
    group = release_group_id(session, release_id) if release_id and not include_already_sent else None
    where = _audience_where([c.id for c in lists], clean_filters(filters), leave_out_group=group)
    return int(session.scalar(select(func.count()).select_from(Contact).where(*where)) or 0)


def describe_audience(session: Session, release_id: int, list_names: Sequence[str],
                      filters: dict[str, Any] | None, *, include_already_sent: bool = False) -> Audience:
    """The audience of a blast of this release, with how many of it already received the release."""
    lists = _lists_by_name(session, list_names)
    group = release_group_id(session, release_id)
    where = _audience_where([c.id for c in lists], clean_filters(filters))
    reached = Contact.id.in_(_reached(group))
    everyone = int(session.scalar(select(func.count()).select_from(Contact).where(*where)) or 0)
    already = int(session.scalar(select(func.count()).select_from(Contact).where(*where, reached)) or 0)
    last = None
    if already:
        last = session.scalar(
            select(func.max(QueuedMessage.sent_at)).join(Blast, Blast.id == QueuedMessage.blast_id)
            .join(Release, Release.id == Blast.release_id)
            .where(func.coalesce(Release.group_id, Release.id) == group,
                   QueuedMessage.status == MessageStatus.sent,
                   QueuedMessage.contact_id.in_(select(Contact.id).where(*where))))
    return Audience(count=everyone if include_already_sent else everyone - already,
                    already_sent=already, last_sent_at=last)


def preview_audience(session: Session, list_names: Sequence[str], filters: dict[str, Any] | None,
                     limit: int = 10, *, release_id: int | None = None,
                     include_already_sent: bool = False) -> list[Contact]:
    lists = _lists_by_name(session, list_names)
    group = release_group_id(session, release_id) if release_id and not include_already_sent else None
    where = _audience_where([c.id for c in lists], clean_filters(filters), leave_out_group=group)
    return list(session.scalars(select(Contact).where(*where).order_by(Contact.id).limit(limit)))


def _blast_where(blast: Blast) -> list[Any]:
    group = None
    if not blast.include_already_sent and blast.resend_of_id is None:  # a resend has its own rule
        group = blast.release.group_id or blast.release_id
    return _audience_where([c.id for c in blast.lists], blast.filters or {}, blast.resend_of_id,
                           leave_out_group=group)


def _random_hex(session: Session) -> Any:
    """32 random hex digits per row, in SQL."""
    if session.get_bind().dialect.name == "postgresql":
        return func.replace(cast(func.gen_random_uuid(), String), "-", "")
    return func.lower(func.hex(func.randomblob(16)))


def enqueue_blast(session: Session, settings: Settings, blast: Blast, *, now: datetime) -> int:
    """Create the blast's ledger rows with one INSERT ... SELECT; returns how many were added.
    The Message-ID is made here, so every retry sends the identical id: 128 random bits per row,
    made by the database, opaque (no contact or blast id in it; the row keeps the mapping)."""
    message_id = literal("<") + _random_hex(session) + literal(f"@{settings.message_id_domain}>")
    source = select(literal(blast.id), Contact.id, Contact.email, literal(str(MessageStatus.queued)),
                    literal(0), message_id, literal(now, QueuedMessage.created_at.type),
                    literal(now, QueuedMessage.updated_at.type)).where(*_blast_where(blast))
    columns = ["blast_id", "contact_id", "email", "status", "attempts", "message_id",
               "created_at", "updated_at"]
    table: Table = QueuedMessage.__table__  # type: ignore[assignment]
    insert = (postgresql.insert(table) if session.get_bind().dialect.name == "postgresql"
              else sqlite.insert(table))
    statement = insert.from_select(columns, source).on_conflict_do_nothing(
        index_elements=["blast_id", "contact_id"])
    session.execute(statement)
    # Counted rather than taken from rowcount, which drivers do not all report for INSERT ... SELECT.
    count = int(session.scalar(select(func.count()).select_from(QueuedMessage)
                               .where(QueuedMessage.blast_id == blast.id)) or 0)
    log.info("blast %s: queued %d messages", blast.id, count)
    return count


# ---- lifecycle ------------------------------------------------------------------------------

def _event(session: Session, blast: Blast, action: str, actor: str | None, now: datetime,
           detail: str | None = None) -> None:
    session.add(BlastEvent(blast_id=blast.id, action=action, actor=actor, detail=detail, at=now))


def get_blast(session: Session, blast_id: int) -> Blast:
    blast = session.get(Blast, blast_id)
    if blast is None:
        raise NotFound(f"blast {blast_id} does not exist")
    return blast


def list_blasts(session: Session, status: str | None = None) -> list[Blast]:
    query = select(Blast).order_by(Blast.id.desc())
    if status:
        query = query.where(Blast.status == status)
    return list(session.scalars(query))


def check_blast_times(*, send_at: datetime | None, start_before: datetime | None,
                      stop_after: datetime | None, now: datetime, zone: Any = None) -> None:
    """The schedule's times, checked before anything is stored (the schedule form calls it before
    its confirmation step): aware, not in the past (a minute's grace), "do not start after" not
    before the send time, expiry after it. `zone` names the office zone in the error."""
    errors: list[FieldError] = []
    for name, value in (("send_at", send_at), ("start_before", start_before), ("stop_after", stop_after)):
        if value is not None and value.tzinfo is None:
            errors.append(FieldError(name, "needs a time zone"))
    if errors:
        raise ValidationError(errors)
    if send_at is not None and send_at < now - PAST_TOLERANCE:
        shown = send_at.astimezone(zone) if zone is not None else send_at
        where = f" ({zone})" if zone is not None else ""
        errors.append(FieldError("send_at", f"is in the past: {shown:%Y-%m-%d %H:%M}{where}",
                                 value=send_at.isoformat()))
        raise ValidationError(errors)
    when = send_at or now
    if start_before is not None and start_before < when:
        errors.append(FieldError("start_before", "is before the send time"))
    if stop_after is not None and stop_after <= when:
        errors.append(FieldError("stop_after", "is not after the send time"))
    if errors:
        raise ValidationError(errors)


def create_blast(session: Session, settings: Settings, *, release_id: int, list_names: Sequence[str],
                 filters: dict[str, Any] | None = None, send_at: datetime | None = None,
                 start_before: datetime | None = None, stop_after: datetime | None = None,
                 actor: str | None = None, now: datetime, resend_of_id: int | None = None,
                 schedule: bool = True, actor_role: str | None = None,
                 include_already_sent: bool = False, attach_pdf: bool = False,
                 track: bool | None = None) -> Blast:
    """Create a blast; with `attach_pdf` every message carries the release as a PDF; with
    `track` opens and clicks are recorded (None: COMMUNIQUE_TRACKING_DEFAULT). Without
    `send_at` it starts now (its ledger rows exist on return). With
    `schedule=False`, or an editor's blast when approval is required, it stays a draft.
    Contacts who already received the release (any variant, any blast) are left out unless
    `include_already_sent`; `blast.already_sent_count` says how many. A blast that would reach
    nobody because everyone already received it is refused (Conflict): nothing is created."""
    errors: list[FieldError] = []
    release = session.get(Release, release_id)
    if release is None:
        errors.append(FieldError("release_id", f"release {release_id} does not exist"))
    if errors:
        raise ValidationError(errors)
    check_blast_times(send_at=send_at, start_before=start_before, stop_after=stop_after, now=now,
                      zone=settings.zone)
    when = max(send_at or now, now)
    lists = _lists_by_name(session, list_names)
    already = 0
    if resend_of_id is None:
        audience = describe_audience(session, release_id, list_names, filters,
                                     include_already_sent=include_already_sent)
        already = audience.already_sent
        if audience.count == 0 and already:
            raise Conflict(f"all {already} recipients already received this release; include them "
                           "again only on purpose (include_already_sent, --include-already-sent)")
    needs_approval = bool(settings.require_approval and actor_role == Role.editor)
    blast = Blast(release_id=release_id, status=BlastStatus.draft, send_at=when, start_before=start_before,
                  stop_after=stop_after, filters=clean_filters(filters), resend_of_id=resend_of_id,
                  needs_approval=needs_approval, created_by=actor, created_at=now, updated_at=now,
                  include_already_sent=include_already_sent, already_sent_count=already,
                  attach_pdf=attach_pdf,
                  track=settings.tracking_default if track is None else track)
    blast.lists = lists
    session.add(blast)
    session.flush()
    blast.recipient_count = int(session.scalar(
        select(func.count()).select_from(Contact).where(*_blast_where(blast))) or 0)
    if already:
        log.info("blast %s: %d contacts already received release %s: %s", blast.id, already,
                 release_id, "included" if include_already_sent else "left out")
    _event(session, blast, "created", actor, now,
           f"resend of blast {resend_of_id}" if resend_of_id else None)
    if schedule and not needs_approval:
        _schedule(session, settings, blast, when, actor, now)
    session.flush()
    return blast


def _schedule(session: Session, settings: Settings | None, blast: Blast, send_at: datetime, actor: str | None,
              now: datetime) -> None:
    blast.status = BlastStatus.scheduled
    blast.send_at = send_at
    _event(session, blast, "scheduled", actor, now, send_at.isoformat())
    if settings is not None:
        # Imported here: rendering loads the templates, which `blasts create` does not need.
        from service.rendering.prepare import dkim_warning, sender_address

        warning = dkim_warning(settings, sender_address(blast.release, settings))
        if warning:
            log.warning("blast %s: %s", blast.id, warning)
    session.flush()
    if send_at <= now and settings is not None:
        start_blast(session, settings, blast.id, now=now)


def approve_blast(session: Session, blast_id: int, *, actor: str | None, now: datetime,
                  settings: Settings | None = None) -> Blast:
    """A sender approves an editor's draft: it is scheduled for its send time. Given `settings`, a
    due blast starts at once; otherwise the scheduler starts it on its next run."""
    blast = get_blast(session, blast_id)
    if blast.status != BlastStatus.draft or not blast.needs_approval or blast.approved_at:
        raise Conflict(f"blast {blast_id} is not waiting for approval")
    blast.approved_by, blast.approved_at = actor, now
    blast.approved_hash = content_fingerprint(session, release_group_id(session, blast.release_id))
    _event(session, blast, "approved", actor, now)
    send_at = blast.send_at if blast.send_at and blast.send_at > now else now
    _schedule(session, settings, blast, send_at, actor, now)
    return blast


def withdraw_approvals(session: Session, group_id: int, *, now: datetime, actor: str | None,
                       what: str) -> list[int]:
    """The release changed after a sender approved its blasts: each approved blast not yet started
    goes back to waiting for approval (draft), with the reason in its history."""
    approved = list(session.scalars(
        select(Blast).join(Release, Release.id == Blast.release_id)
        .where(func.coalesce(Release.group_id, Release.id) == group_id, Blast.needs_approval,
               Blast.approved_at.is_not(None),
               Blast.status.in_((BlastStatus.draft, BlastStatus.scheduled)))))
    for blast in approved:
        blast.status, blast.approved_at, blast.approved_by, blast.approved_hash = \
            BlastStatus.draft, None, None, None
        blast.updated_at = now
        _event(session, blast, "approval_withdrawn", actor, now, f"the release changed: {what}")
        log.warning("blast %s: approval withdrawn, release group %s changed (%s)", blast.id,
                    group_id, what)
    session.flush()
    return [b.id for b in approved]


def _approval_holds(session: Session, blast: Blast) -> bool:
    """A blast that needed approval starts only with the content that was approved."""
    if not blast.needs_approval:
        return True
    group = release_group_id(session, blast.release_id)
    return blast.approved_hash is not None and blast.approved_hash == content_fingerprint(session, group)


def schedule_blast(session: Session, blast_id: int, *, send_at: datetime, actor: str | None,
                   now: datetime, settings: Settings | None = None) -> Blast:
    blast = get_blast(session, blast_id)
    if blast.status != BlastStatus.draft:
        raise Conflict(f"blast {blast_id} is {blast.status}; only a draft can be scheduled")
    if blast.needs_approval and not blast.approved_at:
        raise Conflict(f"blast {blast_id} needs a sender's approval first")
    check_blast_times(send_at=send_at, start_before=blast.start_before, stop_after=blast.stop_after,
                      now=now, zone=settings.zone if settings else None)
    _schedule(session, settings, blast, max(send_at, now), actor, now)
    return blast


def reschedule_blast(session: Session, blast_id: int, *, send_at: datetime, actor: str | None,
                     now: datetime, settings: Settings | None = None) -> Blast:
    blast = get_blast(session, blast_id)
    if blast.status not in (BlastStatus.scheduled, BlastStatus.draft):
        raise Conflict(f"blast {blast_id} is {blast.status}; it can no longer be rescheduled")
    check_blast_times(send_at=send_at, start_before=blast.start_before, stop_after=blast.stop_after,
                      now=now, zone=settings.zone if settings else None)
    send_at = max(send_at, now)
    if blast.status == BlastStatus.draft:
        blast.send_at = send_at
        _event(session, blast, "rescheduled", actor, now, send_at.isoformat())
        return blast
    blast.send_at = send_at
    _event(session, blast, "rescheduled", actor, now, send_at.isoformat())
    session.flush()
    if send_at <= now and settings is not None:
        start_blast(session, settings, blast.id, now=now)
    return blast


def undo_send(session: Session, blast_id: int, *, actor: str | None, now: datetime) -> Blast:
    """Undo a "send now" during its countdown: the scheduled blast goes back to draft, untouched.
    Once it has started, pause or cancel it instead (Conflict)."""
    blast = get_blast(session, blast_id)
    result = session.execute(update(Blast).where(Blast.id == blast_id, Blast.status == BlastStatus.scheduled,
                                                 Blast.started_at.is_(None))
                             .values(status=BlastStatus.draft, updated_at=now)
                             .execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.refresh(blast)
        raise Conflict(f"blast {blast_id} is {blast.status}: too late to undo; pause or cancel it")
    session.refresh(blast)
    _event(session, blast, "undone", actor, now)
    log.info("blast %s: send now undone by %s", blast_id, actor)
    return blast


def _transition(session: Session, blast_id: int, allowed: Sequence[BlastStatus], target: BlastStatus,
                verb: str, **values: Any) -> Blast:
    """Change status only from an allowed one, with a guarded UPDATE (a worker may race us)."""
    blast = get_blast(session, blast_id)
    result = session.execute(update(Blast).where(Blast.id == blast_id, Blast.status.in_(allowed))
                             .values(status=target, **values).execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.refresh(blast)
        raise Conflict(f"blast {blast_id} is {blast.status}; it cannot be {verb}")
    session.refresh(blast)
    return blast


def pause_blast(session: Session, blast_id: int, *, actor: str | None, now: datetime,
                reason: str | None = None) -> Blast:
    """Stop sending: every worker sees it within half a second (Claimer.watch_stops), starts no
    new transaction of the blast and puts the rows it claimed but did not start back to
    `queued`; messages already past DATA finish and are recorded."""
    blast = _transition(session, blast_id, [BlastStatus.running], BlastStatus.paused, "paused",
                        paused_reason=reason or f"paused by {actor or 'someone'}", updated_at=now)
    _event(session, blast, "paused", actor, now, reason)
    record_event(session, EventType.blast_paused, {"blast_id": blast.id, "reason": blast.paused_reason},
                 now=now)
    return blast


def resume_blast(session: Session, blast_id: int, *, actor: str | None, now: datetime) -> Blast:
    """Continue exactly where it stopped: only rows not yet sent are claimed again."""
    blast = _transition(session, blast_id, [BlastStatus.paused], BlastStatus.running, "resumed",
                        paused_reason=None, updated_at=now)
    _event(session, blast, "resumed", actor, now)
    return blast


def cancel_blast(session: Session, blast_id: int, *, actor: str | None, now: datetime) -> Blast:
    """Nothing more is sent: in the same transaction every row not sent becomes `cancelled`,
    those a worker has claimed (`sending`) included; a worker stops within half a second, as for
    a pause. A message already past DATA is recorded as what it became (`sent`, `failed`,
    `bounced`); a temporary refusal leaves it `cancelled` (see queue.record_attempts).
    resend_to_unsent can reach the cancelled rows later."""
    blast = _transition(session, blast_id, [BlastStatus.draft, BlastStatus.scheduled, BlastStatus.running,
                                            BlastStatus.paused], BlastStatus.cancelled, "cancelled",
                        finished_at=now, updated_at=now)
    count = cancel_unsent(session, blast_id, now=now)
    _event(session, blast, "cancelled", actor, now, f"{count} messages not sent" if count else None)
    return blast


def start_blast(session: Session, settings: Settings, blast_id: int, *, now: datetime) -> bool:
    """The one atomic start: only the caller whose UPDATE moves scheduled -> running enqueues, in
    the same transaction, so two schedulers never start a blast twice and a crash in between
    cannot leave a running blast without rows."""
    result = session.execute(
        update(Blast).where(Blast.id == blast_id, Blast.status == BlastStatus.scheduled,
                            Blast.send_at <= now,
                            or_(Blast.start_before.is_(None), Blast.start_before >= now))
        .values(status=BlastStatus.running, started_at=now, updated_at=now)
        .execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    blast = get_blast(session, blast_id)
    session.refresh(blast)
    if not _approval_holds(session, blast):  # changed behind the approval's back: do not send it
        blast.status, blast.started_at = BlastStatus.draft, None
        blast.approved_at, blast.approved_by, blast.approved_hash = None, None, None
        _event(session, blast, "approval_withdrawn", None, now,
               "the release is not the approved version: not started")
        log.warning("blast %s: not started, its release differs from the approved version", blast.id)
        session.flush()
        return False
    count = enqueue_blast(session, settings, blast, now=now)
    blast.recipient_count = count
    _event(session, blast, "started", None, now, f"{count} recipients")
    record_event(session, EventType.blast_started,
                 {"blast_id": blast.id, "release_id": blast.release_id, "recipients": count}, now=now)
    session.flush()
    return True


def run_due_blasts(session_factory: sessionmaker[Session] | Callable[[], Session], settings: Settings, *,
                   now: datetime) -> list[int]:
    """Expire blasts past their "do not start after", start the due ones (each in its own
    transaction), then housekeeping (stale claims, finished blasts, "stop sending after").
    Returns the ids of the blasts this call started."""
    started: list[int] = []
    with session_scope(session_factory) as session:  # type: ignore[arg-type]
        expired = list(session.scalars(select(Blast.id).where(
            Blast.status == BlastStatus.scheduled, Blast.send_at <= now, Blast.start_before < now)))
        for blast_id in expired:
            result = session.execute(update(Blast).where(Blast.id == blast_id,
                                                         Blast.status == BlastStatus.scheduled)
                                     .values(status=BlastStatus.expired, finished_at=now, updated_at=now))
            if result.rowcount == 1:  # type: ignore[attr-defined]
                session.add(BlastEvent(blast_id=blast_id, action="expired", at=now,
                                       detail="not started before its \"do not start after\" time"))
                log.warning("blast %s: expired before it could start", blast_id)
        due = list(session.scalars(select(Blast.id).where(Blast.status == BlastStatus.scheduled,
                                                          Blast.send_at <= now).order_by(Blast.send_at)))
    for blast_id in due:
        with session_scope(session_factory) as session:  # type: ignore[arg-type]
            if start_blast(session, settings, blast_id, now=now):
                started.append(blast_id)
    with session_scope(session_factory) as session:  # type: ignore[arg-type]
        housekeep(session, settings, now=now)
    return started


def resend_to_unsent(session: Session, settings: Settings, blast_id: int, *, actor: str | None,
                     now: datetime, send_at: datetime | None = None) -> Blast:
    """A new blast of the same release to the contacts of `blast_id` who did not get it (their row
    is not `sent`), still active and not suppressed."""
    original = get_blast(session, blast_id)
    if original.status not in (BlastStatus.finished, BlastStatus.cancelled, BlastStatus.expired):
        raise Conflict(f"blast {blast_id} is {original.status}; resend once it is finished, "
                       "cancelled or expired")
    return create_blast(session, settings, release_id=original.release_id,
                        list_names=[c.name for c in original.lists], filters=original.filters,
                        send_at=send_at, actor=actor, now=now, resend_of_id=original.id,
                        attach_pdf=original.attach_pdf, track=original.track)


def cancel_unsent(session: Session, blast_id: int, *, now: datetime) -> int:
    """Mark the blast's rows not sent `cancelled`. Claimed rows too: no one claims a cancelled
    row again, a worker's put-back only moves `sending` rows, and its recording of a message
    already handed over overwrites `cancelled` with what happened (a guarded UPDATE each, so no
    order of the concurrent transactions leaves a row `queued` or `sending`)."""
    result = session.execute(
        update(QueuedMessage).where(QueuedMessage.blast_id == blast_id,
                                    QueuedMessage.status.in_(PENDING))
        .values(status=MessageStatus.cancelled, next_attempt_at=None, claimed_at=None,
                claimed_by=None, updated_at=now)
        .execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# ---- progress -------------------------------------------------------------------------------

def blast_counts(session: Session, blast_id: int) -> dict[str, int]:
    counts = {str(s): 0 for s in MessageStatus}
    for status, n in session.execute(select(QueuedMessage.status, func.count())
                                     .where(QueuedMessage.blast_id == blast_id)
                                     .group_by(QueuedMessage.status)):
        counts[status] = int(n)
    return counts


def blast_progress(session: Session, blast_id: int, *, now: datetime) -> dict[str, Any]:
    """Counts per ledger status (`bounced` includes the rows a later DSN bounced), what came back
    by kind (`inbound`: bounces, complaints, unsubscribes by mail, replies), the send rate over
    the last minute (msgs/s) and an ETA."""
    blast = get_blast(session, blast_id)
    counts = blast_counts(session, blast_id)
    since = now - timedelta(seconds=RATE_WINDOW_SECONDS)
    recent = int(session.scalar(select(func.count()).select_from(QueuedMessage).where(
        QueuedMessage.blast_id == blast_id, QueuedMessage.sent_at >= since)) or 0)
    first = session.scalar(select(func.min(QueuedMessage.sent_at)).where(
        QueuedMessage.blast_id == blast_id, QueuedMessage.sent_at >= since))
    span = max((now - first).total_seconds(), 1.0) if first else RATE_WINDOW_SECONDS
    rate = round(recent / span, 2) if recent else 0.0
    remaining = sum(counts[s] for s in PENDING)
    eta = None
    if blast.status == BlastStatus.running and remaining and rate:
        eta = (now + timedelta(seconds=remaining / rate)).isoformat()
    return {"id": blast.id, "status": blast.status, "counts": counts,
            "recipients": blast.recipient_count or sum(counts.values()), "rate": rate, "eta": eta,
            "paused_reason": blast.paused_reason,
            "inbound": blast_inbound_counts(session, blast_id)}


def list_deliveries(session: Session, blast_id: int, *, status: str | None = None, offset: int = 0,
                    limit: int = 100) -> list[QueuedMessage]:
    get_blast(session, blast_id)
    query = select(QueuedMessage).where(QueuedMessage.blast_id == blast_id).order_by(QueuedMessage.id)
    if status:
        if status not in MessageStatus.__members__:
            raise ValidationError(FieldError("status", f"unknown status {status!r}"))
        query = query.where(QueuedMessage.status == status)
    return list(session.scalars(query.offset(offset).limit(limit)))


def export_deliveries_csv(session: Session, blast_id: int, out: IO[str], *, status: str | None = None) -> int:
    """Write the ledger rows as CSV (streamed in pages, never the whole blast in memory)."""
    from service.contacts.store import neutralize_formula  # here: workers do not need the contact stack

    writer = csv.writer(out)
    writer.writerow(["email", "contact_id", "status", "attempts", "last_smtp_code", "last_smtp_reply",
                     "message_id", "sent_at", "next_attempt_at"])
    offset, written = 0, 0
    while page := list_deliveries(session, blast_id, status=status, offset=offset, limit=1000):
        for row in page:
            # Text cells pass through the contacts export's formula guard: an SMTP reply is
            # written by a remote server and an address may start with "=" or "-".
            writer.writerow([neutralize_formula(row.email), row.contact_id, row.status, row.attempts,
                             row.last_smtp_code or "", neutralize_formula(row.last_smtp_reply),
                             neutralize_formula(row.message_id),
                             row.sent_at.isoformat() if row.sent_at else "",
                             row.next_attempt_at.isoformat() if row.next_attempt_at else ""])
        written += len(page)
        offset += len(page)
        session.expunge_all()
    return written


# ---- test sends -----------------------------------------------------------------------------

def send_test(session: Session, settings: Settings, release_id: int, addresses: Sequence[str], *,
              as_contact_id: int | None = None, now: datetime, actor: str | None = None,
              actor_role: str | None = None) -> list[dict[str, Any]]:
    """Send the release, as `as_contact_id` would get it, to each address now; the subject is
    marked [TEST] and nothing is written to the ledger. Returns one result per address.

    A test is still an email to a person: an address on the do-not-contact list, or of a contact
    who unsubscribed or bounced, is skipped (outcome `suppressed`); each user may test-send to
    `settings.test_sends_per_hour` addresses an hour; with approval required, an editor may test
    only to the addresses of this installation's accounts (the release is not approved yet)."""
    import asyncio
    import dataclasses

    from service.contacts.store import normalize_email
    from service.delivery.smtp import send_each
    from service.rendering.prepare import Recipient, new_message_id, prepare_release

    cleaned = list(dict.fromkeys(normalize_email(a)[0] for a in addresses if a and a.strip()))
    if not cleaned:
        raise ValidationError(FieldError("addresses", "give at least one address"))
    if len(cleaned) > 20:
        raise ValidationError(FieldError("addresses", "at most 20 test addresses at a time"))
    if actor is not None:
        _check_test_quota(session, settings, actor, actor_role, cleaned, now=now)
    contact = None
    if as_contact_id is not None:
        contact = session.get(Contact, as_contact_id)
        if contact is None:
            raise ValidationError(FieldError("as_contact_id", f"contact {as_contact_id} does not exist"))
    blocked = _not_mailable(session, cleaned)
    prepared = prepare_release(session, release_id, settings)
    messages = []
    for address in cleaned:
        if address.lower() in blocked:
            continue
        recipient = (dataclasses.replace(Recipient.from_contact(contact), email=address, contact_id=None)
                     if contact
                     else Recipient(email=address))
        messages.append((address, prepared.render_bytes(recipient, message_id=new_message_id(settings),
                                                        now=now, test=True)))
    results = asyncio.run(send_each(settings, prepared.envelope_from, messages)) if messages else []
    log.info("release %s: test send to %d addresses (%d skipped, not mailable)", release_id,
             len(messages), len(cleaned) - len(messages))
    answers = {address: {"address": address, "outcome": str(result.outcome),
                         "smtp_code": result.smtp_code, "smtp_reply": result.smtp_reply}
               for (address, _), (result, _duration) in zip(messages, results, strict=True)}
    report = [answers.get(address) or {"address": address, "outcome": "suppressed", "smtp_code": None,
                                       "smtp_reply": "on the do-not-contact list, unsubscribed or bounced"}
              for address in cleaned]
    if actor is not None:
        session.add_all(TestSend(release_id=release_id, actor=actor, address=r["address"],
                                 outcome=r["outcome"], at=now) for r in report)
        session.flush()
    return report


def _check_test_quota(session: Session, settings: Settings, actor: str, actor_role: str | None,
                      addresses: Sequence[str], *, now: datetime) -> None:
    if settings.require_approval and actor_role == Role.editor:
        accounts = {e.lower() for e in session.scalars(select(User.email).where(User.is_active))}
        outside = [a for a in addresses if a.lower() not in accounts]
        if outside:
            raise ValidationError([FieldError("addresses", "before approval, an editor may send tests "
                                              "only to the addresses of this installation's accounts",
                                              value=a) for a in outside])
    used = int(session.scalar(select(func.count()).select_from(TestSend).where(
        TestSend.actor == actor, TestSend.at > now - timedelta(hours=1))) or 0)
    if used + len(addresses) > settings.test_sends_per_hour:
        left = max(settings.test_sends_per_hour - used, 0)
        raise ValidationError(FieldError(
            "addresses", f"at most {settings.test_sends_per_hour} test addresses an hour; "
                         f"{left} left now"))


def _not_mailable(session: Session, addresses: Sequence[str]) -> set[str]:
    """The addresses a test must not reach: suppressed, or of a contact no longer active."""
    keys = [a.lower() for a in addresses]
    suppressed = set(session.scalars(select(Suppression.email_key).where(Suppression.email_key.in_(keys))))
    inactive = set(session.scalars(select(Contact.email_key).where(
        Contact.email_key.in_(keys), Contact.status != ContactStatus.active)))
    return suppressed | inactive
