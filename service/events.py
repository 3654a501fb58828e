"""Outgoing events: recorded in the outbox table `outgoing_events` in the same transaction as the
change they describe, then delivered (signed, retried) to COMMUNIQUE_EVENTS_URL by a dispatcher."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook

from service.config import Settings
from service.db import session_scope
from service.models import OutgoingEvent

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 12  # with the doubling below: about 34 hours of retries
RETRY_BASE_SECONDS = 30
RETRY_MAX_SECONDS = 6 * 3600
BATCH_SIZE = 100
TIMEOUT_SECONDS = 10.0


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


def dispatch_events(session_factory: Callable[[], Session], settings: Settings, *,
                    now: datetime) -> int:
    """POST the due events to COMMUNIQUE_EVENTS_URL, signed like Standard Webhooks (the event id
    is the `webhook-id`, so a receiver can drop the duplicates at-least-once delivery can make).
    A failure is retried with exponential backoff. No transaction is held during a request.
    Returns the number of events delivered."""
    if not settings.events_url:
        return 0
    if not settings.events_secret:
        log.warning("events: COMMUNIQUE_EVENTS_SECRET is empty, nothing sent")
        return 0
    with session_scope(session_factory) as session:  # type: ignore[arg-type]
        due = [(e.id, e.event_type, e.payload, e.created_at) for e in session.scalars(
            select(OutgoingEvent).where(OutgoingEvent.delivered_at.is_(None),
                                        OutgoingEvent.next_attempt_at <= now)
            .order_by(OutgoingEvent.id).limit(BATCH_SIZE))]
    signer = _signer(settings.events_secret)
    delivered = 0
    for event_id, event_type, payload, created_at in due:
        body = json.dumps({"type": event_type, "timestamp": created_at.isoformat(),
                           "data": payload}, ensure_ascii=False)
        error = _post(settings.events_url, signer, f"evt_{event_id}", body, now=now)
        with session_scope(session_factory) as session:  # type: ignore[arg-type]
            event = session.get(OutgoingEvent, event_id)
            if event is None or event.delivered_at is not None:
                continue
            event.attempts += 1
            if error is None:
                event.delivered_at, event.next_attempt_at, event.last_error = now, None, None
                delivered += 1
                continue
            event.last_error = error
            if event.attempts >= MAX_ATTEMPTS:
                event.next_attempt_at = None
                log.error("event %s: given up after %d attempts: %s", event_id, event.attempts,
                          error)
            else:
                delay = min(RETRY_BASE_SECONDS * 2 ** (event.attempts - 1), RETRY_MAX_SECONDS)
                event.next_attempt_at = now + timedelta(seconds=delay)
                log.warning("event %s: attempt %d failed (%s), retry in %ds", event_id,
                            event.attempts, error, delay)
    return delivered


def _signer(secret: str) -> Webhook:
    # A whsec_… secret is base64; any other string is used as raw key bytes.
    return Webhook(secret) if secret.startswith("whsec_") else Webhook(secret.encode())


def _post(url: str, signer: Webhook, msg_id: str, body: str, *, now: datetime) -> str | None:
    """One delivery attempt; None when the receiver answered 2xx, else what went wrong."""
    headers = {"Content-Type": "application/json", "User-Agent": "Communique-Events/1",
               "webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": signer.sign(msg_id, now, body)}
    request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
