"""Media contacts: validate, normalize, import, dedupe; consent, status and suppression."""

from __future__ import annotations

import logging
from datetime import datetime

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import FieldError, NotFound, ValidationError
from .events import EventType, record_event
from .models import Contact, ContactStatus, Suppression

log = logging.getLogger(__name__)


def normalize_email(raw: str) -> tuple[str, str]:
    """Validate an address (syntax only, no DNS) -> (normalized address, case-insensitive key).

    Trimmed, domain lower-cased, IDN domains kept in their Unicode form."""
    candidate = (raw or "").strip().strip("<>").strip()
    if not candidate:
        raise ValidationError(FieldError("email", "is required"))
    try:
        info = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValidationError(FieldError("email", f"not a valid address: {exc}",
                                         value=candidate)) from exc
    return info.normalized, info.normalized.lower()


def is_suppressed(session: Session, email_key: str) -> bool:
    return session.scalar(select(Suppression.id).where(Suppression.email_key == email_key)) \
        is not None


def unsubscribe_contact(session: Session, contact_id: int, *, now: datetime,
                        source: str = "link") -> Contact:
    """The journalist asked to stop: never mailed again, and no import re-activates them."""
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"contact {contact_id} does not exist")
    if contact.status == ContactStatus.active:
        contact.status = ContactStatus.unsubscribed
        contact.unsubscribed_at = now
        log.info("contact %s: unsubscribed (%s)", contact.id, source)
        record_event(session, EventType.contact_unsubscribed,
                     {"contact_id": contact.id, "email": contact.email, "source": source}, now=now)
    return contact


def mark_bounced(session: Session, contact_id: int, *, now: datetime) -> None:
    """A permanent 5.1.x refusal: the address does not exist, so no later blast mails it."""
    contact = session.get(Contact, contact_id)
    if contact is not None and contact.status == ContactStatus.active:
        contact.status = ContactStatus.bounced
        contact.bounced_at = now
        log.info("contact %s: marked bounced", contact.id)
        record_event(session, EventType.contact_bounced,
                     {"contact_id": contact.id, "email": contact.email}, now=now)
