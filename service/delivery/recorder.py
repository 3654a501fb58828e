"""Recording: the senders' results written in group commits (one transaction for all results that
arrived since the last), rows not sent put back in the queue, blasts paused on their error rate."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.config import Settings
from service.delivery.brake import ErrorBrake
from service.delivery.db_thread import DbThread
from service.delivery.queue import Attempt, pause_on_error_rate, record_attempts, release_claims
from service.logs import log_context
from service.models import DeliveryOutcome

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # after a failed commit


class Recorder:
    """Takes results (`add`) and rows to put back (`put_back`) from the senders and writes them
    on its own database thread. `in_flight` counts jobs taken from the queue and not yet recorded
    or put back; `running` is the claimer's set, from which paused blasts are taken out."""

    def __init__(self, settings: Settings, worker_id: str, db: DbThread, brake: ErrorBrake,
                 running: set[int]) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.in_flight = 0
        self.attempt_count = 0
        self.sent_count = 0
        self._db = db
        self._brake = brake
        self._running = running
        self._pending: list[Attempt] = []  # results not yet handed to the database thread
        self._pending_done: asyncio.Future[None] | None = None  # done when those are committed
        self._to_release: list[int] = []
        self._wanted = asyncio.Event()
        self._finishing = False

    def add(self, attempt: Attempt) -> asyncio.Future[None]:
        """Hand over one result (the hot path: once per message); the future, one per group commit
        and shared by all its results, is done once it is committed."""
        if self._pending_done is None:
            self._pending_done = asyncio.get_running_loop().create_future()
        self._pending.append(attempt)
        self._brake.note(attempt, self._running)
        self._wanted.set()
        return self._pending_done

    def put_back(self, row_id: int) -> None:
        """A job taken from the queue but not sent (its blast stopped, or the worker is stopping)."""
        self.in_flight -= 1
        self._to_release.append(row_id)
        self._wanted.set()

    def put_back_unstarted(self, row_ids: Iterable[int]) -> None:
        """Claimed rows no sender took from the queue (their blast stopped, or the worker is
        stopping)."""
        self._to_release.extend(row_ids)
        self._wanted.set()

    def is_idle(self) -> bool:
        """Every job taken from the queue is recorded or put back."""
        return self.in_flight == 0 and not self._pending

    def finish(self) -> None:
        """The senders are done: `run` returns once everything handed over is written."""
        self._finishing = True
        self._wanted.set()

    async def run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await self._write_pending()
            if self._finishing and not self._pending and not self._to_release:
                return

    async def _write_pending(self) -> None:
        attempts, self._pending = self._pending, []
        done, self._pending_done = self._pending_done, None
        releases, self._to_release = self._to_release, []
        if not attempts and not releases:
            return
        try:
            paused = await self._db.run(lambda s: self._record(s, attempts, releases))
        except SQLAlchemyError:
            log.exception("worker %s: recording %d results failed; retrying", self.worker_id,
                          len(attempts))
            await self._retry_later(attempts, releases, done)
            return
        self._committed(attempts, paused, done)

    def _record(self, session: Session, attempts: list[Attempt], releases: list[int]) -> list[int]:
        """On the database thread: one transaction for the batch; returns the blasts paused."""
        release_claims(session, releases)
        record_attempts(session, self.settings, attempts)
        troubled = {a.blast_id for a in attempts if a.outcome != DeliveryOutcome.sent}
        paused: list[int] = []
        now = datetime.now(UTC)
        for blast_id in troubled:  # one blast at a time, so its log lines carry its id
            with log_context(blast_id=blast_id):
                paused += pause_on_error_rate(session, self.settings, (blast_id,), now=now)
        return paused

    def _committed(self, attempts: list[Attempt], paused: list[int],
                   done: asyncio.Future[None] | None) -> None:
        self._running.difference_update(paused)
        self._brake.recorded(attempts)
        self.in_flight -= len(attempts)
        self.attempt_count += len(attempts)
        self.sent_count += sum(1 for a in attempts if a.outcome == DeliveryOutcome.sent)
        if done is not None:
            done.set_result(None)

    async def _retry_later(self, attempts: list[Attempt], releases: list[int],
                           done: asyncio.Future[None] | None) -> None:
        """Put a batch that failed to commit back in front; the senders waiting on its future
        wait for the retry."""
        self._pending[:0], self._to_release[:0] = attempts, releases
        if done is not None:
            if self._pending_done is None:
                self._pending_done = done
            else:
                self._pending_done.add_done_callback(lambda _f: done.set_result(None))
        await asyncio.sleep(RETRY_SECONDS)
        self._wanted.set()
