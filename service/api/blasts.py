"""API resources: blasts (create, schedule, pause, resume, cancel, approve, progress, deliveries,
replies, resend to the unsent)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from flask import Response

from service.api.blueprint import PAGE_QUERY, actor, iso, json_response, page_schema, registry, require_scope
from service.db import utcnow
from service.delivery import blasts
from service.errors import FieldError, ValidationError
from service.http.context import current_settings, db_session
from service.http.problems import RequestRejected
from service.inbound.listing import REPLY_KINDS, blast_inbound_counts, list_blast_replies
from service.models import Blast, BlastStatus, InboundMessage, MessageStatus, QueuedMessage

_DATE_TIME = {"type": ["string", "null"], "format": "date-time"}
_NAMES = {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 120},
          "maxItems": 50}
BLAST_CREATE = {
    "type": "object", "additionalProperties": False, "required": ["release_id", "lists"],
    "properties": {
        "release_id": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
        "lists": {**_NAMES, "minItems": 1},
        "filters": {"type": "object", "additionalProperties": False, "properties": {
            name: _NAMES for name in blasts.FILTER_KEYS}},
        "send_at": _DATE_TIME, "start_before": _DATE_TIME, "stop_after": _DATE_TIME,
        "schedule": {"type": "boolean", "default": True,
                     "description": "false keeps the blast a draft"},
        "include_already_sent": {
            "type": "boolean", "default": False,
            "description": "also send to contacts who already received this release (in any "
                           "language); they are left out by default and counted in already_sent_count"},
        "attach_pdf": {"type": "boolean", "default": False,
                       "description": "attach the release as a PDF (the recipient's language "
                                      "variant) to every message"},
        "track": {"type": "boolean",
                  "description": "record opens and clicks (stated in the email footer); default: "
                                 "the COMMUNIQUE_TRACKING_DEFAULT setting"},
    },
}
SCHEDULE = {"type": "object", "additionalProperties": False, "required": ["send_at"],
            "properties": {"send_at": {"type": "string", "format": "date-time"}}}
BLAST = registry.schema("Blast", {
    "type": "object", "required": ["id", "release_id", "status", "lists", "recipient_count"],
    "properties": {
        "id": {"type": "integer"}, "release_id": {"type": "integer"},
        "status": {"enum": [str(s) for s in BlastStatus]},
        "lists": {"type": "array", "items": {"type": "string"}},
        "filters": {"type": "object"}, "recipient_count": {"type": "integer"},
        "needs_approval": {"type": "boolean"}, "paused_reason": {"type": ["string", "null"]},
        "include_already_sent": {"type": "boolean"}, "already_sent_count": {"type": "integer"},
        "attach_pdf": {"type": "boolean"}, "track": {"type": "boolean"},
        "resend_of_id": {"type": ["integer", "null"]},
        **{name: _DATE_TIME for name in ("send_at", "start_before", "stop_after", "started_at",
                                          "finished_at", "approved_at", "created_at")},
    },
})
PROGRESS = registry.schema("BlastProgress", {
    "type": "object", "required": ["id", "status", "counts", "recipients"],
    "properties": {"id": {"type": "integer"}, "status": {"type": "string"},
                   "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                   "recipients": {"type": "integer"}, "rate": {"type": "number"},
                   "eta": {"type": ["string", "null"]},
                   "paused_reason": {"type": ["string", "null"]},
                   "inbound": {"type": "object", "additionalProperties": {"type": "integer"},
                               "description": "messages that came back, by kind"}}})
DELIVERY = registry.schema("Delivery", {
    "type": "object", "required": ["id", "contact_id", "email", "status", "attempts"],
    "properties": {"id": {"type": "integer"}, "contact_id": {"type": "integer"},
                   "email": {"type": "string"}, "status": {"type": "string"},
                   "attempts": {"type": "integer"}, "message_id": {"type": "string"},
                   "last_smtp_code": {"type": ["integer", "null"]},
                   "last_smtp_reply": {"type": ["string", "null"]},
                   "sent_at": _DATE_TIME, "next_attempt_at": _DATE_TIME}})
REPLY = registry.schema("Reply", {
    "type": "object", "required": ["id", "kind", "contact_id", "from", "subject", "received_at"],
    "properties": {"id": {"type": "integer"}, "kind": {"enum": [str(k) for k in REPLY_KINDS]},
                   "contact_id": {"type": ["integer", "null"]},
                   "from": {"type": ["string", "null"]}, "subject": {"type": ["string", "null"]},
                   "text": {"type": ["string", "null"]}, "received_at": {"type": "string",
                                                                           "format": "date-time"},
                   "action": {"type": "string",
                              "description": "what was done: stored, forwarded to whom"}}})
REPLY_QUERY = {"type": "object", "properties": {"kind": {"enum": [str(k) for k in REPLY_KINDS]},
                                                **PAGE_QUERY}}
BLAST_QUERY = {"type": "object", "properties": {"status": {"enum": [str(s) for s in BlastStatus]},
                                                **PAGE_QUERY}}
DELIVERY_QUERY = {"type": "object", "properties": {
    "status": {"enum": [str(s) for s in MessageStatus]}, **PAGE_QUERY}}


def blast_json(blast: Blast) -> dict[str, Any]:
    return {"id": blast.id, "release_id": blast.release_id, "status": str(blast.status),
            "lists": sorted(c.name for c in blast.lists), "filters": blast.filters or {},
            "recipient_count": blast.recipient_count, "needs_approval": blast.needs_approval,
            "include_already_sent": blast.include_already_sent,
            "already_sent_count": blast.already_sent_count, "attach_pdf": blast.attach_pdf,
            "track": blast.track,
            "paused_reason": blast.paused_reason, "resend_of_id": blast.resend_of_id,
            **{name: iso(getattr(blast, name)) for name in (
                "send_at", "start_before", "stop_after", "started_at", "finished_at",
                "approved_at", "created_at")}}


def delivery_json(row: QueuedMessage) -> dict[str, Any]:
    return {"id": row.id, "contact_id": row.contact_id, "email": row.email,
            "status": str(row.status), "attempts": row.attempts, "message_id": row.message_id,
            "last_smtp_code": row.last_smtp_code, "last_smtp_reply": row.last_smtp_reply,
            "sent_at": iso(row.sent_at), "next_attempt_at": iso(row.next_attempt_at)}


def reply_json(row: InboundMessage) -> dict[str, Any]:
    return {"id": row.id, "kind": str(row.kind), "contact_id": row.contact_id,
            "from": row.from_address, "subject": row.subject, "text": row.text,
            "received_at": iso(row.received_at), "action": row.action}


def _when(body: dict[str, Any], name: str) -> datetime | None:
    raw = body.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(FieldError(name, "is not an ISO 8601 date-time")) from None
    if value.tzinfo is None:
        raise ValidationError(FieldError(name, "needs a time zone"))
    return value


@registry.route("/blasts", "GET", summary="List blasts", tag="blasts", query=BLAST_QUERY,
                response=page_schema(BLAST), errors=(400,))
def list_blasts(query: dict[str, Any]) -> Response:
    rows = blasts.list_blasts(db_session(), status=query.get("status"))
    offset, limit = query.get("offset", 0), query.get("limit", 50)
    return json_response({"items": [blast_json(b) for b in rows[offset:offset + limit]],
                          "total": len(rows), "offset": offset, "limit": limit})


@registry.route("/blasts", "POST", summary="Create a blast (scheduled unless schedule=false)",
                tag="blasts", body=BLAST_CREATE, response=BLAST, status=201, errors=(400, 409, 422))
def create_blast(body: dict[str, Any]) -> Response:
    if body.get("schedule", True):  # a draft needs `write`; a blast that will go out needs `send`
        require_scope("send")
    session = db_session()
    with _past_time_unprocessable():
        blast = blasts.create_blast(
            session, current_settings(), release_id=body["release_id"], list_names=body["lists"],
            filters=body.get("filters"), send_at=_when(body, "send_at"),
            start_before=_when(body, "start_before"), stop_after=_when(body, "stop_after"),
            actor=actor(), now=utcnow(), schedule=body.get("schedule", True),
            include_already_sent=body.get("include_already_sent", False),
            attach_pdf=body.get("attach_pdf", False), track=body.get("track"))
    session.commit()
    return json_response(blast_json(blast), 201, {"Location": f"/api/v1/blasts/{blast.id}"})


@registry.route("/blasts/<id:blast_id>", "GET", summary="A blast with its progress counts",
                tag="blasts", response=BLAST, errors=(404,))
def get_blast(blast_id: int) -> Response:
    session = db_session()
    blast = blasts.get_blast(session, blast_id)
    progress = blasts.blast_progress(session, blast_id, now=utcnow())
    return json_response({**blast_json(blast), "progress": {**progress,
                                                            "status": str(progress["status"])}})


_FIGURES = {"type": "object", "properties": {
    **{name: {"type": "integer"} for name in ("recipients", "sent", "delivered", "bounced", "failed",
                                              "opened", "opened_by_machines", "clicked")},
    "rates": {"type": "object", "additionalProperties": {"type": ["number", "null"]}}}}
REPORT = registry.schema("BlastReport", {
    "type": "object", "required": ["blast_id", "totals", "groups", "top_links", "openers"],
    "properties": {
        "blast_id": {"type": "integer"}, "release_title": {"type": "string"},
        "track": {"type": "boolean"}, "started_at": _DATE_TIME, "totals": _FIGURES,
        "groups": {"type": "object", "description": "outlet, media_type, country, language: one "
                   "entry per value (\"value\" plus the figures)",
                   "additionalProperties": {"type": "array", "items": _FIGURES}},
        "deliveries_per_minute": {"type": "array", "items": {"type": "object"}},
        "opens_per_hour": {"type": "array", "items": {"type": "integer"},
                           "description": "people's first opens per hour, the first 72 hours"},
        "top_links": {"type": "array", "items": {"type": "object"}},
        "openers": {"type": "array", "items": {"type": "object"},
                    "description": "the journalists who opened (people, not machines)"},
    },
})


@registry.route("/blasts/<id:blast_id>/report", "GET", summary="The blast report: delivered, "
                "bounced, opened (people apart from machines), clicked, per outlet, media type, "
                "country and language; top links; who opened", tag="blasts", response=REPORT,
                errors=(404,), scope="read")
def get_blast_report(blast_id: int) -> Response:
    from service.delivery.report import blast_report

    return json_response(blast_report(db_session(), blast_id).as_dict())


@registry.route("/blasts/<id:blast_id>/progress", "GET", summary="Counts per status, rate, ETA",
                tag="blasts", response=PROGRESS, errors=(404,))
def get_blast_progress(blast_id: int) -> Response:
    progress = blasts.blast_progress(db_session(), blast_id, now=utcnow())
    return json_response({**progress, "status": str(progress["status"])})


@registry.route("/blasts/<id:blast_id>/deliveries", "GET", summary="The blast's ledger rows",
                tag="blasts", query=DELIVERY_QUERY, response=page_schema(DELIVERY),
                errors=(400, 404))
def list_deliveries(blast_id: int, query: dict[str, Any]) -> Response:
    session = db_session()
    offset, limit = query.get("offset", 0), query.get("limit", 50)
    status = query.get("status")
    rows = blasts.list_deliveries(session, blast_id, status=status, offset=offset, limit=limit)
    total = blasts.blast_counts(session, blast_id)
    return json_response({"items": [delivery_json(r) for r in rows],
                          "total": total[status] if status else sum(total.values()),
                          "offset": offset, "limit": limit})


@registry.route("/blasts/<id:blast_id>/replies", "GET",
                summary="Replies to the blast: human ones and out-of-office (kind), newest first",
                tag="blasts", query=REPLY_QUERY, response=page_schema(REPLY), errors=(400, 404),
                scope="read")
def list_replies(blast_id: int, query: dict[str, Any]) -> Response:
    session = db_session()
    blasts.get_blast(session, blast_id)
    offset, limit = query.get("offset", 0), query.get("limit", 50)
    kinds = [query["kind"]] if query.get("kind") else [str(k) for k in REPLY_KINDS]
    rows = list_blast_replies(session, blast_id, kinds=kinds, offset=offset, limit=limit)
    counts = blast_inbound_counts(session, blast_id)
    return json_response({"items": [reply_json(r) for r in rows],
                          "total": sum(counts[k] for k in kinds), "offset": offset, "limit": limit})


@registry.route("/blasts/<id:blast_id>/schedule", "POST", summary="Schedule a draft",
                tag="blasts", body=SCHEDULE, response=BLAST, errors=(400, 404, 409, 422), scope="send")
def schedule_blast(blast_id: int, body: dict[str, Any]) -> Response:
    send_at = _when(body, "send_at")
    assert send_at is not None
    with _past_time_unprocessable():
        return _change(blasts.schedule_blast, blast_id, send_at=send_at, settings=current_settings())


@contextmanager
def _past_time_unprocessable() -> Iterator[None]:
    """A well-formed send time in the past is understood but cannot be done: 422, not 400."""
    try:
        yield
    except ValidationError as exc:
        past = [e for e in exc.errors if e.field == "send_at" and e.reason.startswith("is in the past")]
        if past:
            raise RequestRejected(f"send_at {past[0].reason}", 422, field="send_at") from exc
        raise


def _change(action: Any, blast_id: int, **kwargs: Any) -> Response:
    session = db_session()
    blast = action(session, blast_id, actor=actor(), now=utcnow(), **kwargs)
    session.commit()
    return json_response(blast_json(blast))


def _state_route(verb: str, summary: str) -> None:
    domain = getattr(blasts, f"{verb}_blast")

    def view(blast_id: int) -> Response:
        extra = {"settings": current_settings()} if verb == "approve" else {}
        return _change(domain, blast_id, **extra)

    view.__name__ = f"{verb}_blast"
    registry.route(f"/blasts/<id:blast_id>/{verb}", "POST", summary=summary, tag="blasts",
                   response=BLAST, errors=(404, 409),
                   scope="approve" if verb == "approve" else "send")(view)


_state_route("pause", "Pause a running blast")
_state_route("resume", "Resume a paused blast where it stopped")
_state_route("cancel", "Cancel a blast (rows not sent stay unsent)")
_state_route("approve", "Approve a blast waiting for a sender")


@registry.route("/blasts/<id:blast_id>/resend-to-unsent", "POST",
                summary="A new blast to the contacts who did not get this one", tag="blasts",
                response=BLAST, status=201, errors=(404, 409), scope="send")
def resend_to_unsent(blast_id: int) -> Response:
    session = db_session()
    blast = blasts.resend_to_unsent(session, current_settings(), blast_id, actor=actor(),
                                    now=utcnow())
    session.commit()
    return json_response(blast_json(blast), 201, {"Location": f"/api/v1/blasts/{blast.id}"})
