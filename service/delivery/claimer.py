"""Claiming: keep a batch or two of due ledger rows ahead of the senders in a handoff queue, renew
their leases, prepare each blast's release once, and housekeep between claims."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.config import Settings
from service.delivery.brake import ErrorBrake
from service.delivery.db_thread import DbThread
from service.delivery.queue import (
    Claimed,
    claim_due_messages,
    has_pending_work,
    housekeep,
    renew_claims,
    running_blast_ids,
)
from service.errors import NotFound, RenderError
from service.logs import log_context
from service.models import Blast
from service.rendering.prepare import PreparedRelease, prepare_release

log = logging.getLogger(__name__)

# While jobs are here, a pause or cancel committed anywhere is seen within this long (plus one
# small SELECT of the running blasts' ids): the claimer looks at least this often.
STOP_CHECK_SECONDS = 0.5


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Prepared:
    """A blast's release, prepared once for all its messages, or why it could not be."""

    release: PreparedRelease | None = None
    error: str | None = None


class Claimer:
    """Fills `queue` for the senders. `running` (shared with the senders and the recorder) holds
    the blasts this worker may send now: running in the database at the last look (each claim,
    and every STOP_CHECK_SECONDS while jobs are here), minus those the brake holds; `prepared`
    their releases. When a blast leaves `running`, its jobs leave the queue (`put_back` hands
    their row ids to the recorder) and `stops` wakes senders waiting for a rate slot. The loop
    ends when `stopping` is set, or, with `until_idle`, when nothing is left to send and
    `is_drained()` says every job taken from the queue is recorded."""

    def __init__(self, settings: Settings, worker_id: str, db: DbThread, brake: ErrorBrake,
                 running: set[int], stopping: asyncio.Event, *, until_idle: bool = False,
                 include_due: bool = True, is_drained: Callable[[], bool] = lambda: True,
                 put_back: Callable[[list[int]], None] | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.until_idle = until_idle
        self.include_due = include_due  # with a scheduler running, a due blast counts as work
        self.queue: asyncio.Queue[Claimed | None] = asyncio.Queue()
        self.need_more = asyncio.Event()  # set by senders when the queue runs low
        self.running = running
        self.prepared: dict[int, Prepared] = {}  # by blast id
        self.stops = asyncio.Event()  # set and cleared at once: a pulse when a blast stops here
        self._db = db
        self._brake = brake
        self._stopping = stopping
        self._is_drained = is_drained
        self._put_back = put_back
        self._last_renewal = time.monotonic()

    async def run(self) -> None:
        poll_seconds = self.settings.worker_poll_seconds
        last_housekeeping = 0.0
        while not self._stopping.is_set():
            filled = await self.fill()
            if filled is None:
                await self.sleep(poll_seconds)
                continue
            limit, count = filled
            if limit and count == limit:
                continue
            if limit == 0:
                await self.sleep(poll_seconds)
                continue
            if time.monotonic() - last_housekeeping >= poll_seconds or not count:
                last_housekeeping = time.monotonic()
                await self.housekeep()
            if count:
                continue
            if self.until_idle and await self._is_idle():
                log.info("worker %s: nothing left to send", self.worker_id)
                # The last results may have landed after this round's housekeeping: finish the
                # blasts they completed before leaving.
                await self.housekeep()
                return
            await self.sleep(poll_seconds)

    async def fill(self) -> tuple[int, int] | None:
        """One claim: renew leases when due, claim up to a batch when the queue holds less than
        one, take blasts that stopped running out of `running`, queue what was claimed. Returns
        (rows asked for, 0 when the queue was full; rows claimed), or None when the database
        failed."""
        await self._renew_leases()
        batch = self.settings.batch_size
        limit = batch if self.queue.qsize() < batch else 0
        claim_started = time.monotonic()
        try:
            running, claimed = await self._db.run(lambda s: self._claim(s, limit))
        except SQLAlchemyError:
            log.exception("worker %s: claiming failed; retrying", self.worker_id)
            return None
        # On the loop, together: a sender checks `running` and renders without an await between,
        # so it never meets a blast whose prepared release was just forgotten.
        self._brake.release_judged(claim_started)
        self._set_running(running)
        for job in claimed:
            self.queue.put_nowait(job)
        return limit, len(claimed)

    def _set_running(self, running: list[int]) -> None:
        stopped = self.running.difference(running)
        self.running.clear()
        self.running.update(running)
        self.running.difference_update(self._brake.held_blast_ids)
        for blast_id in self.prepared.keys() - self.running:
            del self.prepared[blast_id]
        if stopped:
            self._drop_stopped_jobs(stopped)
            self.signal_stops()

    def _drop_stopped_jobs(self, stopped: set[int]) -> None:
        """Jobs in the queue whose blast no longer runs here go back (pause: `queued` again;
        cancel: their rows are `cancelled` already); the others keep their order."""
        if self._put_back is None or self.queue.empty():
            return
        kept, dropped = [], []
        while not self.queue.empty():
            job = self.queue.get_nowait()
            if job is None or job.blast_id in self.running:
                kept.append(job)
            else:
                dropped.append(job.id)
        for job in kept:
            self.queue.put_nowait(job)
        if dropped:
            self._put_back(dropped)
            log.info("worker %s: blasts %s no longer running: %d claimed messages not sent",
                     self.worker_id, ", ".join(map(str, sorted(stopped))), len(dropped))

    def signal_stops(self) -> None:
        """Wake the senders waiting for a rate slot or a relay backoff: their blast may have stopped."""
        self.stops.set()
        self.stops.clear()

    async def watch_stops(self) -> None:
        """Between claims: read which blasts run (one small SELECT) and act on those that stopped."""
        try:
            running = await self._db.run(running_blast_ids)
        except SQLAlchemyError:
            log.exception("worker %s: reading the running blasts failed", self.worker_id)
            return
        self._set_running(running)

    def _claim(self, session: Session, limit: int) -> tuple[list[int], list[Claimed]]:
        running = running_blast_ids(session)
        claimed = claim_due_messages(session, worker_id=self.worker_id, now=_now(), limit=limit,
                                     blast_ids=running) if limit else []
        # Prepared once per blast (the release is frozen once its blast has started); forgotten
        # in `fill` when the blast stops running, so a later blast of an edited release, or a
        # release that failed to prepare, is prepared afresh.
        for blast_id, release_id in {(c.blast_id, c.release_id) for c in claimed}:
            if blast_id not in self.prepared:
                with log_context(blast_id=blast_id):
                    self.prepared[blast_id] = self._prepare(session, blast_id, release_id)
        return running, claimed

    def _prepare(self, session: Session, blast_id: int, release_id: int) -> Prepared:
        try:
            options = session.execute(select(Blast.attach_pdf, Blast.track)
                                      .where(Blast.id == blast_id)).one_or_none()
            attach_pdf, track = (bool(options[0]), bool(options[1])) if options else (False, False)
            return Prepared(prepare_release(session, release_id, self.settings,
                                            attach_pdf=attach_pdf, track=track))
        except (NotFound, RenderError) as exc:
            log.error("blast %s: release %s cannot be prepared: %s", blast_id, release_id, exc)
            return Prepared(None, f"the release cannot be rendered: {exc}")
        except Exception as exc:  # a renderer bug fails this blast's rows, never the worker
            log.exception("blast %s: preparing release %s failed", blast_id, release_id)
            return Prepared(None, f"the release cannot be rendered: {type(exc).__name__}: {exc}")

    async def _renew_leases(self) -> None:
        """Every third of a lease, renew the lease of the rows this worker holds."""
        if time.monotonic() - self._last_renewal < self.settings.lease_seconds / 3:
            return
        self._last_renewal = time.monotonic()
        try:
            await self._db.run(lambda s: renew_claims(s, worker_id=self.worker_id, now=_now()))
        except SQLAlchemyError:
            log.exception("worker %s: renewing leases failed", self.worker_id)

    async def housekeep(self) -> None:
        """Stale claims back to the queue, overdue blasts stopped, completed blasts finished."""
        try:
            await self._db.run(lambda s: housekeep(s, self.settings, now=_now()))
        except SQLAlchemyError:
            log.exception("worker %s: housekeeping failed", self.worker_id)

    async def _is_idle(self) -> bool:
        """Nothing here and nothing pending in the database (asked only when nothing is here)."""
        if not self._is_locally_idle():
            return False
        pending = await self._db.run(lambda s: has_pending_work(s, now=_now(),
                                                               include_due=self.include_due))
        return not pending and self._is_locally_idle()

    def _is_locally_idle(self) -> bool:
        return self.queue.empty() and self._is_drained()

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake up early when asked to stop or when senders want more rows; while jobs
        are here, look for stopped blasts every STOP_CHECK_SECONDS meanwhile."""
        self.need_more.clear()
        deadline = time.monotonic() + seconds
        for _ in range(int(seconds / STOP_CHECK_SECONDS) + 1):  # bounded: one look per step
            step = min(deadline - time.monotonic(), STOP_CHECK_SECONDS)
            if step <= 0:
                return
            try:
                await asyncio.wait_for(self.need_more.wait(), step)
                return
            except TimeoutError:
                pass
            if deadline - time.monotonic() > 0 and not self._is_locally_idle():
                await self.watch_stops()

    def wake(self) -> None:
        self.need_more.set()

    def close_queue(self, sender_count: int) -> list[int]:
        """Empty the queue, returning the ids of the rows no sender started, and put one end mark
        in it for each sender."""
        unstarted = []
        while not self.queue.empty():
            job = self.queue.get_nowait()
            if job is not None:
                unstarted.append(job.id)
        for _ in range(sender_count):
            self.queue.put_nowait(None)
        return unstarted
