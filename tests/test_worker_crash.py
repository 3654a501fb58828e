"""Crash safety: a worker killed with SIGKILL mid-blast loses nothing after a restart; SIGTERM drains."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import settings_environ
from sqlalchemy import select
from test_blasts import add_list, add_release, ledger

from service.config import Settings
from service.delivery import blasts
from service.models import Blast, BlastStatus

COMMUNIQUE = str(Path(sys.executable).parent / "communique")
RECIPIENTS = 2000
POOL = 4


def spawn_worker(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_environ(settings), "COMMUNIQUE_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([COMMUNIQUE, "worker", "--no-scheduler", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def start_blast(db, settings: Settings, count: int) -> Blast:  # type: ignore[no-untyped-def]
    add_list(db, "presse", count)
    release = add_release(db)
    blast = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"],
                                now=datetime.now(UTC))
    db.commit()
    return blast


@pytest.mark.sqlite_only
@pytest.mark.slow
def test_sigkill_mid_blast_loses_nothing_and_duplicates_at_most_one_per_connection(
        db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """Kill -9 a worker in the middle of a 2,000-recipient blast, restart it: every recipient gets
    the message, and no more than one per pool connection gets it twice."""
    settings = dataclasses.replace(smtp_settings, smtp_connections=POOL, batch_size=100)
    blast = start_blast(db, settings, RECIPIENTS)
    worker = spawn_worker(settings)
    try:
        wait_for(lambda: len(smtpd.messages) >= 400, 60)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.stderr.close()  # type: ignore[union-attr]
    assert worker.returncode == -signal.SIGKILL
    counts = ledger(db, blast.id)
    assert 0 < counts["sent"] < RECIPIENTS and counts["sending"] > 0  # the kill left claimed rows
    # The restarted worker takes the dead worker's rows back once their lease has run out.
    restarted = spawn_worker(dataclasses.replace(settings, lease_seconds=1), "--until-idle")
    try:
        assert restarted.wait(120) == 0, restarted.stderr.read().decode()  # type: ignore[union-attr]
    finally:
        if restarted.poll() is None:
            restarted.kill()
        restarted.stderr.close()  # type: ignore[union-attr]
    received = smtpd.handler.recipient_counts()
    assert len(received) == RECIPIENTS
    duplicates = sum(received.values()) - RECIPIENTS
    assert duplicates <= POOL
    assert ledger(db, blast.id)["sent"] == RECIPIENTS
    db.expire_all()
    assert db.scalar(select(Blast.status).where(Blast.id == blast.id)) == BlastStatus.finished


@pytest.mark.sqlite_only
@pytest.mark.slow
def test_sigterm_drains_in_flight_sends_and_exits_cleanly(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM stops claiming, records what was in flight, puts the rest back, and exits 0."""
    settings = dataclasses.replace(smtp_settings, smtp_connections=POOL, batch_size=50, send_rate=200)
    blast = start_blast(db, settings, 300)
    worker = spawn_worker(settings)
    try:
        wait_for(lambda: len(smtpd.messages) >= 50, 60)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.stderr.close()  # type: ignore[union-attr]
    counts = ledger(db, blast.id)
    assert counts["sending"] == 0 and counts["sent"] == len(smtpd.messages)
    assert counts["sent"] + counts["queued"] == 300
