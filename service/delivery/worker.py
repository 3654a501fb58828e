"""The worker: claim due ledger rows in batches, render each from the release prepared once, send
over a pool of reused SMTP connections, record every attempt in group commits, retry later.

One asyncio loop wires the parts: a Claimer keeps one or two batches ahead in a queue,
`smtp_connections` tasks of the Sender each own a connection, a Recorder writes results, the
ErrorBrake stops a blast that fails here before the database pauses it. Claims and records each
run on their own database thread, so SMTP keeps flowing."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import make_engine, make_session_factory
from service.delivery.brake import ErrorBrake
from service.delivery.claimer import Claimer
from service.delivery.db_thread import DbThread
from service.delivery.recorder import Recorder
from service.delivery.sender import Sender

log = logging.getLogger(__name__)


@dataclass
class Worker:
    settings: Settings
    session_factory: sessionmaker[Session]
    worker_id: str
    until_idle: bool = False
    include_due: bool = True  # with a scheduler running, a due blast counts as work
    stop_event: threading.Event | None = None

    def __post_init__(self) -> None:
        settings, worker_id = self.settings, self.worker_id
        self._stopping = asyncio.Event()
        self._databases = (DbThread(self.session_factory, "claim"), DbThread(self.session_factory, "record"))
        running: set[int] = set()  # the blasts this worker may send now (see Claimer)
        self.brake = ErrorBrake(settings.error_window, settings.error_pause_threshold, worker_id)
        self.recorder = Recorder(settings, worker_id, self._databases[1], self.brake, running)
        self.claimer = Claimer(settings, worker_id, self._databases[0], self.brake, running, self._stopping,
                               until_idle=self.until_idle, include_due=self.include_due,
                               is_drained=self.recorder.is_idle, put_back=self.recorder.put_back_unstarted)
        self.sender = Sender(settings, worker_id, self.claimer, self.recorder, self._stopping)

    @property
    def sent_count(self) -> int:
        return self.recorder.sent_count

    @property
    def attempt_count(self) -> int:
        return self.recorder.attempt_count

    def stop(self) -> None:
        if not self._stopping.is_set():
            log.info("worker %s: stopping, finishing messages in flight", self.worker_id)
            self._stopping.set()
            self.claimer.wake()
            self.claimer.signal_stops()

    async def _watch_stop_event(self) -> None:
        while not self._stopping.is_set():
            if self.stop_event is not None and self.stop_event.is_set():
                self.stop()
                return
            await asyncio.sleep(0.1)

    async def run(self) -> None:
        log.info("worker %s: started (%d connections, batch %d)", self.worker_id,
                 self.settings.smtp_connections, self.settings.batch_size)
        watcher = asyncio.create_task(self._watch_stop_event())
        recorder = asyncio.create_task(self.recorder.run())
        senders = [asyncio.create_task(self.sender.run()) for _ in range(self.settings.smtp_connections)]
        try:
            await self.claimer.run()
        finally:
            self.stop()
            self.recorder.put_back_unstarted(self.claimer.close_queue(len(senders)))
            await asyncio.gather(*senders, return_exceptions=True)
            self.recorder.finish()
            await recorder
            watcher.cancel()
            for database in self._databases:
                database.close()
            log.info("worker %s: stopped after %d attempts, %d sent", self.worker_id,
                     self.attempt_count, self.sent_count)


def new_worker_id(label: str | None = None) -> str:
    """Unique per run (host, pid, random), so leases of two workers never get mixed up; the
    optional label only makes it readable."""
    unique = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
    return f"{label}@{unique}"[:100] if label else unique


def _worker_engine(settings: Settings) -> Any:
    engine = make_engine(settings.database_url)
    if engine.dialect.name == "postgresql":
        # The worker commits very often: not waiting for the WAL flush makes each commit much
        # cheaper (bench/RESULTS.md). A worker crash loses nothing (the server has the commit);
        # only a PostgreSQL crash could lose the last few hundred milliseconds of results, which
        # are then resent.
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
    for warning in settings.startup_warnings():
        log.warning("worker %s: %s", worker.worker_id, warning)
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
