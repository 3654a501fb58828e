"""CMS webhook: Standard Webhooks verification, replay, limits, and the release/blast it drives."""

from __future__ import annotations

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
from service.models import Blast, Release, WebhookDelivery

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
    db.expire_all()
    return tuple(db.scalar(select(func.count()).select_from(model))  # type: ignore[return-value]
                 for model in (Release, Blast, WebhookDelivery))


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

    from service.cms_events import PAYLOAD_SCHEMA

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
