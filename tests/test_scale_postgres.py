"""Scale-out: two worker processes share one blast's queue and send each message exactly once."""

from __future__ import annotations

import dataclasses

import pytest
from test_blasts import ledger
from test_worker_crash import spawn_worker, start_blast

RECIPIENTS = 2000


@pytest.mark.slow
def test_two_workers_send_each_recipient_exactly_once(db, smtp_settings, smtpd, backend) -> None:  # type: ignore[no-untyped-def]
    """Two `communique worker --until-idle` processes on one 2,000-recipient blast: every recipient
    gets exactly one message (FOR UPDATE SKIP LOCKED on PostgreSQL; serialized writers on SQLite)."""
    settings = dataclasses.replace(smtp_settings, smtp_connections=4, batch_size=50)
    blast = start_blast(db, settings, RECIPIENTS)
    workers = [spawn_worker(settings, "--until-idle") for _ in range(2)]
    try:
        for worker in workers:
            assert worker.wait(120) == 0, worker.stderr.read().decode()  # type: ignore[union-attr]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.stderr.close()  # type: ignore[union-attr]
    received = smtpd.handler.recipient_counts()
    assert len(received) == RECIPIENTS and set(received.values()) == {1}
    assert ledger(db, blast.id)["sent"] == RECIPIENTS
