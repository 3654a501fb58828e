"""Act on a classified message: only when its VERP token verifies does anything change (a forged
DSN or a message to the bare bounce address is stored, never acted on). Every message is kept
in `inbound_messages` with the action taken."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.config import Settings
from service.contacts.store import mark_bounced, suppress, unsubscribe_contact
from service.inbound.classify import Classification, classify_message
from service.models import (
    Contact,
    ContactStatus,
    DeliveryLog,
    DeliveryOutcome,
    InboundKind,
    InboundMessage,
    MessageStatus,
    QueuedMessage,
)
from service.rendering.verp import VerpToken, verify_address

log = logging.getLogger(__name__)


def process_message(session: Session, settings: Settings, raw: bytes, *, envelope_to: Sequence[str],
                    envelope_from: str | None, now: datetime) -> InboundMessage:
    """Classify one message, act on it when its token verifies, store it; the caller commits."""
    found = _first_verified(settings, envelope_to)
    classified = classify_message(raw)
    row = None
    if found is not None:
        row = session.scalar(select(QueuedMessage).where(
            QueuedMessage.blast_id == found.blast_id, QueuedMessage.contact_id == found.contact_id))
    stored = InboundMessage(
        kind=classified.kind, blast_id=row.blast_id if row else None,
        contact_id=row.contact_id if row else None, queued_message_id=row.id if row else None,
        envelope_from=(envelope_from or "")[:320] or None,
        envelope_to=(envelope_to[0] if envelope_to else "")[:320],
        from_address=(classified.from_address or "")[:320] or None, subject=classified.subject,
        text=classified.text, dsn_status=classified.dsn_status, diagnostic=classified.diagnostic,
        action="", raw=raw, raw_size=len(raw), received_at=now)
    session.add(stored)
    session.flush()
    if found is None:
        stored.action = "none: no valid token"
    elif row is None:
        stored.action = "none: no such ledger row"
    else:
        stored.action = _act(session, settings, classified, row, stored, now=now)
    log.info("inbound %s: %s, %s", stored.id, stored.kind, stored.action)
    return stored


def _first_verified(settings: Settings, addresses: Sequence[str]) -> VerpToken | None:
    for address in addresses:
        token = verify_address(settings, address)
        if token is not None:
            return token
    return None


def _act(session: Session, settings: Settings, classified: Classification, row: QueuedMessage,
         stored: InboundMessage, *, now: datetime) -> str:
    kind = classified.kind
    if kind == InboundKind.hard_bounce:
        return _hard_bounce(session, classified, row, stored, now=now)
    if kind == InboundKind.soft_bounce:
        return _soft_bounce(session, settings, row, now=now)
    contact = session.get(Contact, row.contact_id)
    if contact is None:
        return "none: the contact is gone"
    if kind == InboundKind.complaint:
        suppress(session, [contact.email], reason=f"complaint (inbound message {stored.id})",
                 actor="inbound", now=now)
        return "contact suppressed"
    if kind == InboundKind.unsubscribe:
        was = contact.status
        unsubscribe_contact(session, contact.id, now=now, source="mailto")
        return "contact unsubscribed" if was == ContactStatus.active else f"none: contact was {was}"
    if kind in (InboundKind.reply, InboundKind.auto_reply):
        return "stored"
    return "none: not understood"


def _hard_bounce(session: Session, classified: Classification, row: QueuedMessage,
                 stored: InboundMessage, *, now: datetime) -> str:
    """The ledger row becomes `bounced` with the DSN's status, even after it was `sent`; the
    attempt count is not raised (this is a report on the attempt already logged)."""
    reply = " ".join(part for part in (classified.dsn_status, classified.diagnostic) if part)
    reply = (reply or "asynchronous bounce")[:1000]
    row.status = MessageStatus.bounced
    row.last_smtp_code = classified.smtp_code or 550
    row.last_smtp_reply = reply
    row.updated_at = now
    session.add(DeliveryLog(queued_message_id=row.id, blast_id=row.blast_id, attempt=row.attempts,
                            outcome=DeliveryOutcome.bounced, smtp_code=row.last_smtp_code,
                            smtp_reply=reply, error_type=f"DSN (inbound message {stored.id})",
                            at=now))
    mark_bounced(session, row.contact_id, now=now)
    return "ledger row and contact bounced"


def _soft_bounce(session: Session, settings: Settings, row: QueuedMessage, *, now: datetime) -> str:
    """Counted per contact over separate blasts (one blast's retries count once)."""
    session.flush()
    blast_count = session.scalar(
        select(func.count(func.distinct(InboundMessage.blast_id)))
        .where(InboundMessage.contact_id == row.contact_id,
               InboundMessage.kind == InboundKind.soft_bounce,
               InboundMessage.blast_id.is_not(None))) or 0
    if blast_count >= settings.soft_bounce_limit:
        mark_bounced(session, row.contact_id, now=now)
        return f"soft bounce {blast_count} of {settings.soft_bounce_limit}: contact bounced"
    return f"soft bounce {blast_count} of {settings.soft_bounce_limit} counted"
