"""Where each release stands, for the releases list and the send history: its language variants
under it, and draft / scheduled for <time> / sending / sent on <date> to N."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Blast, BlastStatus, MessageStatus, QueuedMessage, Release
from service.releases.store import list_releases


def blasts_of(session: Session, release: Release) -> list[Blast]:
    """The blasts of a release and of its language variants, newest first (its send history)."""
    group_id = release.group_id or release.id
    return list(session.scalars(select(Blast).join(Release, Blast.release_id == Release.id).where(
        (Release.group_id == group_id) | (Release.id == group_id)).order_by(Blast.id.desc())))


class ReleaseState(StrEnum):
    draft = "draft"
    scheduled = "scheduled"
    sending = "sending"
    sent = "sent"


@dataclass
class ReleaseGroup:
    """A release with its language variants, and where its sending stands: `scheduled_at` the
    next scheduled blast, `sent_at` the last message sent, `sent_count` the journalists reached."""

    release: Release
    variants: list[Release] = field(default_factory=list)
    state: ReleaseState = ReleaseState.draft
    scheduled_at: datetime | None = None
    sent_at: datetime | None = None
    sent_count: int = 0


def list_release_groups(session: Session) -> list[ReleaseGroup]:
    """Every release (newest first) with its variants under it and its sending state: sending while
    a blast runs or is paused, else scheduled while one is due, else sent once a blast started."""
    groups: dict[int, ReleaseGroup] = {}
    releases = list_releases(session)
    for release in sorted(releases, key=lambda r: r.id):
        key = release.group_id or release.id
        if key in groups:
            groups[key].variants.append(release)
        else:
            groups[key] = ReleaseGroup(release)
    group_key = func.coalesce(Release.group_id, Release.id)
    started: set[int] = set()
    for key, status, send_at, started_at in session.execute(
            select(group_key, Blast.status, Blast.send_at, Blast.started_at)
            .join(Release, Blast.release_id == Release.id)):
        group = groups.get(key)
        if group is None:
            continue
        if status in (BlastStatus.running, BlastStatus.paused):
            group.state = ReleaseState.sending
        elif status == BlastStatus.scheduled and send_at is not None and (
                group.scheduled_at is None or send_at < group.scheduled_at):
            group.scheduled_at = send_at
        if started_at is not None:
            started.add(key)
    for key, count, last in session.execute(
            select(group_key, func.count(func.distinct(QueuedMessage.contact_id)),
                   func.max(QueuedMessage.sent_at))
            .join(Blast, QueuedMessage.blast_id == Blast.id)
            .join(Release, Blast.release_id == Release.id)
            .where(QueuedMessage.status == MessageStatus.sent).group_by(group_key)):
        if key in groups:
            groups[key].sent_count, groups[key].sent_at = int(count), last
    for key, group in groups.items():
        if group.state == ReleaseState.draft:
            group.state = (ReleaseState.scheduled if group.scheduled_at is not None
                           else ReleaseState.sent if key in started else ReleaseState.draft)
    return sorted(groups.values(), key=lambda g: g.release.id, reverse=True)
