"""CMS webhook: Standard Webhooks verification, replay, limits, and the release/blast it drives."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook

from service import create_app
from service.cli import main
from service.config import Settings
from service.contacts import store as contacts
from service.delivery.worker import run_worker
from service.models import (
    Blast,
    BlastStatus,
    MessageStatus,
    QueuedMessage,
    Release,
    WebhookDelivery,
)

OTHER_SECRET = "whsec_" + "b3RoZXItc2VjcmV0LW9mLXRoaXJ0eS10d28tYnl0ZXMh"


def signed(secret: str, body: bytes, *, msg_id: str | None = None,
           at: datetime | None = None) -> dict[str, str]:
    """The headers a CMS sends with `body`."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, at, body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signature, "Content-Type": "application/json"}


def payload(event_type: str = "release.published", **data: Any) -> dict[str, Any]:
    body = {"external_id": "wp-1842", "title": "Le Maroc au salon ITB Berlin",
            "language": "fr", "body_markdown": "**Rabat, 2 juin.** Le Maroc sera présent.",
            "embargo_until": None, "lists": ["presse-nationale"], "send_at": None}
    body.update(data)
    if event_type != "release.published":
        body = {k: v for k, v in body.items() if k in data or k == "external_id"}
    return {"type": event_type, "timestamp": "2025-06-02T09:00:00Z", "data": body}


def post(client, settings, body: Any, **kwargs: Any):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = signed(settings.webhook_secret, raw, **kwargs)
    return client.post("/webhooks/cms", data=raw, headers=headers), headers


@contextmanager
def client_for(settings: Settings) -> Iterator[FlaskClient]:
    """A client of an app built with other settings (same database)."""
    app = create_app(settings)
    app.config.update(TESTING=True)
    try:
        yield app.test_client()
    finally:
        app.extensions["communique"].engine.dispose()


def counts(db) -> tuple[int, int, int]:
    """Rows of releases, blasts and webhook deliveries (the read ends its transaction: SQLite
    takes the write lock at BEGIN, and the app under test needs it)."""
    db.expire_all()
    result = tuple(db.scalar(select(func.count()).select_from(model))
                   for model in (Release, Blast, WebhookDelivery))
    db.commit()
    return result  # type: ignore[return-value]


def test_bad_or_missing_signature_is_refused_and_nothing_stored(client, settings, db):
    """A tampered body, a wrong secret or no signature at all get 401 and leave no row."""
    raw = json.dumps(payload()).encode()
    headers = signed(settings.webhook_secret, raw)
    tampered = client.post("/webhooks/cms", data=raw.replace(b"ITB", b"XXX"), headers=headers)
    assert tampered.status_code == 401
    assert tampered.mimetype == "application/problem+json"
    assert tampered.json["errors"][0]["field"] == "webhook-signature"

    wrong = client.post("/webhooks/cms", data=raw, headers=signed(OTHER_SECRET, raw))
    assert wrong.status_code == 401

    unsigned = {k: v for k, v in headers.items() if k != "webhook-signature"}
    missing = client.post("/webhooks/cms", data=raw, headers=unsigned)
    assert missing.status_code == 401
    assert missing.json["errors"][0]["field"] == "webhook-signature"

    garbage = dict(headers, **{"webhook-signature": "v1,%%%notbase64 v1"})
    assert client.post("/webhooks/cms", data=raw, headers=garbage).status_code == 401
    assert counts(db) == (0, 0, 0)


@pytest.mark.parametrize("skew", [timedelta(minutes=-6), timedelta(minutes=6)])
def test_timestamp_outside_five_minutes_is_refused(client, settings, db, skew):
    """A stale timestamp, or one too far in the future, gets 401 even with a valid signature."""
    response, _ = post(client, settings, payload(), at=datetime.now(UTC) + skew)
    assert response.status_code == 401
    assert response.json["errors"][0]["field"] == "webhook-timestamp"
    assert counts(db) == (0, 0, 0)


def test_oversized_body_is_refused(engine, settings, db):
    """A body past COMMUNIQUE_WEBHOOK_MAX_BYTES gets 413 before it is read or verified."""
    small = dataclasses.replace(settings, webhook_max_bytes=1024)
    with client_for(small) as small_client:
        response, _ = post(small_client, small, payload(body_markdown="x" * 2000))
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"
    assert counts(db) == (0, 0, 0)


def test_wrong_content_type_is_refused(client, settings, db):
    """A signed body that is not application/json gets 415."""
    raw = json.dumps(payload()).encode()
    headers = dict(signed(settings.webhook_secret, raw), **{"Content-Type": "text/plain"})
    response = client.post("/webhooks/cms", data=raw, headers=headers)
    assert response.status_code == 415
    assert counts(db) == (0, 0, 0)


def test_malformed_json_and_missing_field_name_the_problem(client, settings, db):
    """Malformed JSON names `body`; a missing field is named by its path; both are 400."""
    broken, _ = post(client, settings, b'{"type": "release.published", "data": {')
    assert broken.status_code == 400
    assert broken.json["errors"][0]["field"] == "body"

    body = payload()
    del body["data"]["lists"]
    missing, _ = post(client, settings, body)
    assert missing.status_code == 400
    assert missing.mimetype == "application/problem+json"
    assert [e["field"] for e in missing.json["errors"]] == ["data.lists"]

    no_body = payload()
    del no_body["data"]["body_markdown"]
    response, _ = post(client, settings, no_body)
    assert [e["field"] for e in response.json["errors"]] == ["data.body_markdown"]

    unknown, _ = post(client, settings, {**payload(), "type": "release.deleted"})
    assert unknown.status_code == 400
    assert unknown.json["errors"][0]["field"] == "type"
    assert counts(db) == (0, 0, 0)


def test_webhook_off_without_a_secret(engine, settings):
    """With no COMMUNIQUE_WEBHOOK_SECRET the endpoint does not exist for the outside world."""
    with client_for(dataclasses.replace(settings, webhook_secret="")) as off_client:
        response, _ = post(off_client, settings, payload())
    assert response.status_code == 404


def test_payload_schema_is_published_in_docs():
    """docs/webhook-payload.schema.json is exactly the schema the service validates with."""
    from conftest import ROOT

    from service.webhook.events import PAYLOAD_SCHEMA

    published = json.loads((ROOT / "docs" / "webhook-payload.schema.json").read_text())
    assert published == PAYLOAD_SCHEMA


def test_cli_sign_prints_headers_the_endpoint_accepts(runner, client, settings, db, tmp_path):
    """`communique webhook sign FILE` gives headers that pass verification, and a curl command."""
    body = payload()
    del body["data"]["lists"]
    path = tmp_path / "event.json"
    path.write_text(json.dumps(body, ensure_ascii=False))
    result = runner.invoke(main, ["webhook", "sign", str(path), "--json"])
    assert result.exit_code == 0, result.output
    signed_out = json.loads(result.output)
    assert f"--data-binary @{path}" in signed_out["curl"]
    assert "webhook-signature: v1," in signed_out["curl"]
    response = client.post("/webhooks/cms", data=path.read_bytes(),
                           headers={**signed_out["headers"], "Content-Type": "application/json"})
    assert response.status_code == 400, "signature accepted, then the missing field is named"
    assert response.json["errors"][0]["field"] == "data.lists"
    human = runner.invoke(main, ["webhook", "sign", str(path)])
    assert human.output.startswith("webhook-id: msg_")


# ---- events applied ---------------------------------------------------------------------------

LATER = "2030-01-15T09:00:00+01:00"


@pytest.fixture
def journalists(db) -> list[int]:
    """Two contacts on the list the CMS names."""
    now = datetime.now(UTC)
    ids = [contacts.create_contact(db, {"email": email, "first_name": name}, now=now,
                                   list_names=["presse-nationale"]).id
           for email, name in (("amina@lematin.example.ma", "Amina"),
                               ("karim@medias24.example.ma", "Karim"))]
    db.commit()
    return ids


def blasts_of(db, external_id: str = "wp-1842") -> list[Blast]:
    db.expire_all()
    result = list(db.scalars(select(Blast).join(Release).where(Release.external_id == external_id)))
    for blast in result:
        _ = blast.lists
    db.commit()
    return result


def release_of(db, release_id: int) -> Release:
    db.expire_all()
    release = db.get(Release, release_id)
    _ = release.attachments
    db.commit()
    return release


def queued_count(db) -> int:
    count = db.scalar(select(func.count()).select_from(QueuedMessage))
    db.commit()
    return int(count)


def test_publication_schedules_exactly_one_blast_and_replay_creates_nothing(
        client, settings, db, journalists):
    """A valid release.published creates the release and one blast; the same delivery replayed
    returns the first answer and creates nothing."""
    response, headers = post(client, settings, payload(send_at=LATER))
    assert response.status_code == 200, response.json
    answer = response.json
    assert (answer["action"], answer["blast_status"]) == ("created", "scheduled")
    [blast] = blasts_of(db)
    assert blast.id == answer["blast_id"] and blast.send_at == datetime.fromisoformat(LATER)
    assert [c.name for c in blast.lists] == ["presse-nationale"]
    release = release_of(db, answer["release_id"])
    assert release.title == "Le Maroc au salon ITB Berlin" and release.body_format == "markdown"

    raw = json.dumps(payload(send_at=LATER)).encode()
    replay = client.post("/webhooks/cms", data=raw, headers=headers)
    assert replay.status_code == 200 and replay.json == answer
    assert replay.headers["Webhook-Replayed"] == "true"
    assert counts(db) == (1, 1, 1)


def test_publication_without_send_at_starts_now(client, settings, db, journalists):
    """`send_at: null` means now: the blast is running with one ledger row per contact."""
    response, _ = post(client, settings, payload())
    assert response.json["blast_status"] == "running"
    db.expire_all()
    rows = db.scalars(select(QueuedMessage).where(
        QueuedMessage.blast_id == response.json["blast_id"])).all()
    assert sorted(r.contact_id for r in rows) == sorted(journalists)


def test_cms_html_is_sanitized(client, settings, db, journalists):
    """An HTML body with <script>, onerror= and javascript: links is stored sanitized."""
    html = ('<p>Rabat, le 2 juin.</p><script>alert(1)</script>'
            '<img src="https://cms.example.org/a.jpg" onerror="alert(2)">'
            '<a href="javascript:alert(3)">clic</a><a href="https://visitmorocco.example">site</a>')
    body = payload(send_at=LATER)
    del body["data"]["body_markdown"]
    body["data"]["body_html"] = html
    response, _ = post(client, settings, body)
    assert response.status_code == 200, response.json
    stored = release_of(db, response.json["release_id"])
    assert stored.body_format == "html"
    lowered = stored.body.lower()
    assert "<script" not in lowered and "alert(1)" not in lowered
    assert "onerror" not in lowered and "javascript:" not in lowered
    assert "https://visitmorocco.example" in stored.body and "Rabat, le 2 juin." in stored.body


def test_second_publication_updates_but_never_sends_twice(client, settings, db, journalists):
    """A second release.published for the same external_id updates the release, no new blast."""
    first, _ = post(client, settings, payload(send_at=LATER))
    again, _ = post(client, settings, payload(send_at=LATER, title="Le Maroc à l'ITB Berlin 2030"))
    assert again.status_code == 200
    assert (again.json["action"], again.json["blast_id"]) == ("updated", first.json["blast_id"])
    assert len(blasts_of(db)) == 1
    assert release_of(db, first.json["release_id"]).title == "Le Maroc à l'ITB Berlin 2030"
    assert counts(db) == (1, 1, 2)


def test_update_after_start_changes_nothing_and_sends_nothing(client, settings, db, journalists):
    """release.updated (or a second publication) after the blast started changes nothing sent."""
    first, _ = post(client, settings, payload())
    assert first.json["blast_status"] == "running"
    queued = queued_count(db)
    for event in (payload("release.updated", title="Titre corrigé", body_markdown="Nouveau"),
                  payload(title="Titre corrigé")):
        response, _ = post(client, settings, event)
        assert response.status_code == 200
        assert response.json["action"] == "ignored" and "started" in response.json["reason"]
    release = release_of(db, first.json["release_id"])
    assert release.title == "Le Maroc au salon ITB Berlin"
    assert len(blasts_of(db)) == 1
    assert queued_count(db) == queued


def test_update_before_start_edits_the_release(client, settings, db, journalists):
    """release.updated before the send time edits the release; the blast stays as scheduled."""
    first, _ = post(client, settings, payload(send_at=LATER))
    response, _ = post(client, settings, payload("release.updated", title="Nouveau titre"))
    assert response.json["action"] == "updated"
    assert release_of(db, first.json["release_id"]).title == "Nouveau titre"
    [blast] = blasts_of(db)
    assert blast.status == BlastStatus.scheduled


def test_unpublish_cancels_a_scheduled_blast(client, settings, db, journalists):
    """release.unpublished cancels a blast that has not started."""
    first, _ = post(client, settings, payload(send_at=LATER))
    response, _ = post(client, settings, payload("release.unpublished"))
    assert response.status_code == 200
    assert response.json["cancelled_blast_ids"] == [first.json["blast_id"]]
    [blast] = blasts_of(db)
    assert blast.status == BlastStatus.cancelled
    unknown, _ = post(client, settings, payload("release.unpublished", external_id="wp-0"))
    assert unknown.json["action"] == "ignored"


def test_unknown_list_is_refused_and_nothing_stored(client, settings, db, journalists):
    """A publication naming a list that does not exist gets a 400 and leaves no release behind."""
    response, _ = post(client, settings, payload(lists=["nope"]))
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert counts(db) == (0, 0, 0)


def test_with_approval_required_the_blast_waits(engine, settings, db, journalists):
    """With COMMUNIQUE_REQUIRE_APPROVAL the webhook's blast is a draft waiting for a sender."""
    with client_for(dataclasses.replace(settings, require_approval=True)) as approval_client:
        response, _ = post(approval_client, settings, payload())
    assert response.status_code == 200
    [blast] = blasts_of(db)
    assert (blast.status, blast.needs_approval) == (BlastStatus.draft, True)
    assert queued_count(db) == 0


def test_inline_attachment_is_stored_and_urls_are_not_fetched(client, settings, db, journalists):
    """An attachment comes inline as base64; a bad one names its field."""
    pdf = b"%PDF-1.4 dossier de presse"
    body = payload(send_at=LATER, attachments=[{
        "filename": "dossier.pdf", "content_type": "application/pdf",
        "content_base64": base64.b64encode(pdf).decode()}])
    response, _ = post(client, settings, body)
    assert response.status_code == 200, response.json
    release = release_of(db, response.json["release_id"])
    assert [(a.filename, a.size_bytes) for a in release.attachments] == [("dossier.pdf", len(pdf))]

    bad = payload(external_id="wp-2", send_at=LATER, attachments=[{
        "filename": "x.pdf", "content_type": "application/pdf", "content_base64": "@@@"}])
    refused, _ = post(client, settings, bad)
    assert refused.status_code == 400
    assert refused.json["errors"][0]["field"] == "data.attachments.0.content_base64"
    url = payload(external_id="wp-3", attachments=[{"url": "http://169.254.169.254/"}])
    assert post(client, settings, url)[0].status_code == 400


def test_end_to_end_webhook_to_inbox(smtp_settings, smtpd, engine, db, journalists):
    """A release published by the CMS reaches the real SMTP server once per journalist."""
    with client_for(smtp_settings) as smtp_client:
        response, _ = post(smtp_client, smtp_settings, payload())
    assert response.status_code == 200, response.json
    run_worker(smtp_settings, until_idle=True)
    assert sorted(r for m in smtpd.messages for r in m.rcpt_tos) == [
        "amina@lematin.example.ma", "karim@medias24.example.ma"]
    message = smtpd.messages[0].message()
    assert message["Subject"] == "Le Maroc au salon ITB Berlin"
    db.expire_all()
    statuses = db.scalars(select(QueuedMessage.status)).all()
    assert statuses == [MessageStatus.sent, MessageStatus.sent]


def test_webhook_requests_show_in_metrics_by_outcome(client, settings, db):
    """Accepted, replayed and refused webhook requests are counted in /metrics by outcome."""
    contacts.get_or_create_list(db, "presse-nationale")
    db.commit()
    body = json.dumps(payload()).encode()
    headers = signed(settings.webhook_secret, body)
    assert client.post("/webhooks/cms", data=body, headers=headers).status_code == 200
    assert client.post("/webhooks/cms", data=body, headers=headers).status_code == 200
    tampered = body.replace(b"ITB", b"XYZ")
    assert client.post("/webhooks/cms", data=tampered, headers=headers).status_code == 401
    metrics = client.get("/metrics").get_data(as_text=True)
    for outcome in ("accepted", "replayed", "unauthorized"):
        assert f'communique_webhook_requests_total{{outcome="{outcome}"}} 1.0' in metrics, outcome
