"""The blast report: what happened to a blast, from the ledger and the engagements — counts and
rates, per outlet, media type, country and language variant, the send curve, opens over the
first 72 hours, the top links and the journalists who opened. Plain data: the doors shape it
(page, JSON, CSV) and report_charts draws it."""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.delivery.blasts import get_blast
from service.models import Contact, Engagement, EngagementKind, MessageStatus, QueuedMessage
from service.rendering.words import language_of

GROUPS = ("outlet", "media_type", "country", "language")
OPEN_HOURS = 72
COUNTS = ("recipients", "sent", "delivered", "bounced", "failed", "opened", "opened_by_machines",
          "clicked")


@dataclass
class Figures:
    recipients: int = 0
    sent: int = 0  # accepted by the relay, whatever came back later
    delivered: int = 0  # sent and not bounced afterwards
    bounced: int = 0
    failed: int = 0
    opened: int = 0  # people: a person's open or click
    opened_by_machines: int = 0  # only machines fetched it (Apple's proxy, scanners)
    clicked: int = 0  # people

    def as_dict(self) -> dict[str, Any]:
        counts: dict[str, Any] = {name: getattr(self, name) for name in COUNTS}
        counts["rates"] = {
            "delivered": _rate(self.delivered, self.sent), "bounced": _rate(self.bounced, self.sent),
            "opened": _rate(self.opened, self.delivered),
            "opened_by_machines": _rate(self.opened_by_machines, self.delivered),
            "clicked": _rate(self.clicked, self.delivered)}
        return counts


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass
class Report:
    blast_id: int
    release_title: str
    track: bool
    started_at: datetime | None
    totals: Figures
    groups: dict[str, dict[str, Figures]]
    deliveries_per_minute: list[tuple[datetime, int]]
    opens_per_hour: list[int]  # people's first opens, hour 0 .. 71 after the start
    top_links: list[dict[str, Any]]
    openers: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "blast_id": self.blast_id, "release_title": self.release_title, "track": self.track,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "totals": self.totals.as_dict(),
            "groups": {name: [{"value": value, **figures.as_dict()}
                              for value, figures in values.items()]
                       for name, values in self.groups.items()},
            "deliveries_per_minute": [{"minute": minute.isoformat(), "count": count}
                                      for minute, count in self.deliveries_per_minute],
            "opens_per_hour": self.opens_per_hour,
            "top_links": self.top_links,
            "openers": [{**opener, "first_at": opener["first_at"].isoformat(),
                         "last_at": opener["last_at"].isoformat()} for opener in self.openers],
        }


def blast_report(session: Session, blast_id: int) -> Report:
    """The report of one blast (NotFound when there is no such blast)."""
    blast = get_blast(session, blast_id)
    rows = session.execute(
        select(QueuedMessage.id, QueuedMessage.status, QueuedMessage.sent_at, Contact.id,
               Contact.email, Contact.first_name, Contact.last_name, Contact.outlet,
               Contact.media_type, Contact.country, Contact.language)
        .join(Contact, Contact.id == QueuedMessage.contact_id)
        .where(QueuedMessage.blast_id == blast_id).order_by(QueuedMessage.id)).all()
    engagements = session.scalars(select(Engagement).where(Engagement.blast_id == blast_id)).all()
    by_row: dict[int, list[Engagement]] = defaultdict(list)
    for engagement in engagements:
        by_row[engagement.queued_message_id].append(engagement)
    default_language = language_of(blast.release.language)
    totals = Figures()
    groups: dict[str, dict[str, Figures]] = {name: defaultdict(Figures) for name in GROUPS}
    minutes: Counter[datetime] = Counter()
    openers = []
    for row in rows:
        mine = by_row.get(row[0], [])
        people = [e for e in mine if not e.is_machine]
        person_opens = [e for e in people if e.kind == EngagementKind.open]
        opened = bool(people)
        keys = {"outlet": row.outlet or "", "media_type": row.media_type or "",
                "country": row.country or "", "language": language_of(row.language) or default_language}
        for figures in (totals, *(groups[name][keys[name]] for name in GROUPS)):
            _add(figures, row.status, row.sent_at is not None, opened,
                 bool(mine) and not opened and any(e.kind == EngagementKind.open for e in mine),
                 any(e.kind == EngagementKind.click for e in people))
        if row.sent_at is not None:
            minutes[row.sent_at.replace(second=0, microsecond=0)] += 1
        if opened:
            openers.append({
                "contact_id": row[3], "email": row.email,
                "name": " ".join(filter(None, [row.first_name, row.last_name])), "outlet": row.outlet,
                "media_type": row.media_type, "country": row.country,
                "opens": sum(e.count for e in person_opens),
                "clicks": sum(e.count for e in people if e.kind == EngagementKind.click),
                "first_at": min(e.first_at for e in people), "last_at": max(e.last_at for e in people)})
    start = blast.started_at or (min(minutes) if minutes else None)
    return Report(
        blast.id, blast.release.title, blast.track, start, totals,
        {name: dict(sorted(values.items(), key=lambda item: (-item[1].sent, item[0])))
         for name, values in groups.items()},
        sorted(minutes.items()), _opens_per_hour(engagements, start), _top_links(engagements),
        sorted(openers, key=lambda opener: opener["first_at"]))


def _add(figures: Figures, status: str, was_sent: bool, opened: bool, machines_only: bool,
         clicked: bool) -> None:
    figures.recipients += 1
    figures.sent += was_sent
    figures.delivered += status == MessageStatus.sent
    figures.bounced += status == MessageStatus.bounced
    figures.failed += status == MessageStatus.failed
    figures.opened += opened
    figures.opened_by_machines += machines_only
    figures.clicked += clicked


def _opens_per_hour(engagements: Any, start: datetime | None) -> list[int]:
    hours = [0] * OPEN_HOURS
    if start is None:
        return hours
    first: dict[int, datetime] = {}
    for e in engagements:
        if not e.is_machine:
            first[e.queued_message_id] = min(first.get(e.queued_message_id, e.first_at), e.first_at)
    for at in first.values():
        hour = int((at - start) / timedelta(hours=1))
        if 0 <= hour < OPEN_HOURS:
            hours[hour] += 1
    return hours


def _top_links(engagements: Any, limit: int = 10) -> list[dict[str, Any]]:
    people: Counter[str] = Counter()
    clicks: Counter[str] = Counter()
    machines: Counter[str] = Counter()
    for e in engagements:
        if e.kind != EngagementKind.click:
            continue
        if e.is_machine:
            machines[e.url] += e.count
        else:
            people[e.url] += 1
            clicks[e.url] += e.count
    urls = sorted(set(people) | set(machines), key=lambda url: (-people[url], -clicks[url], url))
    return [{"url": url, "people": people[url], "clicks": clicks[url], "machine_clicks": machines[url]}
            for url in urls[:limit]]


def report_csv(report: Report) -> str:
    """The report as CSV: the totals, then one line per group value; then the openers."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["group", "value", *COUNTS, "delivered_rate", "opened_rate", "clicked_rate"])
    lines = [("total", "", report.totals)] + [
        (name, value, figures) for name, values in report.groups.items()
        for value, figures in values.items()]
    for name, value, figures in lines:
        data = figures.as_dict()
        writer.writerow([name, _neutral(value), *(data[count] for count in COUNTS),
                         *(data["rates"][rate] for rate in ("delivered", "opened", "clicked"))])
    writer.writerow([])
    writer.writerow(["opener", "name", "outlet", "opens", "clicks", "first_at", "last_at"])
    for opener in report.openers:
        writer.writerow([opener["email"], _neutral(opener["name"]), _neutral(opener["outlet"] or ""),
                         opener["opens"], opener["clicks"], opener["first_at"].isoformat(),
                         opener["last_at"].isoformat()])
    return out.getvalue()


def _neutral(value: str) -> str:
    """No spreadsheet formula in a cell (a contact's outlet is someone else's text)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
