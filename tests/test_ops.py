"""Operations endpoints: /healthz, /readyz (database, migrations, relay; cached) and /metrics."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from smtp_server import free_port, start_smtp_server
from sqlalchemy import select

from service import create_app
from service.models import (
    Blast,
    BlastStatus,
    Contact,
    DeliveryLog,
    DeliveryOutcome,
    MessageStatus,
    QueuedMessage,
    Release,
)
from service.ops.health import Readiness, check_relay


def scrape(client, headers=None) -> dict[tuple[str, tuple], float]:
    """GET /metrics and index every sample by (name, sorted labels)."""
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


OPS_TOKEN = "ops-token-0123456789"  # /readyz explains what is down only to its holder
OPS_AUTH = {"Authorization": f"Bearer {OPS_TOKEN}"}


@pytest.fixture
def make_app():
    """create_app(settings) for settings the test chooses; engines disposed at the end."""
    apps = []

    def make(settings):
        app = create_app(settings)
        app.config.update(TESTING=True)
        apps.append(app)
        return app

    yield make
    for app in apps:
        thread = app.extensions["communique_ops"].readiness._refreshing
        if thread is not None:
            thread.join(5)
        app.extensions["communique"].engine.dispose()


def test_healthz_answers_even_when_the_database_is_down(settings, tmp_path, make_app):
    """/healthz says the process is alive without touching the database."""
    broken = dataclasses.replace(settings, database_url=f"sqlite:///{tmp_path}")
    response = make_app(broken).test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_ok_when_database_is_at_head_and_relay_answers(smtp_settings, engine, make_app):
    """/readyz is 200 when the migrated database and the SMTP relay both answer."""
    response = make_app(smtp_settings).test_client().get("/readyz")
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"status": "ok", "checks": ["database", "smtp"]}


@pytest.mark.parametrize("database", ["sqlite-unreadable", "postgresql-closed-port"])
def test_readyz_unready_when_the_database_is_down(smtp_settings, tmp_path, database, make_app):
    """/readyz is 503 naming the database when it cannot be reached, and the relay still up."""
    if database == "sqlite-unreadable":
        url = f"sqlite:///{tmp_path}"  # a directory, not a database file
    else:
        url = f"postgresql://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"
    down = dataclasses.replace(smtp_settings, database_url=url, metrics_token=OPS_TOKEN)
    started = time.monotonic()
    response = make_app(down).test_client().get("/readyz", headers=OPS_AUTH)
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert list(body["down"]) == ["database"]
    assert body["down"]["database"].startswith("unreachable")


def test_readyz_unready_when_migrations_have_not_run(smtp_settings, tmp_path, make_app):
    """/readyz is 503 when the database answers but its schema is not at the newest migration."""
    fresh = dataclasses.replace(smtp_settings, database_url=f"sqlite:///{tmp_path / 'new.db'}",
                                metrics_token=OPS_TOKEN)
    response = make_app(fresh).test_client().get("/readyz", headers=OPS_AUTH)
    assert response.status_code == 503
    assert "communique init" in response.get_json()["down"]["database"]


def test_readyz_unready_when_the_relay_is_down(settings, engine, make_app):
    """/readyz is 503 naming smtp when nothing listens on the relay port."""
    closed = dataclasses.replace(settings, smtp_host="127.0.0.1", smtp_port=free_port())
    response = make_app(closed).test_client().get("/readyz")
    assert response.status_code == 503
    assert list(response.get_json()["down"]) == ["smtp"]


def test_readiness_serves_the_cached_result_and_refreshes_in_the_background(settings):
    """A stale result is answered at once while a background check notices the relay went away."""
    server = start_smtp_server()
    relay = dataclasses.replace(settings, smtp_host=server.host, smtp_port=server.port)
    readiness = Readiness({"smtp": lambda: check_relay(relay)}, ttl_seconds=0.1)
    try:
        assert readiness.current() == {"smtp": None}
    finally:
        server.stop()
    time.sleep(0.2)
    started = time.monotonic()
    assert readiness.current() == {"smtp": None}  # stale but instant
    assert time.monotonic() - started < 0.05
    thread = readiness.refresh_in_background()
    thread.join(5)
    assert readiness.current()["smtp"].startswith("unreachable")


def _ledger(db, now):
    """Two blasts with known outcomes, written straight into the ledger tables."""
    release = Release(slug="r", title="Communiqué", body="Bonjour")
    contacts = [Contact(email=f"j{i}@example.org", email_key=f"j{i}@example.org") for i in range(7)]
    db.add_all([release, *contacts])
    db.flush()
    first = Blast(release_id=release.id, status=BlastStatus.running)
    second = Blast(release_id=release.id, status=BlastStatus.finished)
    db.add_all([first, second])
    db.flush()
    plan = [  # blast, status, smtp codes of its attempts, duration of each attempt
        (first, MessageStatus.sent, [250], 0.004),
        (first, MessageStatus.sent, [421, 250], 0.2),
        (first, MessageStatus.deferred, [450], 0.03),
        (first, MessageStatus.failed, [550], 0.02),
        (first, MessageStatus.queued, [], None),
        (second, MessageStatus.sent, [250], 3.0),
        (second, MessageStatus.bounced, [None], 12.0),
    ]
    outcome_of = {250: DeliveryOutcome.sent, 421: DeliveryOutcome.deferred,
                  450: DeliveryOutcome.deferred, 550: DeliveryOutcome.failed,
                  None: DeliveryOutcome.deferred}
    # The queued row is due 10 minutes ago; the deferred one retries in 5 minutes (not due yet).
    due_at = {MessageStatus.queued: now - timedelta(minutes=10),
              MessageStatus.deferred: now + timedelta(minutes=5)}
    for contact, (blast, status, codes, duration) in zip(contacts, plan, strict=True):
        row = QueuedMessage(blast_id=blast.id, contact_id=contact.id, email=contact.email,
                            status=status, message_id=f"<{contact.id}@example.org>",
                            next_attempt_at=due_at.get(status),
                            created_at=now - timedelta(minutes=20))
        db.add(row)
        db.flush()
        for attempt, code in enumerate(codes, 1):
            db.add(DeliveryLog(queued_message_id=row.id, blast_id=blast.id, attempt=attempt,
                               outcome=outcome_of[code], smtp_code=code, duration_seconds=duration))
    db.commit()
    return first, second


def test_metrics_report_the_ledger(app, client, db):
    """/metrics counts messages by blast and status, queue depth, due age, codes and latencies."""
    now = datetime.now(UTC)
    first, second = _ledger(db, now)
    samples = scrape(client)
    by_blast = "communique_blast_messages"
    assert samples[(by_blast, (("blast_id", str(first.id)), ("status", "sent")))] == 2
    assert samples[(by_blast, (("blast_id", str(first.id)), ("status", "deferred")))] == 1
    assert samples[(by_blast, (("blast_id", str(first.id)), ("status", "failed")))] == 1
    assert samples[(by_blast, (("blast_id", str(second.id)), ("status", "sent")))] == 1
    assert samples[(by_blast, (("blast_id", str(second.id)), ("status", "bounced")))] == 1
    assert samples[("communique_queue_depth", (("status", "queued"),))] == 1
    assert samples[("communique_queue_depth", (("status", "sending"),))] == 0
    assert samples[("communique_queue_depth", (("status", "sent"),))] == 3
    assert 590 <= samples[("communique_oldest_due_message_age_seconds", ())] < 700
    codes = {labels[0][1]: value for (name, labels), value in samples.items()
             if name == "communique_smtp_replies_total"}
    assert codes == {"250": 3, "421": 1, "450": 1, "550": 1, "none": 1}
    assert samples[("communique_delivery_attempts_total", (("outcome", "sent"),))] == 3
    assert samples[("communique_delivery_attempts_total", (("outcome", "deferred"),))] == 3
    histogram = "communique_send_duration_seconds"
    assert samples[(histogram + "_bucket", (("le", "0.005"),))] == 1
    assert samples[(histogram + "_bucket", (("le", "0.05"),))] == 3
    assert samples[(histogram + "_bucket", (("le", "0.25"),))] == 5
    assert samples[(histogram + "_bucket", (("le", "5.0"),))] == 6
    assert samples[(histogram + "_bucket", (("le", "+Inf"),))] == 7
    assert samples[(histogram + "_count", ())] == 7
    assert samples[(histogram + "_sum", ())] == pytest.approx(0.004 + 0.4 + 0.03 + 0.02 + 3 + 12)


def test_metrics_on_an_empty_ledger(client):
    """/metrics answers on an empty database with zero depth and no due age."""
    samples = scrape(client)
    assert samples[("communique_queue_depth", (("status", "queued"),))] == 0
    assert samples[("communique_oldest_due_message_age_seconds", ())] == 0
    assert samples[("communique_send_duration_seconds_count", ())] == 0


def test_metrics_require_the_bearer_token_when_one_is_set(settings, engine, make_app):
    """With COMMUNIQUE_METRICS_TOKEN set, /metrics is 401 without it or with a wrong one."""
    client = make_app(dataclasses.replace(settings, metrics_token="s3cret-token")).test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    samples = scrape(client, {"Authorization": "Bearer s3cret-token"})
    assert ("communique_queue_depth", (("status", "queued"),)) in samples


def test_webhook_requests_are_counted_by_outcome(app, client):
    """count_webhook(outcome) shows up in /metrics as communique_webhook_requests_total."""
    from service.ops.health import count_webhook

    with app.test_request_context("/webhooks/cms"):
        count_webhook("accepted")
        count_webhook("accepted")
        count_webhook("rejected")
    samples = scrape(client)
    assert samples[("communique_webhook_requests_total", (("outcome", "accepted"),))] == 2
    assert samples[("communique_webhook_requests_total", (("outcome", "rejected"),))] == 1


def test_metrics_after_a_real_blast_to_a_real_smtp_server(app, client, db, session_factory,
                                                          smtp_settings, smtpd):
    """After a worker sends a blast (one 450 then accepted, one 550), /metrics counts what happened."""
    from service.delivery.blasts import create_blast
    from service.delivery.worker import run_worker
    from service.models import ContactList

    now = datetime.now(UTC)
    addresses = [f"journaliste{i}@redaction.example" for i in range(5)]
    contacts = [Contact(email=address, email_key=address, first_name="Hélène", language="fr")
                for address in addresses]
    db.add_all([ContactList(name="presse", contacts=contacts),
                Release(slug="r", title="Communiqué", body="Bonjour", status="ready")])
    db.commit()
    release_id = db.scalar(select(Release.id))
    smtpd.handler.fail("journaliste1@redaction.example", 450, "4.2.1 try again later", times=1)
    smtpd.handler.fail("journaliste2@redaction.example", 550, "5.7.1 refused by policy")
    blast = create_blast(db, smtp_settings, release_id=release_id, list_names=["presse"], now=now)
    db.commit()
    run_worker(smtp_settings, until_idle=True, session_factory=session_factory)

    samples = scrape(client)
    assert sorted(smtpd.handler.recipient_counts().values()) == [1, 1, 1, 1]
    by_blast = "communique_blast_messages"
    assert samples[(by_blast, (("blast_id", str(blast.id)), ("status", "sent")))] == 4
    assert samples[(by_blast, (("blast_id", str(blast.id)), ("status", "failed")))] == 1
    assert samples[("communique_queue_depth", (("status", "queued"),))] == 0
    assert samples[("communique_oldest_due_message_age_seconds", ())] == 0
    codes = {labels[0][1]: value for (name, labels), value in samples.items()
             if name == "communique_smtp_replies_total"}
    assert codes == {"250": 4, "450": 1, "550": 1}
    assert samples[("communique_send_duration_seconds_count", ())] == 6
    assert samples[("communique_send_duration_seconds_sum", ())] > 0
