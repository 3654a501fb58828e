"""Opens and clicks of tracked blasts, recorded per ledger row; machine fetches told apart.

A fetch is a machine's, not a person's, when (documented guesses, each named in machine_reason):
- "apple-mpp": Apple Mail Privacy Protection fetches every image through Apple's proxy, with the
  bare user agent "Mozilla/5.0" from Apple's network 17.0.0.0/8 (support.apple.com/102654);
- "scanner-agent": a user agent of a known link scanner or HTTP library;
- "soon-after-delivery": within COMMUNIQUE_TRACKING_SCANNER_SECONDS of delivery (security
  gateways fetch every link of a message as it arrives);
- "burst": a second link of the same message fetched within 2 seconds of a person's click on
  another (the first click of such a burst stays counted as a person's).
Contacts who unsubscribed or asked not to be tracked are never recorded.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.config import Settings
from service.errors import NotFound
from service.models import Blast, Contact, ContactStatus, Engagement, EngagementKind, QueuedMessage, Release
from service.rendering.tracking import MessageToken, verify_link_token, verify_message_token

log = logging.getLogger(__name__)

APPLE_NETWORK = ipaddress.ip_network("17.0.0.0/8")
_SCANNER_AGENTS = ("barracuda", "mimecast", "proofpoint", "symantec", "trendmicro", "forcepoint",
                   "safelinks", "urldefense", "python-requests", "python-urllib", "curl/",
                   "wget/", "go-http-client", "headlesschrome", "bot", "spider", "crawler",
                   "scan")
BURST_SECONDS = 2


@dataclass(frozen=True)
class Fetch:
    """One request for a pixel or a link, as the door saw it."""

    user_agent: str
    ip: str | None
    at: datetime


def machine_reason(fetch: Fetch, delivered_at: datetime | None, settings: Settings) -> str | None:
    agent = fetch.user_agent.strip()
    try:
        address = ipaddress.ip_address(fetch.ip) if fetch.ip else None
    except ValueError:
        address = None
    if agent == "Mozilla/5.0" and address is not None and address in APPLE_NETWORK:
        return "apple-mpp"
    lowered = agent.lower()
    if not agent or any(word in lowered for word in _SCANNER_AGENTS):
        return "scanner-agent"
    if delivered_at is not None and \
            fetch.at - delivered_at <= timedelta(seconds=settings.tracking_scanner_seconds):
        return "soon-after-delivery"
    return None


def _row_for(session: Session, token: MessageToken) -> tuple[QueuedMessage, Blast]:
    row = session.scalar(select(QueuedMessage).where(QueuedMessage.blast_id == token.blast_id,
                                                     QueuedMessage.contact_id == token.contact_id))
    blast = session.get(Blast, token.blast_id)
    if row is None or blast is None or not blast.track:
        raise NotFound("no such tracked message")
    return row, blast


def _is_tracked(session: Session, contact_id: int) -> bool:
    contact = session.get(Contact, contact_id)
    return (contact is not None and not contact.do_not_track
            and contact.status != ContactStatus.unsubscribed)


def record_open(session: Session, settings: Settings, token: str, fetch: Fetch) -> None:
    """Count an open of the message the token names; NotFound when the token is not ours."""
    who = verify_message_token(settings, token)
    if who is None:
        raise NotFound("this link is not valid")
    row, _blast = _row_for(session, who)
    if _is_tracked(session, who.contact_id):
        _count(session, row, EngagementKind.open, "", machine_reason(fetch, row.sent_at, settings),
               fetch.at)


def record_click(session: Session, settings: Settings, token: str, link: str, fetch: Fetch) -> str:
    """The exact release URL a tracked link names, the click counted; NotFound when either part
    of the link is not ours or the link belongs to another release."""
    who = verify_message_token(settings, token)
    named = verify_link_token(settings, link)
    if who is None or named is None:
        raise NotFound("this link is not valid")
    release_id, url = named
    row, blast = _row_for(session, who)
    if not _same_group(session, blast.release_id, release_id):
        raise NotFound("this link is not valid")
    if _is_tracked(session, who.contact_id):
        reason = machine_reason(fetch, row.sent_at, settings) or _burst(session, row, url, fetch.at)
        _count(session, row, EngagementKind.click, url, reason, fetch.at)
    return url


def _same_group(session: Session, blast_release_id: int, link_release_id: int) -> bool:
    if blast_release_id == link_release_id:
        return True
    first, second = session.get(Release, blast_release_id), session.get(Release, link_release_id)
    if first is None or second is None:
        return False
    return (first.group_id or first.id) == (second.group_id or second.id)


def _burst(session: Session, row: QueuedMessage, url: str, at: datetime) -> str | None:
    recent = session.scalar(select(Engagement.id).where(
        Engagement.queued_message_id == row.id, Engagement.kind == EngagementKind.click,
        Engagement.url != url, Engagement.is_machine.is_(False),
        Engagement.last_at >= at - timedelta(seconds=BURST_SECONDS)).limit(1))
    return "burst" if recent is not None else None


def _count(session: Session, row: QueuedMessage, kind: EngagementKind, url: str,
           reason: str | None, at: datetime) -> None:
    is_machine = reason is not None
    where = (Engagement.queued_message_id == row.id, Engagement.kind == kind,
             Engagement.url == url, Engagement.is_machine == is_machine)
    for _ in range(2):  # two fetches at once: the second insert fails, then updates
        changed = session.execute(update(Engagement).where(*where).values(
            count=Engagement.count + 1, last_at=at, machine_reason=reason)).rowcount  # type: ignore[attr-defined]
        if changed:
            return
        try:
            with session.begin_nested():
                session.add(Engagement(queued_message_id=row.id, blast_id=row.blast_id, kind=kind,
                                       url=url, is_machine=is_machine, machine_reason=reason,
                                       count=1, first_at=at, last_at=at))
            return
        except IntegrityError:
            continue
    log.warning("message %s: %s not counted", row.id, kind)
