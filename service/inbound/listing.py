"""What came back, read for the doors: a blast's replies and per-recipient events, a contact's
messages, counts by kind. Lists never load the raw message (it can be megabytes)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from service.models import InboundKind, InboundMessage

REPLY_KINDS = (InboundKind.reply, InboundKind.auto_reply)
# What a recipient's row on the blast page shows beside its ledger status.
RECIPIENT_KINDS = (InboundKind.hard_bounce, InboundKind.soft_bounce, InboundKind.complaint,
                   InboundKind.unsubscribe)
EXCERPT_CHARS = 280


def blast_inbound_counts(session: Session, blast_id: int) -> dict[str, int]:
    """Messages that came back for one blast, by kind (every kind, zero included)."""
    counts = {str(kind): 0 for kind in InboundKind}
    for kind, n in session.execute(select(InboundMessage.kind, func.count())
                                   .where(InboundMessage.blast_id == blast_id)
                                   .group_by(InboundMessage.kind)):
        counts[kind] = int(n)
    return counts


def list_blast_replies(session: Session, blast_id: int, *, kinds: Iterable[str] = REPLY_KINDS,
                       offset: int = 0, limit: int = 100) -> list[InboundMessage]:
    """A blast's replies (human and automatic unless `kinds` says), newest first."""
    return list(session.scalars(
        select(InboundMessage).options(defer(InboundMessage.raw))
        .where(InboundMessage.blast_id == blast_id, InboundMessage.kind.in_([str(k) for k in kinds]))
        .order_by(InboundMessage.received_at.desc(), InboundMessage.id.desc())
        .offset(offset).limit(limit)))


def recipient_events(session: Session, blast_id: int,
                     contact_ids: Iterable[int]) -> dict[int, list[InboundMessage]]:
    """Bounces, complaints and unsubscribes by mail of these recipients of one blast, oldest first."""
    wanted = list(contact_ids)
    found: dict[int, list[InboundMessage]] = {}
    if not wanted:
        return found
    for row in session.scalars(
            select(InboundMessage).options(defer(InboundMessage.raw), defer(InboundMessage.text))
            .where(InboundMessage.blast_id == blast_id, InboundMessage.contact_id.in_(wanted),
                   InboundMessage.kind.in_([str(k) for k in RECIPIENT_KINDS]))
            .order_by(InboundMessage.id)):
        if row.contact_id is not None:
            found.setdefault(row.contact_id, []).append(row)
    return found


def list_contact_inbound(session: Session, contact_id: int, *, limit: int = 100) -> list[InboundMessage]:
    """Everything that came back from one contact, newest first."""
    return list(session.scalars(
        select(InboundMessage).options(defer(InboundMessage.raw))
        .where(InboundMessage.contact_id == contact_id)
        .order_by(InboundMessage.received_at.desc(), InboundMessage.id.desc()).limit(limit)))


def reply_count(session: Session) -> int:
    """Human replies to the organisation's blasts (out-of-office ones not counted)."""
    return int(session.scalar(select(func.count()).select_from(InboundMessage).where(
        InboundMessage.kind == InboundKind.reply, InboundMessage.blast_id.is_not(None))) or 0)


def inbound_counts_by_kind(session: Session) -> dict[str, int]:
    """Every message ever received, by kind (zero included): for /metrics."""
    counts = {str(kind): 0 for kind in InboundKind}
    for kind, n in session.execute(select(InboundMessage.kind, func.count())
                                   .group_by(InboundMessage.kind)):
        counts[kind] = int(n)
    return counts


def excerpt(text: str | None, limit: int = EXCERPT_CHARS) -> str:
    """The start of a message's text on one line (quoted lines of the release left out)."""
    lines = [line.strip() for line in (text or "").splitlines()]
    flat = " ".join(line for line in lines if line and not line.startswith(">"))
    return flat if len(flat) <= limit else flat[:limit - 1].rstrip() + "…"
