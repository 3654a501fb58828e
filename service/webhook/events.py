"""Verified CMS events -> releases and blasts. `release.published` creates (or updates) the release
with that `external_id` and schedules its blast, only on the first publication; `release.updated`
edits a release whose blast has not started; `release.unpublished` cancels a blast not started.
The envelope is described by PAYLOAD_SCHEMA (published as docs/webhook-payload.schema.json)."""

from __future__ import annotations

import base64
import binascii
import logging
from datetime import datetime
from typing import Any

from jsonschema import Draft202012Validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.config import Settings
from service.delivery import blasts
from service.errors import FieldError, ValidationError
from service.http.schemas import validation_errors
from service.models import Blast, BlastStatus, Release, Role
from service.releases import store as releases

log = logging.getLogger(__name__)

ACTOR = "cms"
PUBLISHED, UPDATED, UNPUBLISHED = "release.published", "release.updated", "release.unpublished"
NOT_STARTED = (BlastStatus.draft, BlastStatus.scheduled)

_DATE_TIME = {"type": ["string", "null"], "format": "date-time"}
_TEXT = {"type": ["string", "null"], "maxLength": 5000}
_RELEASE_FIELDS: dict[str, Any] = {
    "external_id": {"type": "string", "minLength": 1, "maxLength": 200},
    "title": {"type": "string", "minLength": 1, "maxLength": 500},
    "language": {"type": "string", "pattern": "^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$"},
    "kicker": {"type": ["string", "null"], "maxLength": 200},
    "highlights": {"type": "array", "items": {"type": "string", "maxLength": 1000}, "maxItems": 20},
    "dateline": {"type": ["string", "null"], "maxLength": 300},
    "about": _TEXT,
    "body_markdown": {"type": "string", "minLength": 1},
    "body_html": {"type": "string", "minLength": 1},
    "embargo_until": _DATE_TIME,
    "send_at": _DATE_TIME,
    "lists": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
    "from_name": {"type": ["string", "null"], "maxLength": 200},
    "from_email": {"type": ["string", "null"], "maxLength": 320},
    "reply_to": {"type": ["string", "null"], "maxLength": 320},
    "press_contacts": {"type": "array", "items": {"type": "object"}, "maxItems": 20},
    "attachments": {"type": "array", "maxItems": 20, "items": {
        "type": "object", "required": ["filename", "content_type", "content_base64"],
        "additionalProperties": False,
        "properties": {"filename": {"type": "string", "minLength": 1, "maxLength": 255},
                       "content_type": {"type": "string", "minLength": 3, "maxLength": 100},
                       "content_base64": {"type": "string"}}}},
}

PAYLOAD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://communique.example.org/schemas/webhook-payload.schema.json",
    "title": "Communiqué CMS webhook payload (Standard Webhooks envelope)",
    "description": "POST /webhooks/cms body. Signed with the webhook-id, webhook-timestamp and "
                   "webhook-signature headers. Image and attachment URLs are never fetched; "
                   "attachments come inline as base64.",
    "type": "object",
    "required": ["type", "timestamp", "data"],
    "properties": {
        "type": {"enum": [PUBLISHED, UPDATED, UNPUBLISHED]},
        "timestamp": {"type": "string", "format": "date-time"},
        "data": {"type": "object", "required": ["external_id"], "properties": _RELEASE_FIELDS,
                 "additionalProperties": False,
                 "not": {"required": ["body_markdown", "body_html"]}},
    },
    "allOf": [{
        "if": {"properties": {"type": {"const": PUBLISHED}}},
        "then": {"properties": {"data": {
            "required": ["title", "lists"],
            "anyOf": [{"required": ["body_markdown"]}, {"required": ["body_html"]}]}}},
    }],
}
_VALIDATOR = Draft202012Validator(PAYLOAD_SCHEMA)


def validate_payload(payload: Any) -> dict[str, Any]:
    """Check the envelope against PAYLOAD_SCHEMA; a violation names the field (`data.lists`)."""
    errors = validation_errors(_VALIDATOR, payload)
    if isinstance(payload, dict) and isinstance(payload.get("data"), dict):
        data = payload["data"]
        if "body_markdown" in data and "body_html" in data:
            errors = [FieldError("data.body_html", "give body_markdown or body_html, not both")]
        elif payload.get("type") == PUBLISHED and not ({"body_markdown", "body_html"} & data.keys()):
            errors = [e for e in errors if e.field != "data"] + [
                FieldError("data.body_markdown", "body_markdown or body_html is required")]
    if errors:
        raise ValidationError(_unique(errors))
    return payload  # type: ignore[no-any-return]


def apply_cms_event(session: Session, settings: Settings, payload: dict[str, Any], *,
                    now: datetime) -> dict[str, Any]:
    """Apply one verified, schema-valid event; returns the JSON answer (kept for replays)."""
    event_type, data = payload["type"], payload["data"]
    release = session.scalar(select(Release).where(Release.external_id == data["external_id"]))
    if event_type == PUBLISHED:
        return _publish(session, settings, release, data, now=now)
    if release is None:
        return _answer(event_type, "ignored", reason="no release with this external_id")
    if event_type == UPDATED:
        return _update(session, settings, release, data, now=now, event_type=UPDATED)
    return _unpublish(session, release, now=now)


def _publish(session: Session, settings: Settings, release: Release | None, data: dict[str, Any],
             *, now: datetime) -> dict[str, Any]:
    if release is not None:
        # A newsroom sends on the first publication only: a known release is updated (when nothing
        # went out yet) and gets a blast only if every earlier one was cancelled before starting.
        answer = _update(session, settings, release, data, now=now, event_type=PUBLISHED)
        if answer["action"] == "ignored" or _blasts(session, release.id, exclude_cancelled=True):
            return answer
    else:
        # The CMS names its releases (external_id): the same text under a new id is its choice.
        release = releases.create_release(
            session, settings, external_id=data["external_id"], actor=ACTOR, now=now,
            allow_duplicate=True, **_release_fields(data))
        _add_attachments(session, settings, release, data, now=now)
        log.info("release %s: created from cms event (external id %s)", release.id,
                 data["external_id"])
    send_at = _datetime(data, "send_at")
    blast = blasts.create_blast(
        session, settings, release_id=release.id, list_names=data["lists"],
        send_at=max(send_at, now) if send_at else now, actor=ACTOR, now=now,
        # The CMS publishes like an editor: with approval required, a sender must approve.
        actor_role=Role.editor)
    log.info("release %s: blast %s %s from cms event", release.id, blast.id, blast.status)
    return _answer(PUBLISHED, "created", release=release, blast=blast)


def _update(session: Session, settings: Settings, release: Release, data: dict[str, Any], *,
            now: datetime, event_type: str) -> dict[str, Any]:
    started = [b for b in _blasts(session, release.id) if b.status not in NOT_STARTED
               and not (b.status == BlastStatus.cancelled and b.started_at is None)]
    if started:
        # What was sent is frozen; an edit after the start changes nothing and never resends.
        return _answer(event_type, "ignored", release=release,
                       reason=f"blast {started[0].id} already started")
    fields = _release_fields(data)
    if fields:
        releases.update_release(session, settings, release.id, now=now, **fields)
    _add_attachments(session, settings, release, data, now=now)
    log.info("release %s: updated from cms event", release.id)
    pending = _blasts(session, release.id, exclude_cancelled=True)
    return _answer(event_type, "updated", release=release, blast=pending[0] if pending else None)


def _unpublish(session: Session, release: Release, *, now: datetime) -> dict[str, Any]:
    cancelled = []
    for blast in _blasts(session, release.id):
        if blast.status in NOT_STARTED:
            blasts.cancel_blast(session, blast.id, actor=ACTOR, now=now)
            cancelled.append(blast.id)
    log.info("release %s: unpublished, cancelled blasts %s", release.id, cancelled)
    answer = _answer(UNPUBLISHED, "cancelled" if cancelled else "ignored", release=release)
    answer["cancelled_blast_ids"] = cancelled
    if not cancelled:
        answer["reason"] = "no blast waiting to start"
    return answer


def _blasts(session: Session, release_id: int, *, exclude_cancelled: bool = False) -> list[Blast]:
    query = select(Blast).where(Blast.release_id == release_id).order_by(Blast.id)
    if exclude_cancelled:
        query = query.where(Blast.status != BlastStatus.cancelled)
    return list(session.scalars(query))


def _release_fields(data: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {name: data[name] for name in (
        "title", "language", "kicker", "highlights", "dateline", "about", "from_name", "from_email",
        "reply_to", "press_contacts") if name in data}
    if "body_markdown" in data:
        fields.update(body=data["body_markdown"], body_format="markdown")
    elif "body_html" in data:
        fields.update(body=data["body_html"], body_format="html")
    if "embargo_until" in data:
        fields["embargo_until"] = _datetime(data, "embargo_until")
    return fields


def _add_attachments(session: Session, settings: Settings, release: Release, data: dict[str, Any],
                     *, now: datetime) -> None:
    known = {a.filename for a in release.attachments}
    for index, item in enumerate(data.get("attachments", ())):
        field = f"data.attachments.{index}.content_base64"
        if item["filename"] in known:
            continue
        try:
            content = base64.b64decode(item["content_base64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValidationError("is not valid base64", field=field) from exc
        if len(content) > settings.attachment_max_bytes:
            raise ValidationError(f"is larger than {settings.attachment_max_bytes} bytes", field=field)
        releases.add_attachment(session, settings, release.id, filename=item["filename"],
                                content_type=item["content_type"], data=content, now=now)


def _datetime(data: dict[str, Any], name: str) -> datetime | None:
    raw = data.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationError("is not an ISO 8601 date-time", field=f"data.{name}") from exc
    if value.tzinfo is None:
        raise ValidationError("needs a time zone (e.g. 2025-06-01T09:00:00+01:00)",
                              field=f"data.{name}")
    return value


def _answer(event_type: str, action: str, *, release: Release | None = None,
            blast: Blast | None = None, reason: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"event": event_type, "action": action,
                              "release_id": release.id if release else None,
                              "blast_id": blast.id if blast else None,
                              "blast_status": str(blast.status) if blast else None}
    if reason:
        answer["reason"] = reason
    return answer


def _unique(errors: list[FieldError]) -> list[FieldError]:
    seen: dict[tuple[str | None, str], FieldError] = {}
    for error in errors:
        seen.setdefault((error.field, error.reason), error)
    return list(seen.values())
