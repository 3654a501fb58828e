"""Outgoing events: signed POSTs to COMMUNIQUE_EVENTS_URL, retried with backoff until accepted."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook

from service.db import session_scope
from service.events import RETRY_BASE_SECONDS, EventType, dispatch_events, record_event
from service.models import OutgoingEvent

SECRET = "whsec_" + "ZXZlbnRzLXNlY3JldC1vZi10aGlydHktdHdvLWJ5dGVzIQ=="


class Receiver:
    """A real HTTP endpoint on 127.0.0.1 that records requests and fails the first `fail` ones."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                failing = receiver.fail > 0
                receiver.fail -= 1
                self.send_response(503 if failing else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/communique"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def test_event_is_delivered_signed_once(session_factory, settings, receiver):
    """A recorded event reaches the endpoint once, with a Standard Webhooks signature that verifies."""
    now = datetime.now(UTC)
    settings = dataclasses.replace(settings, events_url=receiver.url, events_secret=SECRET)
    with session_scope(session_factory) as session:
        record_event(session, EventType.blast_started, {"blast_id": 7, "recipients": 3}, now=now)
    assert dispatch_events(session_factory, settings, now=now) == 1
    assert dispatch_events(session_factory, settings, now=now) == 0, "never sent twice"

    [(headers, body)] = receiver.requests
    event = Webhook(SECRET).verify(body, headers)
    assert event["type"] == "blast.started" and event["data"] == {"blast_id": 7, "recipients": 3}
    assert headers["webhook-id"].startswith("evt_")
    with session_scope(session_factory) as session:
        [row] = session.query(OutgoingEvent).all()
        assert row.delivered_at is not None and row.attempts == 1


def test_failed_delivery_is_retried_with_backoff(session_factory, settings, receiver):
    """A 503 schedules a retry that doubles each time; the event is delivered once it is accepted."""
    now = datetime.now(UTC)
    receiver.fail = 2
    settings = dataclasses.replace(settings, events_url=receiver.url, events_secret=SECRET)
    with session_scope(session_factory) as session:
        record_event(session, EventType.contact_unsubscribed, {"contact_id": 3}, now=now)

    assert dispatch_events(session_factory, settings, now=now) == 0
    first_retry = now + timedelta(seconds=RETRY_BASE_SECONDS)
    assert dispatch_events(session_factory, settings, now=first_retry - timedelta(seconds=1)) == 0
    assert len(receiver.requests) == 1, "not retried before its time"
    assert dispatch_events(session_factory, settings, now=first_retry) == 0
    with session_scope(session_factory) as session:
        [row] = session.query(OutgoingEvent).all()
        assert (row.attempts, row.last_error) == (2, "HTTP 503")
        assert row.next_attempt_at == first_retry + timedelta(seconds=2 * RETRY_BASE_SECONDS)
    assert dispatch_events(session_factory, settings, now=row.next_attempt_at) == 1
    assert len(receiver.requests) == 3
    assert len({h["webhook-id"] for h, _ in receiver.requests}) == 1, "same id on every retry"


def test_unreachable_endpoint_is_recorded_not_raised(session_factory, settings, receiver):
    """A refused connection is an error on the event row, and dispatch goes on."""
    now = datetime.now(UTC)
    url = receiver.url
    receiver.stop()
    settings = dataclasses.replace(settings, events_url=url, events_secret=SECRET)
    with session_scope(session_factory) as session:
        record_event(session, EventType.blast_finished, {"blast_id": 1}, now=now)
    assert dispatch_events(session_factory, settings, now=now) == 0
    with session_scope(session_factory) as session:
        [row] = session.query(OutgoingEvent).all()
        assert row.attempts == 1 and row.delivered_at is None and row.last_error


def test_events_off_without_url(session_factory, settings):
    """With no COMMUNIQUE_EVENTS_URL nothing is sent and events wait in the outbox."""
    now = datetime.now(UTC)
    with session_scope(session_factory) as session:
        record_event(session, EventType.blast_paused, {"blast_id": 1}, now=now)
    assert dispatch_events(session_factory, settings, now=now) == 0
    with session_scope(session_factory) as session:
        assert json.dumps(session.query(OutgoingEvent).one().payload) == '{"blast_id": 1}'
