"""Outgoing events: recorded in the outbox table `outgoing_events` in the same transaction as the
change they describe, then delivered (signed, retried) to COMMUNIQUE_EVENTS_URL by a dispatcher."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from .models import OutgoingEvent


class EventType(StrEnum):
    blast_started = "blast.started"
    blast_finished = "blast.finished"
    blast_paused = "blast.paused"
    contact_unsubscribed = "contact.unsubscribed"
    contact_bounced = "contact.bounced"


def record_event(session: Session, event_type: EventType, payload: dict[str, Any], *,
                 now: datetime) -> OutgoingEvent:
    """Queue an event; delivery happens later, outside the caller's transaction."""
    event = OutgoingEvent(event_type=str(event_type), payload=payload, next_attempt_at=now,
                          created_at=now)
    session.add(event)
    return event
