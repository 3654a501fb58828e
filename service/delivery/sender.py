"""Sending: each sender task owns one SMTP connection, takes jobs from the claimer's queue, renders
each from its blast's prepared release and sends it, within the rate, domain and relay limits.

A sender waits until its previous result is committed before sending the next message's content,
so a SIGKILL can lose the record of at most one accepted message per connection (sent again after
restart: at most one duplicate each). While a message goes out, its sender takes the next job
along: on a relay that pipelines, that job's envelope is written behind this message's content
(see SmtpConnection.send `then`).

Stop means stop: a job's blast must be in the claimer's `running` set (an O(1) lookup, kept
within half a second of the database by the claimer) when its SMTP transaction starts, i.e.
after every wait (domain slot, relay backoff, rate slot), which a stopping blast cuts short;
and, for an envelope chained behind the previous message, again right before its content is
written. Otherwise the job goes back (see Claimer)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from service.config import Settings
from service.delivery.claimer import Claimer
from service.delivery.limits import DomainLimiter, RateLimiter, RelayBackoff, recipient_domain
from service.delivery.queue import Attempt, Claimed
from service.delivery.recorder import Recorder
from service.delivery.smtp import SendResult, SmtpConnection, is_connection_limit
from service.errors import RenderError
from service.logs import bind
from service.models import DeliveryOutcome

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Next:
    """A job a sender took from the queue while sending the one before, so that its envelope
    could go out behind that message's content (see SmtpConnection.send `then`)."""

    job: Claimed
    domain: str
    data: bytes | str | None = None  # rendered (or why not), None when not rendered yet
    envelope_from: str = ""
    domain_held: bool = False  # its domain slot is taken: its envelope rides behind


class Sender:
    """Shared by the worker's sender tasks: `run()` is one connection's loop. Jobs of a blast not
    in the claimer's `running` (paused, braked) and jobs met while stopping go back to the queue
    through the recorder; every result goes to the recorder."""

    def __init__(self, settings: Settings, worker_id: str, claimer: Claimer, recorder: Recorder,
                 stopping: asyncio.Event) -> None:
        self.settings = settings
        self.rate = RateLimiter(settings.send_rate)
        self.domains = DomainLimiter(settings.domain_concurrency)
        self.relay = RelayBackoff(worker_id, f"{settings.smtp_host}:{settings.smtp_port}")
        self._queue = claimer.queue
        self._need_more = claimer.need_more
        self._running = claimer.running
        self._stops = claimer.stops
        self._prepared = claimer.prepared
        self._recorder = recorder
        self._stopping = stopping

    async def run(self) -> None:
        """Send until the queue yields its end mark; then wait for the last result's recording."""
        connection = SmtpConnection(self.settings)
        previous: asyncio.Future[None] | None = None  # the recording of this connection's last message
        carried: _Next | None = None
        try:
            while True:
                if carried is None:
                    job = await self._queue.get()
                    if job is None:
                        break
                    self._recorder.in_flight += 1
                else:
                    job = carried.job
                if self._queue.qsize() < self.settings.batch_size:
                    self._need_more.set()
                if job.blast_id not in self._running or self._stopping.is_set():
                    await self._put_back(connection, job, carried)
                    carried = None
                    continue
                previous, carried = await self._deliver(connection, job, previous, carried)
            if previous is not None:
                await previous
        finally:
            await connection.close(polite=True)

    async def _put_back(self, connection: SmtpConnection, job: Claimed, carried: _Next | None) -> None:
        """Not sent after all: its blast stopped here, or the worker is stopping."""
        if carried is not None and carried.domain_held:
            # Its envelope is open (DATA got 354), its content not written: RSET is impossible
            # now (it would be read as content), so the connection is dropped, and the relay
            # discards the unfinished message (RFC 5321 §4.1.1.4). Nothing of it is delivered.
            self.domains.release(carried.domain)
            await connection.close()
        self._recorder.put_back(job.id)

    def _may_send(self, blast_id: int) -> bool:
        return blast_id in self._running and not self._stopping.is_set()

    async def _wait(self, seconds: float, blast_id: int) -> bool:
        """Wait `seconds` (a rate slot, a relay backoff), cut short when the blast stops here or
        the worker stops; whether the job may still be sent."""
        deadline = time.monotonic() + seconds
        for _ in range(10_000):  # bounded; each turn ends at the deadline or at a stop
            if seconds <= 0 or not self._may_send(blast_id):
                break
            try:
                await asyncio.wait_for(self._stops.wait(), seconds)
            except TimeoutError:
                pass
            seconds = deadline - time.monotonic()
        return self._may_send(blast_id)

    def _render(self, job: Claimed) -> bytes | str:
        """The message in its DATA form, or why it cannot be rendered."""
        prepared = self._prepared.get(job.blast_id)
        if prepared is None or prepared.release is None:
            return (prepared.error if prepared else None) or "the release was not prepared"
        try:
            return bytes(prepared.release.render_bytes(job.recipient, message_id=job.message_id,
                                                       now=_now(), blast_id=job.blast_id, wire=True))
        except RenderError as exc:
            return f"render error: {exc}"
        except Exception as exc:  # a renderer bug must fail this row only, not the whole worker
            bind(log, blast_id=job.blast_id, delivery_id=job.id).exception(
                "message %s: rendering failed", job.id)
            return f"render error: {type(exc).__name__}: {exc}"

    def _take_next(self) -> _Next | None:
        """The next job from the queue, taken (and rendered, when its blast runs) while the
        current message goes out, so that its envelope can follow that message's content."""
        if (self._queue.empty() or self.rate.interval or self.relay.down_until
                or self._stopping.is_set()):
            return None
        job = self._queue.get_nowait()
        if job is None:  # the end: leave it for the loop
            self._queue.put_nowait(None)
            return None
        self._recorder.in_flight += 1
        following = _Next(job, recipient_domain(job.email))
        prepared = self._prepared.get(job.blast_id)
        if job.blast_id in self._running and prepared is not None and prepared.release is not None:
            following.data = self._render(job)
            following.envelope_from = prepared.release.envelope_for(job.blast_id, job.contact_id)
        return following

    async def _deliver(self, connection: SmtpConnection, job: Claimed, previous: asyncio.Future[None] | None,
                       carried: _Next | None) -> tuple[asyncio.Future[None] | None, _Next | None]:
        """Render (unless done already) and send one message; returns the future of its recording
        (`previous` when its blast stopped meanwhile and it went back) and the next job when one
        was taken along. The send waits for `previous` before DATA,
        so at most one accepted message per connection is unrecorded."""
        data = carried.data if carried is not None and carried.data is not None else self._render(job)
        if isinstance(data, str):
            if carried is not None and carried.domain_held:
                self.domains.release(carried.domain)
                await connection.close()
            return self._recorder.add(_attempt(job, DeliveryOutcome.failed, None, data[:1000],
                                               "RenderError", None)), None
        chained = carried is not None and carried.domain_held
        started = time.perf_counter()
        # Read before the first await: the claimer may forget a paused blast's release.
        envelope_from = self._prepared[job.blast_id].release.envelope_for(  # type: ignore[union-attr]
            job.blast_id, job.contact_id)
        domain = recipient_domain(job.email)
        if chained and previous is not None:
            # Its content goes only once the previous result is committed (the rule of `send`):
            # wait here, so the blast is looked at after that wait and right before the content.
            await previous
            if not self._may_send(job.blast_id):
                await self._put_back(connection, job, carried)
                return previous, None
        if not chained:
            await self.domains.acquire(domain)  # not `async with hold()`: a generator per message
        try:
            if not chained:
                delay = self.relay.down_until - time.monotonic()
                if delay > 0:
                    await self._wait(delay, job.blast_id)
                delay = self.rate.reserve() if self._may_send(job.blast_id) else 0.0
                if delay > 0:
                    await self._wait(delay, job.blast_id)
                if not self._may_send(job.blast_id):  # after every wait, before MAIL
                    self._recorder.put_back(job.id)
                    return previous, None
            following = self._take_next()
            then = None
            if (following is not None and isinstance(following.data, bytes)
                    and connection.can_chain(following.envelope_from, following.job.email)
                    and self.domains.available(following.domain)):
                await self.domains.acquire(following.domain)  # available: no wait
                following.domain_held = True
                then = (following.envelope_from, following.job.email, len(following.data))
            result = await connection.send(envelope_from, job.email, data, before_data=previous,
                                           wire=True, then=then)  # the DATA form, see _render
        finally:
            self.domains.release(domain)
        self.relay.note(result.relay_down, result.smtp_reply)
        attempt = _attempt(job, result.outcome, result.smtp_code, result.smtp_reply,
                           result.error_type, time.perf_counter() - started)
        if following is not None and following.domain_held:
            following = self._check_following(connection, following)
        return self._recorder.add(attempt), following

    def _check_following(self, connection: SmtpConnection, following: _Next) -> _Next | None:
        """After a send that carried `following`'s envelope: still open, it goes next on this
        connection; refused, that is its result; not tried, it is sent afresh next."""
        if connection.is_open_for(following.envelope_from, following.job.email):
            return following
        self.domains.release(following.domain)
        following.domain_held = False
        refused: SendResult | None = connection.then_result
        if refused is None or is_connection_limit(refused):
            return following  # not tried, or the relay's per-connection limit: sent afresh next
        self._recorder.add(_attempt(following.job, refused.outcome, refused.smtp_code,
                                    refused.smtp_reply, refused.error_type, None))
        return None


def _attempt(job: Claimed, outcome: DeliveryOutcome, code: int | None, reply: str | None,
             error_type: str | None, duration: float | None) -> Attempt:
    return Attempt(job.id, job.blast_id, job.contact_id, job.attempts + 1, outcome, code, reply,
                   error_type, duration, _now())


def _now() -> datetime:
    return datetime.now(UTC)
