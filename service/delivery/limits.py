"""How fast the worker may send: an even rate across the worker, a cap on sends in flight per
recipient domain, and a backoff while the relay cannot be reached."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

log = logging.getLogger(__name__)

MAX_RELAY_BACKOFF_SECONDS = 60.0


class RateLimiter:
    """Spaces sends evenly at `rate` messages per second across the worker (0 = unlimited)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_slot = time.monotonic()

    def reserve(self) -> float:
        """Take the next slot: the seconds until it comes (0 when it is now)."""
        if not self.interval:
            return 0.0
        now = time.monotonic()
        slot = max(self.next_slot, now)
        self.next_slot = slot + self.interval
        return slot - now

    async def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


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
        """For callers off the hot path; the sender pairs acquire/release itself (no generator)."""
        await self.acquire(domain)
        try:
            yield
        finally:
            self.release(domain)

    def __len__(self) -> int:
        return len(self._domains)


def recipient_domain(address: str) -> str:
    """The recipient domain the per-domain limit counts."""
    return address.rpartition("@")[2].lower()


class RelayBackoff:
    """A dead relay is logged once, then every connection waits until `down_until` (monotonic
    time) before trying again, doubling the wait with each failed round of tries (not each
    failed connection) up to a minute."""

    def __init__(self, worker_id: str, relay: str) -> None:
        self.worker_id = worker_id
        self.relay = relay  # host:port, for the log line
        self.failure_count = 0
        self.down_until = 0.0

    @property
    def backoff_seconds(self) -> float:
        if not self.failure_count:
            return 0.0
        return min(0.5 * 2 ** min(self.failure_count - 1, 10), MAX_RELAY_BACKOFF_SECONDS)

    def note(self, down: bool, reply: str | None) -> None:
        """After each send: `down` when the relay could not even be reached. Failures while the
        wait runs are the same outage (the pool's connections fail together): only a failure
        after the wait is over doubles it."""
        if down:
            if self.failure_count and time.monotonic() < self.down_until:
                return
            self.failure_count += 1
            if self.failure_count == 1:
                log.error("worker %s: cannot reach the relay %s: %s", self.worker_id, self.relay, reply)
            self.down_until = time.monotonic() + self.backoff_seconds
        elif self.failure_count:
            log.info("worker %s: the relay answers again", self.worker_id)
            self.failure_count = 0
            self.down_until = 0.0
