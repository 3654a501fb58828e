"""The worker: claim due ledger rows in batches, render each from the release prepared once, send
over a pool of reused aiosmtplib connections, record every attempt in batches, retry later.

One asyncio loop: a claimer keeps one or two batches ahead in a queue, `smtp_connections` sender
tasks each own a connection, a recorder writes results in group commits. Database work runs in
two worker threads (claims, records) so SMTP keeps flowing. A sender waits until its previous
result is committed before sending the next message's content, so a SIGKILL can lose the record
of at most one accepted message per connection (sent again after restart: at most one duplicate
each). While a message goes out, its sender takes the next job along: on a relay that pipelines,
that job's envelope is written behind this message's content (see SmtpConnection.send `then`)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import make_engine, make_session_factory, session_scope
from service.delivery.queue import (
    Attempt,
    Claimed,
    claim_due_messages,
    has_pending_work,
    housekeep,
    pause_on_error_rate,
    record_attempts,
    release_claims,
    renew_claims,
    running_blast_ids,
)
from service.delivery.smtp import SmtpConnection
from service.errors import NotFound, RenderError
from service.models import DeliveryOutcome
from service.rendering.prepare import prepare_release

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_RELAY_BACKOFF_SECONDS = 60.0


def _now() -> datetime:
    return datetime.now(UTC)


class RateLimiter:
    """Spaces sends evenly at `rate` messages per second across the worker (0 = unlimited)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_slot = time.monotonic()

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(self.next_slot, now)
        self.next_slot = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class DomainLimiter:
    """At most `limit` sends in flight to one recipient domain. Only domains with a send in
    flight keep a semaphore, so memory stays flat however many domains a blast reaches."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._domains: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    async def acquire(self, domain: str) -> None:
        entry = self._domains.get(domain)
        if entry is None:
            entry = self._domains[domain] = (asyncio.Semaphore(self.limit), [0])
        entry[1][0] += 1
        try:
            await entry[0].acquire()
        except BaseException:
            self._leave(domain, entry[1])
            raise

    def available(self, domain: str) -> bool:
        """Would `acquire` go through without waiting?"""
        entry = self._domains.get(domain)
        return entry is None or not entry[0].locked()

    def release(self, domain: str) -> None:
        semaphore, users = self._domains[domain]
        semaphore.release()
        self._leave(domain, users)

    def _leave(self, domain: str, users: list[int]) -> None:
        users[0] -= 1
        if not users[0]:
            del self._domains[domain]

    @asynccontextmanager
    async def hold(self, domain: str) -> AsyncIterator[None]:
        await self.acquire(domain)
        try:
            yield
        finally:
            self.release(domain)

    def __len__(self) -> int:
        return len(self._domains)


@dataclass
class _Prepared:
    release: Any = None
    error: str | None = None


@dataclass(slots=True)
class _Next:
    """A job a sender took from the queue while sending the one before, so that its envelope
    could go out behind that message's content (see SmtpConnection.send `then`)."""

    job: Claimed
    domain: str
    data: bytes | str | None = None  # rendered (or why not), None when not rendered yet
    envelope_from: str = ""
    domain_held: bool = False  # its domain slot is taken: its envelope rides behind


@dataclass
class Worker:
    settings: Settings
    session_factory: sessionmaker[Session]
    worker_id: str
    until_idle: bool = False
    include_due: bool = True  # with a scheduler running, a due blast counts as work
    stop_event: threading.Event | None = None
    sent_count: int = 0
    attempt_count: int = 0
    _queue: asyncio.Queue[Claimed | None] = field(default_factory=asyncio.Queue)
    _pending: list[Attempt] = field(default_factory=list)  # results not yet handed to the recorder
    _pending_done: asyncio.Future[None] | None = None  # done when those are committed
    _to_release: list[int] = field(default_factory=list)
    _running: set[int] = field(default_factory=set)
    # The brake: per blast, whether each of its last `error_window` results here was bad. When
    # too many are, the blast stops here at once (`_braked`), without waiting for the recorder to
    # pause it in the database: against a fast relay that refuses everything, hundreds of
    # journalists would otherwise fail in the meantime. The brake holds until a claim that began
    # after the recorder committed those results (and pause_on_error_rate, which sees every
    # worker's results, judged them) reads the blast's status: paused there, or claimed again.
    _recent: dict[int, deque[bool]] = field(default_factory=dict)
    # blast id: the attempt that braked it, then (once recorded) the monotonic time of that commit
    _braked: dict[int, Attempt | float] = field(default_factory=dict)
    _prepared: dict[int, _Prepared] = field(default_factory=dict)  # by blast id
    _in_flight: int = 0
    _relay_failures: int = 0
    _relay_down_until: float = 0.0

    def __post_init__(self) -> None:
        self._stopping = asyncio.Event()
        self._need_more = asyncio.Event()
        self._record_wanted = asyncio.Event()
        self._senders_done = False
        self._last_renewal = time.monotonic()
        self._rate = RateLimiter(self.settings.send_rate)
        self._domains = DomainLimiter(self.settings.domain_concurrency)
        self._claim_pool = ThreadPoolExecutor(1, thread_name_prefix="claim")
        self._record_pool = ThreadPoolExecutor(1, thread_name_prefix="record")
        self._thread = threading.local()  # each pool thread's database connection

    # ---- plumbing -------------------------------------------------------------------------
    async def _db(self, pool: ThreadPoolExecutor, fn: Callable[[Session], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, self._in_transaction, fn)

    def _in_transaction(self, fn: Callable[[Session], T]) -> T:
        """One transaction on this thread's own connection, kept open between transactions: the
        claim and record threads commit hundreds of times a second, and a pool checkout costs a
        ping (PostgreSQL) and a rollback on return each time. A failed connection is replaced."""
        engine = self.session_factory.kw.get("bind")
        if engine is None:
            with session_scope(self.session_factory) as session:
                return fn(session)
        connection = getattr(self._thread, "connection", None)
        if connection is None or connection.closed or connection.invalidated:
            connection = self._thread.connection = engine.connect()
        session = self.session_factory(bind=connection)
        try:
            result = fn(session)
            session.commit()
            return result
        except BaseException as exc:
            session.rollback()
            if isinstance(exc, SQLAlchemyError):
                self._thread.connection = None
                connection.close()
            raise
        finally:
            session.close()

    def _close_connection(self) -> None:
        connection = getattr(self._thread, "connection", None)
        self._thread.connection = None
        if connection is not None:
            connection.close()

    def stop(self) -> None:
        if not self._stopping.is_set():
            log.info("worker %s: stopping, finishing messages in flight", self.worker_id)
            self._stopping.set()
            self._need_more.set()

    async def _watch_stop_event(self) -> None:
        while not self._stopping.is_set():
            if self.stop_event is not None and self.stop_event.is_set():
                self.stop()
                return
            await asyncio.sleep(0.1)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up early when asked to stop or when senders want more rows."""
        self._need_more.clear()
        try:
            await asyncio.wait_for(self._need_more.wait(), seconds)
        except TimeoutError:
            pass

    # ---- claimer --------------------------------------------------------------------------
    def _claim(self, session: Session, limit: int) -> tuple[list[int], list[Claimed]]:
        running = running_blast_ids(session)
        claimed = claim_due_messages(session, worker_id=self.worker_id, now=_now(), limit=limit,
                                     blast_ids=running) if limit else []
        # Prepared once per blast (the release is frozen once its blast has started); forgotten
        # in _claimer when the blast stops running, so a later blast of an edited release, or a
        # release that failed to prepare, is prepared afresh.
        for blast_id, release_id in {(c.blast_id, c.release_id) for c in claimed}:
            if blast_id in self._prepared:
                continue
            try:
                self._prepared[blast_id] = _Prepared(prepare_release(session, release_id, self.settings))
            except (NotFound, RenderError) as exc:
                log.error("blast %s: release %s cannot be prepared: %s", blast_id, release_id, exc)
                self._prepared[blast_id] = _Prepared(None, f"the release cannot be rendered: {exc}")
            except Exception as exc:  # a renderer bug fails this blast's rows, never the worker
                log.exception("blast %s: preparing release %s failed", blast_id, release_id)
                self._prepared[blast_id] = _Prepared(
                    None, f"the release cannot be rendered: {type(exc).__name__}: {exc}")
        return running, claimed

    async def _renew_leases(self) -> None:
        """Every third of a lease, renew the lease of the rows this worker holds."""
        if time.monotonic() - self._last_renewal < self.settings.lease_seconds / 3:
            return
        self._last_renewal = time.monotonic()
        try:
            await self._db(self._claim_pool, lambda s: renew_claims(s, worker_id=self.worker_id, now=_now()))
        except SQLAlchemyError:
            log.exception("worker %s: renewing leases failed", self.worker_id)

    async def _claimer(self) -> None:
        batch = self.settings.batch_size
        last_housekeeping = 0.0
        while not self._stopping.is_set():
            await self._renew_leases()
            limit = batch if self._queue.qsize() < batch else 0
            claim_started = time.monotonic()
            try:
                running, claimed = await self._db(self._claim_pool,
                                                  lambda s, n=limit: self._claim(s, n))  # type: ignore[misc]
            except SQLAlchemyError:
                log.exception("worker %s: claiming failed; retrying", self.worker_id)
                await self._sleep(self.settings.worker_poll_seconds)
                continue
            # On the loop, together: a sender checks _running and renders without an await
            # between, so it never meets a blast whose prepared release was just forgotten.
            for blast_id, mark in list(self._braked.items()):
                if isinstance(mark, float) and mark < claim_started:
                    del self._braked[blast_id]  # this claim read the status decided after the brake
            self._running = set(running) - self._braked.keys()
            for blast_id in self._prepared.keys() - self._running:
                del self._prepared[blast_id]
            for job in claimed:
                self._queue.put_nowait(job)
            if limit and len(claimed) == limit:
                continue
            if limit == 0:
                await self._sleep(self.settings.worker_poll_seconds)
                continue
            if time.monotonic() - last_housekeeping >= self.settings.worker_poll_seconds or not claimed:
                last_housekeeping = time.monotonic()
                await self._housekeep()
            if claimed:
                continue
            if self.until_idle and self._is_locally_idle() and not await self._db(
                    self._claim_pool, lambda s: has_pending_work(s, now=_now(),
                                                                 include_due=self.include_due)):
                if self._is_locally_idle():
                    log.info("worker %s: nothing left to send", self.worker_id)
                    # The last results may have landed after this round's housekeeping: finish
                    # the blasts they completed before leaving.
                    await self._housekeep()
                    self.stop()
                    return
            await self._sleep(self.settings.worker_poll_seconds)

    async def _housekeep(self) -> None:
        """Stale claims back to the queue, overdue blasts stopped, completed blasts finished."""
        try:
            await self._db(self._claim_pool, lambda s: housekeep(s, self.settings, now=_now()))
        except SQLAlchemyError:
            log.exception("worker %s: housekeeping failed", self.worker_id)

    def _is_locally_idle(self) -> bool:
        return self._queue.empty() and self._in_flight == 0 and not self._pending

    # ---- senders --------------------------------------------------------------------------
    def _render(self, job: Claimed) -> bytes | str:
        prepared = self._prepared.get(job.blast_id)
        if prepared is None or prepared.release is None:
            return (prepared.error if prepared else None) or "the release was not prepared"
        try:
            return bytes(prepared.release.render_bytes(job.recipient,
                                                       message_id=job.message_id, now=_now(),
                                                       blast_id=job.blast_id, wire=True))
        except RenderError as exc:
            return f"render error: {exc}"
        except Exception as exc:  # a renderer bug must fail this row only, not the whole worker
            log.exception("message %s: rendering failed", job.id)
            return f"render error: {type(exc).__name__}: {exc}"

    async def _sender(self) -> None:
        connection = SmtpConnection(self.settings)
        previous: asyncio.Future[None] | None = None  # the recording of this connection's last message
        carried: _Next | None = None
        try:
            while True:
                if carried is None:
                    job = await self._queue.get()
                    if job is None:
                        break
                    self._in_flight += 1
                else:
                    job = carried.job
                if self._queue.qsize() < self.settings.batch_size:
                    self._need_more.set()
                if job.blast_id not in self._running or self._stopping.is_set():
                    if carried is not None and carried.domain_held:
                        self._domains.release(carried.domain)
                        await connection.close()  # its envelope is open: the relay drops it
                    self._in_flight -= 1
                    self._to_release.append(job.id)
                    self._record_wanted.set()
                    carried = None
                    continue
                previous, carried = await self._deliver(connection, job, previous, carried)
            if previous is not None:
                await previous
        finally:
            await connection.close(polite=True)

    def _take_next(self) -> _Next | None:
        """The next job from the queue, taken (and rendered, when its blast runs) while the
        current message goes out, so that its envelope can follow that message's content."""
        if self._queue.empty() or self._rate.interval or self._relay_down_until or self._stopping.is_set():
            return None
        job = self._queue.get_nowait()
        if job is None:  # the end: leave it for the loop
            self._queue.put_nowait(None)
            return None
        self._in_flight += 1
        following = _Next(job, _domain(job.email))
        prepared = self._prepared.get(job.blast_id)
        if job.blast_id in self._running and prepared is not None and prepared.release is not None:
            following.data = self._render(job)
            following.envelope_from = prepared.release.envelope_from
        return following

    async def _deliver(self, connection: SmtpConnection, job: Claimed, previous: asyncio.Future[None] | None,
                       carried: _Next | None) -> tuple[asyncio.Future[None], _Next | None]:
        """Render (unless done already) and send one message; returns the future of its recording
        and the next job when one was taken along. The send waits for `previous` before DATA,
        so at most one accepted message per connection is unrecorded."""
        data = carried.data if carried is not None and carried.data is not None else self._render(job)
        chained = carried is not None and carried.domain_held
        following: _Next | None = None
        started = time.perf_counter()
        if isinstance(data, str):
            if carried is not None and carried.domain_held:
                self._domains.release(carried.domain)
                await connection.close()
            attempt = self._attempt(job, DeliveryOutcome.failed, None, data[:1000], "RenderError", None)
        else:
            # Read before the first await: the claimer may forget a paused blast's release.
            envelope_from = self._prepared[job.blast_id].release.envelope_from  # type: ignore[union-attr]
            domain = _domain(job.email)
            if not chained:
                await self._domains.acquire(domain)  # not `async with hold()`: a generator per message
            try:
                if not chained:
                    delay = self._relay_down_until - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await self._rate.wait()
                following = self._take_next()
                then = None
                if (following is not None and isinstance(following.data, bytes)
                        and connection.can_chain(following.envelope_from, following.job.email)
                        and self._domains.available(following.domain)):
                    await self._domains.acquire(following.domain)  # available: no wait
                    following.domain_held = True
                    then = (following.envelope_from, following.job.email, len(following.data))
                result = await connection.send(envelope_from, job.email, data, before_data=previous,
                                               wire=True, then=then)  # the DATA form, see _render
            finally:
                self._domains.release(domain)
            self._note_relay(result.relay_down, result.smtp_reply)
            attempt = self._attempt(job, result.outcome, result.smtp_code, result.smtp_reply,
                                    result.error_type, time.perf_counter() - started)
            if following is not None and following.domain_held and not connection.is_open_for(
                    following.envelope_from, following.job.email):
                # Its envelope was refused (a result of its own) or not tried (sent afresh next).
                self._domains.release(following.domain)
                following.domain_held = False
                refused = connection.then_result
                if refused is not None:
                    self._queue_attempt(self._attempt(
                        following.job, refused.outcome, refused.smtp_code, refused.smtp_reply,
                        refused.error_type, None))
                    following = None
        return self._queue_attempt(attempt), following

    def _queue_attempt(self, attempt: Attempt) -> asyncio.Future[None]:
        """Hand a result to the recorder; the future (one per group commit, shared by all its
        results) is done once it is committed."""
        if self._pending_done is None:
            self._pending_done = asyncio.get_running_loop().create_future()
        self._pending.append(attempt)
        recent = self._recent.get(attempt.blast_id)
        if recent is None:
            recent = self._recent[attempt.blast_id] = deque(maxlen=self.settings.error_window)
        recent.append(attempt.outcome in (DeliveryOutcome.failed, DeliveryOutcome.deferred))
        if (len(recent) == recent.maxlen and attempt.blast_id in self._running
                and sum(recent) >= self.settings.error_pause_threshold * len(recent)):
            log.warning("worker %s: blast %s: %d of the last %d attempts failed, holding it until "
                        "they are recorded", self.worker_id, attempt.blast_id, sum(recent), len(recent))
            self._running.discard(attempt.blast_id)
            self._braked[attempt.blast_id] = attempt
        self._record_wanted.set()
        return self._pending_done

    def _attempt(self, job: Claimed, outcome: DeliveryOutcome, code: int | None, reply: str | None,
                 error_type: str | None, duration: float | None) -> Attempt:
        return Attempt(job.id, job.blast_id, job.contact_id, job.attempts + 1, outcome, code, reply,
                       error_type, duration, _now())

    def _note_relay(self, down: bool, reply: str | None) -> None:
        """A dead relay is logged once, then every connection backs off (doubling, up to a minute)."""
        if down:
            self._relay_failures += 1
            if self._relay_failures == 1:
                log.error("worker %s: cannot reach the relay %s:%s: %s", self.worker_id,
                          self.settings.smtp_host, self.settings.smtp_port, reply)
            backoff = min(0.5 * 2 ** min(self._relay_failures - 1, 10), MAX_RELAY_BACKOFF_SECONDS)
            self._relay_down_until = time.monotonic() + backoff
        elif self._relay_failures:
            log.info("worker %s: the relay answers again", self.worker_id)
            self._relay_failures = 0
            self._relay_down_until = 0.0

    # ---- recorder -------------------------------------------------------------------------
    def _record(self, session: Session, attempts: list[Attempt], releases: list[int]) -> list[int]:
        release_claims(session, releases)
        record_attempts(session, self.settings, attempts)
        troubled = {a.blast_id for a in attempts if a.outcome != DeliveryOutcome.sent}
        return pause_on_error_rate(session, self.settings, troubled, now=_now()) if troubled else []

    async def _recorder(self) -> None:
        while True:
            await self._record_wanted.wait()
            self._record_wanted.clear()
            attempts, self._pending = self._pending, []
            done, self._pending_done = self._pending_done, None
            releases, self._to_release = self._to_release, []
            if attempts or releases:
                try:
                    paused = await self._db(self._record_pool,
                                            lambda s, a=attempts, r=releases: self._record(s, a, r))  # type: ignore[misc]
                except SQLAlchemyError:
                    log.exception("worker %s: recording %d results failed; retrying", self.worker_id,
                                  len(attempts))
                    self._pending[:0], self._to_release[:0] = attempts, releases
                    if done is not None:  # the senders waiting on it wait for the retry
                        if self._pending_done is None:
                            self._pending_done = done
                        else:
                            self._pending_done.add_done_callback(lambda _f, d=done: d.set_result(None))  # type: ignore[misc]
                    await asyncio.sleep(1.0)
                    self._record_wanted.set()
                    continue
                self._running.difference_update(paused)
                for blast_id, mark in list(self._braked.items()):
                    if any(a is mark for a in attempts):  # recorded and judged
                        self._braked[blast_id] = time.monotonic()
                        self._recent.pop(blast_id, None)
                self._in_flight -= len(attempts)
                self.attempt_count += len(attempts)
                self.sent_count += sum(1 for a in attempts if a.outcome == DeliveryOutcome.sent)
                if done is not None:
                    done.set_result(None)
            if self._senders_done and not self._pending and not self._to_release:
                return

    # ---- the whole worker -----------------------------------------------------------------
    async def run(self) -> None:
        log.info("worker %s: started (%d connections, batch %d)", self.worker_id,
                 self.settings.smtp_connections, self.settings.batch_size)
        watcher = asyncio.create_task(self._watch_stop_event())
        recorder = asyncio.create_task(self._recorder())
        senders = [asyncio.create_task(self._sender()) for _ in range(self.settings.smtp_connections)]
        try:
            await self._claimer()
        finally:
            self.stop()
            while not self._queue.empty():  # claimed but not started: back to the queue
                job = self._queue.get_nowait()
                if job is not None:
                    self._to_release.append(job.id)
            for _ in senders:
                self._queue.put_nowait(None)
            await asyncio.gather(*senders, return_exceptions=True)
            self._senders_done = True
            self._record_wanted.set()
            await recorder
            watcher.cancel()
            for pool in (self._claim_pool, self._record_pool):
                pool.submit(self._close_connection)
                pool.shutdown()
            log.info("worker %s: stopped after %d attempts, %d sent", self.worker_id,
                     self.attempt_count, self.sent_count)


def _domain(address: str) -> str:
    """The recipient domain the per-domain limit counts."""
    return address.rpartition("@")[2].lower()


def new_worker_id(label: str | None = None) -> str:
    """Unique per run (host, pid, random), so leases of two workers never get mixed up; the
    optional label only makes it readable."""
    unique = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
    return f"{label}@{unique}"[:100] if label else unique


def _worker_engine(settings: Settings) -> Any:
    engine = make_engine(settings.database_url)
    if engine.dialect.name == "postgresql":
        # The worker commits very often: without waiting for the WAL flush a commit is ~10x
        # cheaper. A worker crash loses nothing (the server has the commit); only a PostgreSQL
        # crash could lose the last few hundred milliseconds of results, which are then resent.
        @event.listens_for(engine, "connect")
        def _async_commit(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET synchronous_commit TO off")
            dbapi_connection.commit()
    return engine


async def run_worker_async(settings: Settings, *, until_idle: bool = False,
                           stop_event: threading.Event | None = None, worker_id: str | None = None,
                           include_due: bool = True,
                           session_factory: sessionmaker[Session] | None = None) -> Worker:
    engine = None
    if session_factory is None:
        engine = _worker_engine(settings)
        session_factory = make_session_factory(engine)
    worker = Worker(settings, session_factory, new_worker_id(worker_id), until_idle=until_idle,
                    include_due=include_due, stop_event=stop_event)
    loop = asyncio.get_running_loop()
    handled = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, worker.stop)
                handled.append(sig)
            except (NotImplementedError, RuntimeError):
                pass
    try:
        await worker.run()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        if engine is not None:
            engine.dispose()
    return worker


def run_worker(settings: Settings, *, until_idle: bool = False, stop_event: threading.Event | None = None,
               worker_id: str | None = None, include_due: bool = True,
               session_factory: sessionmaker[Session] | None = None) -> Worker:
    """Run the worker until stopped (SIGTERM/SIGINT in the main thread, or `stop_event` from any
    thread), or with `until_idle` until nothing is queued, sending, deferred or due. Runs its
    own event loop (uvloop when installed), so it can run in a background thread. `worker_id`
    is a readable label; a unique suffix is always added."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(run_worker_async(settings, until_idle=until_idle, stop_event=stop_event,
                                           worker_id=worker_id, include_due=include_due,
                                           session_factory=session_factory))
