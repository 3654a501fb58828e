"""Scheduling: a blast set a minute ahead fires once, across scheduler restarts and concurrent schedulers."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from test_blasts import NOW, add_list, add_release

from service.db import make_engine, make_session_factory
from service.delivery import blasts
from service.delivery.scheduler import start_scheduler
from service.models import Blast, BlastEvent, BlastStatus, QueuedMessage


def started_events(session, blast_id: int) -> int:  # type: ignore[no-untyped-def]
    session.expire_all()
    count = session.scalar(select(func.count()).select_from(BlastEvent).where(
        BlastEvent.blast_id == blast_id, BlastEvent.action == "started"))
    session.commit()
    return int(count or 0)


def test_schedule_a_minute_ahead_fires_once_after_a_scheduler_restart(db, settings) -> None:  # type: ignore[no-untyped-def]
    """Set for a minute ahead: nothing before, the scheduler restarts (new engine, nothing kept in
    memory), the run after the minute starts it, and later runs do not start it again."""
    add_list(db, "presse", 4)
    release = add_release(db)
    blast = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"],
                                send_at=NOW + timedelta(minutes=1), now=NOW)
    db.commit()
    engine = make_engine(settings.database_url)
    early = NOW + timedelta(seconds=30)
    assert blasts.run_due_blasts(make_session_factory(engine), settings, now=early) == []
    engine.dispose()  # the scheduler process stops ...
    engine = make_engine(settings.database_url)  # ... and a new one starts
    factory = make_session_factory(engine)
    assert blasts.run_due_blasts(factory, settings, now=NOW + timedelta(seconds=61)) == [blast.id]
    assert blasts.run_due_blasts(factory, settings, now=NOW + timedelta(seconds=75)) == []
    engine.dispose()
    assert started_events(db, blast.id) == 1
    assert db.scalar(select(func.count()).select_from(QueuedMessage)) == 4


def test_real_scheduler_fires_once_across_a_restart_and_a_rival(db, settings) -> None:  # type: ignore[no-untyped-def]
    """Real APScheduler runs every 0.1 s: the first scheduler stops before the send time, two new
    ones run side by side past it, and the blast starts exactly once."""
    fast = dataclasses.replace(settings, scheduler_interval_seconds=0.1)
    add_list(db, "presse", 3)
    release = add_release(db)
    now = datetime.now(UTC)
    blast = blasts.create_blast(db, fast, release_id=release.id, list_names=["presse"],
                                send_at=now + timedelta(seconds=1), now=now)
    db.commit()
    engine = make_engine(fast.database_url)
    factory = make_session_factory(engine)
    first = start_scheduler(factory, fast)
    time.sleep(0.3)
    first.shutdown(wait=True)
    assert started_events(db, blast.id) == 0
    rivals = [start_scheduler(factory, fast), start_scheduler(factory, fast)]
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not started_events(db, blast.id):
            time.sleep(0.05)
        time.sleep(0.5)  # both keep running past the send time
    finally:
        for scheduler in rivals:
            scheduler.shutdown(wait=True)
        engine.dispose()
    assert started_events(db, blast.id) == 1
    db.expire_all()
    assert db.scalar(select(Blast.status).where(Blast.id == blast.id)) == BlastStatus.running
    assert db.scalar(select(func.count()).select_from(QueuedMessage)) == 3
