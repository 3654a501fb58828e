"""Webhook details through the real app: a signed body that is not UTF-8, a chunked body past the
limit, a webhook-id reused with another body, duplicate JSON keys."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import io
import json
import logging
import uuid
from datetime import UTC, datetime

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from test_webhook import client_for, payload, post, signed

from service.config import Settings
from service.models import Release, WebhookDelivery

PROBLEM = "application/problem+json"


def signed_bytes(secret: str, body: bytes) -> dict[str, str]:
    """Standard Webhooks v1 headers for any bytes (the library signs text only)."""
    msg_id = f"msg_{uuid.uuid4().hex}"
    timestamp = str(int(datetime.now(UTC).timestamp()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": msg_id, "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + base64.b64encode(digest).decode(),
            "Content-Type": "application/json"}


def stored(db: Session) -> tuple[int, int]:
    db.expire_all()
    result = (db.scalar(select(func.count()).select_from(Release)) or 0,
              db.scalar(select(func.count()).select_from(WebhookDelivery)) or 0)
    db.commit()
    return result


def test_signed_body_that_is_not_utf8_is_a_400(client: FlaskClient, settings: Settings,
                                               db: Session) -> None:
    """A correctly signed body in Latin-1 is verified, then refused as not UTF-8 (400 naming the
    body), not blamed on the signature (401); a tampered one stays 401."""
    raw = json.dumps(payload(title="Événement"), ensure_ascii=False).encode("latin-1")
    assert b"\xc9v" in raw
    headers = signed_bytes(settings.webhook_secret, raw)
    response = client.post("/webhooks/cms", data=raw, headers=headers)
    assert response.status_code == 400, response.json
    assert response.mimetype == PROBLEM
    assert response.json["errors"][0]["field"] == "body"
    assert "UTF-8" in response.json["errors"][0]["reason"]
    tampered = client.post("/webhooks/cms", data=raw.replace(b"sera", b"SERA"), headers=headers)
    assert tampered.status_code == 401
    assert stored(db) == (0, 0)


def test_chunked_body_over_the_limit_is_413(engine, settings: Settings, db: Session) -> None:  # type: ignore[no-untyped-def]
    """A chunked body (no Content-Length) past COMMUNIQUE_WEBHOOK_MAX_BYTES answers 413, even
    when correctly signed; under the limit the same way of sending is accepted."""
    small = dataclasses.replace(settings, webhook_max_bytes=1024)
    big = json.dumps(payload(body_markdown="x" * 4000)).encode()
    with client_for(small) as small_client:
        headers = {**signed(small.webhook_secret, big), "Transfer-Encoding": "chunked"}
        response = small_client.post("/webhooks/cms", input_stream=io.BytesIO(big), headers=headers,
                                     environ_overrides={"wsgi.input_terminated": True})
        assert response.status_code == 413, response.get_data(as_text=True)[:300]
        assert response.mimetype == PROBLEM
        fits = json.dumps(payload(event_type="release.unpublished")).encode()
        headers = {**signed(small.webhook_secret, fits), "Transfer-Encoding": "chunked"}
        accepted = small_client.post("/webhooks/cms", input_stream=io.BytesIO(fits), headers=headers,
                                     environ_overrides={"wsgi.input_terminated": True})
        assert accepted.status_code == 200, accepted.json
    assert stored(db) == (0, 1)


def test_same_webhook_id_with_another_body_is_409_and_logged(client: FlaskClient, settings: Settings,
                                                             db: Session,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A replay of the same body gets the first answer; the same webhook-id with a different
    (correctly signed) body is refused with 409 and a warning, and changes nothing."""
    first, headers = post(client, settings, payload(event_type="release.unpublished"))
    assert first.status_code == 200
    msg_id = headers["webhook-id"]
    replay, _ = post(client, settings, payload(event_type="release.unpublished"), msg_id=msg_id)
    assert replay.status_code == 200 and replay.headers["Webhook-Replayed"] == "true"
    with caplog.at_level(logging.WARNING, logger="service.webhook"):
        other, _ = post(client, settings, payload(), msg_id=msg_id)
    assert other.status_code == 409, other.json
    assert other.mimetype == PROBLEM
    assert other.json["errors"][0]["field"] == "webhook-id"
    assert any("different body" in r.getMessage() and msg_id in r.getMessage()
               for r in caplog.records)
    assert stored(db) == (0, 1)


def test_duplicate_json_keys_are_refused(client: FlaskClient, settings: Settings, db: Session) -> None:
    """{"type": ..., "type": ...} is refused with 400 instead of "last wins"."""
    event = json.dumps(payload())
    raw = event.replace('"type": "release.published"',
                        '"type": "release.unpublished", "type": "release.published"', 1).encode()
    assert raw.count(b'"type"') == 2
    response, _ = post(client, settings, raw)
    assert response.status_code == 400, response.json
    assert response.mimetype == PROBLEM
    assert "twice" in response.json["errors"][0]["reason"]
    assert stored(db) == (0, 0)
