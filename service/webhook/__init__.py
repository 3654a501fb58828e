"""Blueprint "webhook": `POST /webhooks/cms`, signed CMS events (Standard Webhooks) -> events.py.
Checks run cheapest first and nothing is stored until an event is verified and valid: size (413,
chunked bodies too), signature and timestamp (401), replay (the first answer again; the same id
with another body: 409), content type (415), strict JSON (UTF-8, bounded depth, no duplicate
keys) and schema (400 naming the field)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, Response, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from werkzeug.exceptions import RequestEntityTooLarge

from service.config import Settings
from service.db import utcnow
from service.errors import WebhookRejected
from service.http.context import current_settings, db_session
from service.http.inputs import parse_json
from service.http.problems import answer_errors_as_problems, problem
from service.models import WebhookDelivery
from service.ops.health import count_webhook
from service.webhook.events import apply_cms_event, validate_payload

log = logging.getLogger(__name__)

bp = Blueprint("webhook", __name__)
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.after_request
def _count(response: Response) -> Response:
    """Webhook requests by outcome, for /metrics."""
    if response.headers.get("Webhook-Replayed"):
        outcome = "replayed"
    elif response.status_code == 200:
        outcome = "accepted"
    elif response.status_code == 401:
        outcome = "unauthorized"
    else:
        outcome = "rejected"
    count_webhook(outcome)
    return response


answer_errors_as_problems(bp)


@bp.post("/webhooks/cms")
def receive_cms_event() -> Response:
    settings = current_settings()
    if not settings.webhook_secret:
        return problem(404, "the CMS webhook is off (COMMUNIQUE_WEBHOOK_SECRET is not set)")
    now = utcnow()
    body = _read_body(settings.webhook_max_bytes)  # 413 past the limit, before anything is parsed
    webhook_id = verify_signature(settings, body, request.headers, now=now)
    digest = hashlib.sha256(body).hexdigest()
    session = db_session()
    first = _stored_answer(webhook_id, digest)
    if first is not None:
        log.info("webhook %s: replay, returning the first answer", webhook_id)
        return first
    if request.mimetype != "application/json":
        raise WebhookRejected("the body must be application/json", status=415)
    payload = validate_payload(parse_json(body))
    answer = apply_cms_event(session, settings, payload, now=now)
    session.add(WebhookDelivery(webhook_id=webhook_id, event_type=payload["type"],
                                status_code=200, response=answer, body_sha256=digest,
                                received_at=now))
    try:
        session.commit()
    except IntegrityError:
        # The same delivery raced us (a CMS retry while we were working): theirs won, ours is void.
        session.rollback()
        first = _stored_answer(webhook_id, digest)
        if first is None:
            raise
        return first
    log.info("webhook %s: %s -> %s", webhook_id, payload["type"], answer["action"])
    return _json(answer, 200)


def verify_signature(settings: Settings, body: bytes, headers: Any, *, now: datetime) -> str:
    """Check the Standard Webhooks headers; returns the webhook-id or raises a 401 rejection.
    The library compares signatures in constant time; the timestamp window is checked here too so
    it follows COMMUNIQUE_WEBHOOK_TOLERANCE_SECONDS (the library caps it at 5 minutes anyway)."""
    values = {name: headers.get(name, "") for name in HEADERS}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise WebhookRejected(f"missing header {missing[0]}", status=401, field=missing[0])
    try:
        sent_at = float(values["webhook-timestamp"])
    except ValueError:
        raise WebhookRejected("is not a Unix timestamp", status=401,
                              field="webhook-timestamp") from None
    if abs(now.timestamp() - sent_at) > settings.webhook_tolerance_seconds:
        raise WebhookRejected("is outside the accepted window", status=401,
                              field="webhook-timestamp")
    if len(values["webhook-id"]) > 200:
        raise WebhookRejected("is too long", status=401, field="webhook-id")
    try:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            # Signed bytes that are not text: verified here so the answer can say what is wrong
            # with the body (400 once parsed) rather than blame the signature.
            if not _signed_bytes(settings.webhook_secret, body, values):
                raise WebhookVerificationError("no matching signature") from None
        else:
            Webhook(settings.webhook_secret).verify(text, values, json_parse=False)
    except (WebhookVerificationError, ValueError, binascii.Error) as exc:
        log.warning("webhook %s: signature refused", values["webhook-id"][:64])
        raise WebhookRejected("no valid signature", status=401,
                              field="webhook-signature") from exc
    return values["webhook-id"]


def _signed_bytes(secret: str, body: bytes, values: dict[str, str]) -> bool:
    """The Standard Webhooks v1 signature (HMAC-SHA256 of `id.timestamp.body`) over raw bytes,
    for a body the library cannot take (it decodes bodies as UTF-8 first)."""
    key = base64.b64decode(secret.removeprefix("whsec_") + "==")
    timestamp = str(math.floor(float(values["webhook-timestamp"])))
    expected = hmac.new(key, f"{values['webhook-id']}.{timestamp}.".encode() + body,
                        hashlib.sha256).digest()
    for item in values["webhook-signature"].split(" "):
        version, _, signature = item.partition(",")
        if version == "v1" and hmac.compare_digest(expected, base64.b64decode(signature)):
            return True
    return False


def _read_body(limit: int) -> bytes:
    """The body, at most `limit` bytes: a declared Content-Length past it or a chunked body that
    runs past it is refused with 413 (Werkzeug only checks the declared length)."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise RequestEntityTooLarge()
    return body


def _stored_answer(webhook_id: str, digest: str) -> Response | None:
    delivery = db_session().scalar(
        select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id))
    if delivery is None:
        return None
    if delivery.body_sha256 is not None and delivery.body_sha256 != digest:
        log.warning("webhook %s: id reused with a different body, refused", webhook_id[:64])
        raise WebhookRejected("was already used for a different body; a new event needs a new "
                              "webhook-id", status=409, field="webhook-id")
    response = _json(delivery.response, delivery.status_code)
    response.headers["Webhook-Replayed"] = "true"
    return response


def _json(data: Any, status: int) -> Response:
    return Response(json.dumps(data, ensure_ascii=False), status=status, mimetype="application/json")
