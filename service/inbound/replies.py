"""Journalists' replies forwarded to the press office: to whom, the bytes that go, the send."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from email.utils import format_datetime
from typing import Any

from sqlalchemy.orm import Session

from service.config import Settings
from service.delivery.smtp import SendResult, send_each
from service.inbound.actions import process_message
from service.models import Blast, DeliveryOutcome, InboundKind, InboundMessage, Release
from service.rendering.prepare import sender_address

log = logging.getLogger(__name__)

ACTION_MAX_CHARS = 300

RunForward = Callable[[Coroutine[Any, Any, SendResult]], SendResult]


class ForwardDeferred(Exception):
    """The relay could not take a reply now: the caller rolls back and the message is received
    again later (the MTA retries after a 451; an IMAP message stays in its folder)."""


def receive_message(session: Session, settings: Settings, raw: bytes, *, envelope_to: Sequence[str],
                    envelope_from: str | None, now: datetime, run: RunForward) -> InboundMessage:
    """process_message, then forward a human reply (`run` runs the SMTP coroutine: on the
    listener's loop, or asyncio.run) before the caller commits; raises ForwardDeferred when
    the relay refused for now, so a reply is never stored without reaching the office."""
    stored = process_message(session, settings, raw, envelope_to=envelope_to,
                             envelope_from=envelope_from, now=now)
    target = forward_target(session, settings, stored)
    if target is None:
        return stored
    result = run(forward_reply(settings, raw, target, now=now))
    if result.outcome == DeliveryOutcome.deferred:
        raise ForwardDeferred(f"inbound {stored.id}: {result.smtp_code} {result.smtp_reply}")
    record_forward(stored, target, result)
    return stored


def forward_target(session: Session, settings: Settings, stored: InboundMessage) -> str | None:
    """Where a human reply whose token verified goes: COMMUNIQUE_REPLIES_FORWARD_TO, else the
    release's reply-to, else its sender. None for anything else: out-of-office replies and mail
    to the bare address (anyone could write there) are stored, never forwarded."""
    if stored.kind != InboundKind.reply or stored.blast_id is None:
        return None
    if settings.replies_forward_to:
        return settings.replies_forward_to
    blast = session.get(Blast, stored.blast_id)
    release = session.get(Release, blast.release_id) if blast is not None else None
    if release is None:
        return None
    target = release.reply_to or sender_address(release, settings)
    ours = {address.lower() for address in (settings.reply_address, settings.bounce_address) if address}
    return None if target.lower() in ours else target  # never a loop back to ourselves


def forwarded_bytes(raw: bytes, *, target: str, resent_from: str, now: datetime) -> bytes:
    """The reply as it came, under RFC 5322 §3.6.6 resent fields: headers and body untouched, so
    the journalist's DKIM signature still verifies and the office's "reply" answers the journalist."""
    resent = (f"Resent-From: {resent_from}\r\nResent-To: {target}\r\n"
              f"Resent-Date: {format_datetime(now)}\r\n")
    return resent.encode("ascii") + raw


async def forward_reply(settings: Settings, raw: bytes, target: str, *, now: datetime) -> SendResult:
    """Send the reply to `target` through the configured relay; never raises for SMTP trouble."""
    envelope_from = settings.reply_address or settings.bounce_address
    data = forwarded_bytes(raw, target=target, resent_from=envelope_from, now=now)
    ((result, _seconds),) = await send_each(settings, envelope_from, [(target, data)])
    return result


def record_forward(stored: InboundMessage, target: str, result: SendResult) -> None:
    """The action says where the reply went, or why the relay refused it for good."""
    if result.outcome == DeliveryOutcome.sent:
        action = f"stored, forwarded to {target}"
    else:
        action = f"stored, forwarding to {target} refused: {result.smtp_code} {result.smtp_reply}"
    stored.action = action[:ACTION_MAX_CHARS]
    log.info("inbound %s: reply %s", stored.id, "forwarded" if result.outcome == DeliveryOutcome.sent
             else "not forwarded")
