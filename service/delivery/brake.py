"""The error brake: a blast whose recent results in this worker are mostly bad stops here at once,
before the recorder has written them and paused it in the database."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import KeysView, Sequence

from service.delivery.queue import Attempt
from service.logs import bind
from service.models import DeliveryOutcome

log = logging.getLogger(__name__)

_BAD = frozenset({DeliveryOutcome.failed, DeliveryOutcome.deferred})


class ErrorBrake:
    """Per blast, whether each of its last `window` results here was bad. When `threshold` of
    them are, the blast leaves the set of blasts this worker sends: against a fast relay that
    refuses everything, hundreds of journalists would otherwise fail while the recorder catches
    up. The brake holds until a claim that began after the recorder committed those results
    (and `pause_on_error_rate`, which sees every worker's results, judged them) reads the
    blast's status: paused there, or running again."""

    def __init__(self, window: int, threshold: float, worker_id: str) -> None:
        self.window = window
        self.threshold = threshold
        self.worker_id = worker_id
        self._recent: dict[int, deque[bool]] = {}
        # blast id: the attempt that braked it, then (once recorded) the monotonic time of that commit
        self._held: dict[int, Attempt | float] = {}

    def note(self, attempt: Attempt, running: set[int]) -> None:
        """Count one result (the hot path: once per message); brake its blast, taking it out of
        `running`, when the window is full and bad enough."""
        recent = self._recent.get(attempt.blast_id)
        if recent is None:
            recent = self._recent[attempt.blast_id] = deque(maxlen=self.window)
        recent.append(attempt.outcome in _BAD)
        if (len(recent) == recent.maxlen and attempt.blast_id in running
                and sum(recent) >= self.threshold * len(recent)):
            bind(log, blast_id=attempt.blast_id).warning(
                "worker %s: blast %s: %d of the last %d attempts failed, holding it until they are "
                "recorded", self.worker_id, attempt.blast_id, sum(recent), len(recent))
            running.discard(attempt.blast_id)
            self._held[attempt.blast_id] = attempt

    def recorded(self, attempts: Sequence[Attempt]) -> None:
        """After a group commit: a blast braked by one of these results is now judged in the
        database; its window starts afresh."""
        for blast_id, mark in list(self._held.items()):
            if any(a is mark for a in attempts):
                self._held[blast_id] = time.monotonic()
                self._recent.pop(blast_id, None)

    def release_judged(self, claim_started: float) -> None:
        """A claim that began (monotonic time) after a braked blast's results were committed has
        read the status decided from them: the brake lets go."""
        for blast_id, mark in list(self._held.items()):
            if isinstance(mark, float) and mark < claim_started:
                del self._held[blast_id]

    @property
    def held_blast_ids(self) -> KeysView[int]:
        return self._held.keys()
