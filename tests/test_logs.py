"""Logs: one line per event, JSON or text, carrying request/blast/delivery ids, never secrets."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
from datetime import UTC, datetime

import pytest
from test_blasts import add_list, add_release

from service import create_app
from service.delivery import blasts
from service.delivery.worker import run_worker
from service.logs import bind, configure_logging, log_context

pytestmark = pytest.mark.sqlite_only  # logging does not depend on the database

log = logging.getLogger("service.test")


@pytest.fixture
def capture(settings):
    """Install our handler writing to a buffer; yields a function returning the JSON lines."""
    buffer = io.StringIO()
    handler = configure_logging(dataclasses.replace(settings, log_format="json", log_level="DEBUG",
                                                    smtp_username="relay-user",
                                                    smtp_password="hunter2-relay-pass"), buffer)

    def lines() -> list[dict]:
        return [json.loads(line) for line in buffer.getvalue().splitlines()]

    yield lines
    logging.getLogger().removeHandler(handler)


def test_each_request_gets_an_id_echoed_in_the_response(client):
    """A response carries X-Request-ID: the caller's when well-formed, a fresh one otherwise."""
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32
    assert client.get("/healthz").headers["X-Request-ID"] != generated
    given = client.get("/healthz", headers={"X-Request-ID": "lb-7f3a.42"})
    assert given.headers["X-Request-ID"] == "lb-7f3a.42"
    hostile = client.get("/healthz", headers={"X-Request-ID": "x\" injected=1 " + "y" * 300})
    assert hostile.headers["X-Request-ID"] not in ("", "x\" injected=1 " + "y" * 300)
    assert len(hostile.headers["X-Request-ID"]) == 32


def test_request_log_line_is_json_with_the_request_id_and_no_query(settings, engine):
    """With JSON logs, the request line names the endpoint and request id, never the URL's token."""
    app = create_app(settings)
    app.config.update(TESTING=True)
    buffer = io.StringIO()  # installed after create_app, which put its own handler on stderr
    handler = configure_logging(dataclasses.replace(settings, log_format="json", log_level="DEBUG"),
                                buffer)
    try:
        app.test_client().get("/healthz?token=s3cr3t-unsubscribe", headers={"X-Request-ID": "req-1"})
    finally:
        logging.getLogger().removeHandler(handler)
        app.extensions["communique"].engine.dispose()
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    [line] = [line for line in lines if line["message"].startswith("request ")]
    assert line["request_id"] == "req-1"
    assert line["logger"] == "service.logs"
    assert line["message"].startswith("request GET ops.healthz 200 ")
    assert "s3cr3t" not in buffer.getvalue()


def test_log_context_and_bind_carry_blast_and_delivery_ids(capture):
    """Records inside log_context and from a bound logger carry blast_id and delivery_id."""
    with log_context(blast_id=7):
        log.info("blast %s: queued %d messages", 7, 3)
        with log_context(delivery_id=41):
            log.info("sent")
        bind(log, delivery_id=42).warning("deferred")
    log.info("outside")
    lines = capture()
    assert [(line.get("blast_id"), line.get("delivery_id"), line["message"]) for line in lines] == [
        (7, None, "blast 7: queued 3 messages"),
        (7, 41, "sent"),
        (7, 42, "deferred"),
        (None, None, "outside"),
    ]
    assert lines[2]["level"] == "warning"
    assert set(lines[0]) == {"at", "level", "logger", "blast_id", "message"}


def test_each_asyncio_task_keeps_its_own_ids(capture):
    """Concurrent sends in one event loop never mix up their delivery ids."""

    async def send(delivery_id: int) -> None:
        with log_context(delivery_id=delivery_id):
            await asyncio.sleep(0.01 * (3 - delivery_id))
            log.info("delivery %s: sent", delivery_id)

    async def blast() -> None:
        with log_context(blast_id=1):
            await asyncio.gather(*(send(i) for i in (1, 2)))

    asyncio.run(blast())
    lines = [line for line in capture() if line["logger"] == log.name]
    assert sorted((line["delivery_id"], line["message"]) for line in lines) == [
        (1, "delivery 1: sent"), (2, "delivery 2: sent")]


def test_known_secrets_are_masked(capture):
    """A secret that slips into a message (here the SMTP password) is written as ***."""
    log.error("login to relay failed for %s with %s", "relay-user", "hunter2-relay-pass")
    [line] = capture()
    assert line["message"] == "login to relay failed for relay-user with ***"


def test_text_format_puts_the_ids_before_the_message(settings):
    """The default text format is one line: time, level, logger, [ids], message."""
    buffer = io.StringIO()
    handler = configure_logging(settings, buffer)
    try:
        with log_context(blast_id=3, request_id="abc"):
            log.info("blast %s: started", 3)
    finally:
        logging.getLogger().removeHandler(handler)
    [line] = buffer.getvalue().splitlines()
    assert line.endswith(" INFO service.test [request_id=abc blast_id=3]: blast 3: started")


def test_the_workers_lines_about_a_blast_carry_its_id(db, smtp_settings, capture) -> None:  # type: ignore[no-untyped-def]
    """A blast whose release cannot be rendered: the worker's lines about it (the release, the
    brake, the pause) carry its blast_id; its lines about itself carry none."""
    settings = dataclasses.replace(smtp_settings, error_window=3, error_pause_threshold=0.5)
    add_list(db, "presse", 5)
    release = add_release(db)
    release.from_email = "josé@example.com"  # slipped past validation: the renderer refuses it
    db.commit()
    blast = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"],
                                now=datetime.now(UTC))
    db.commit()
    run_worker(settings, until_idle=True, include_due=False)
    lines = [line for line in capture() if line["logger"].startswith("service.delivery.")]
    tagged = [line["message"] for line in lines if line.get("blast_id") == blast.id]
    assert all(f"blast {blast.id}" in message for message in tagged), tagged
    assert [any(part in message for message in tagged) for part in (
        f"blast {blast.id}: release {release.id} cannot be prepared",
        f"blast {blast.id}: 3 of the last 3 attempts failed, holding it",
        f"blast {blast.id}: paused, the relay refused 3 of the last 3 attempts")] == [True] * 3
    worker_lines = [line for line in lines if line["message"].startswith("worker ")
                    and "blast" not in line["message"]]
    assert worker_lines and not any("blast_id" in line for line in worker_lines)
