"""APScheduler 3 as a trigger only: every `scheduler_interval_seconds` it runs `run_due_blasts`
(expire, start due blasts, housekeeping). The database is the source of truth, so a restarted
scheduler loses nothing and two schedulers never start a blast twice (the start is atomic)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.delivery.blasts import run_due_blasts
from service.events import dispatch_events

log = logging.getLogger(__name__)

JOB_ID = "run_due_blasts"
EVENTS_JOB_ID = "dispatch_events"


def tick(session_factory: sessionmaker[Session], settings: Settings) -> list[int]:
    """One scheduler run; errors are logged, and the next run tries again."""
    try:
        started = run_due_blasts(session_factory, settings, now=datetime.now(UTC))
    except SQLAlchemyError:
        log.exception("scheduler: run_due_blasts failed; retrying at the next run")
        return []
    if started:
        log.info("scheduler: started blasts %s", started)
    return started


def send_events(session_factory: sessionmaker[Session], settings: Settings) -> int:
    """Deliver due outgoing events (COMMUNIQUE_EVENTS_URL); failures are retried later."""
    try:
        return dispatch_events(session_factory, settings, now=datetime.now(UTC))
    except SQLAlchemyError:
        log.exception("scheduler: dispatch_events failed; retrying at the next run")
        return 0


def start_scheduler(session_factory: sessionmaker[Session], settings: Settings) -> BackgroundScheduler:
    """Start a background scheduler thread; the first run is immediate. Call `.shutdown()` to stop."""
    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_job(tick, "interval", args=[session_factory, settings], id=JOB_ID,
                      seconds=settings.scheduler_interval_seconds, next_run_time=datetime.now(UTC),
                      max_instances=1, coalesce=True, misfire_grace_time=None)
    if settings.events_url:
        scheduler.add_job(send_events, "interval", args=[session_factory, settings],
                          id=EVENTS_JOB_ID, seconds=settings.scheduler_interval_seconds,
                          max_instances=1, coalesce=True, misfire_grace_time=None)
    scheduler.start()
    log.info("scheduler: checking for due blasts every %ss", settings.scheduler_interval_seconds)
    return scheduler
