"""API resources: releases (create from Markdown or HTML, update, get, list) and previews."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Response

from service.api.blueprint import PAGE_QUERY, actor, iso, json_response, page_schema, registry
from service.api.openapi import JSON
from service.db import utcnow
from service.errors import DuplicateRelease, FieldError, ValidationError
from service.http.context import current_settings, db_session
from service.models import Release
from service.releases import store as releases

_TEXT = {"type": ["string", "null"], "maxLength": 5000}
_RELEASE_FIELDS: dict[str, Any] = {
    "title": {"type": "string", "minLength": 1, "maxLength": 500},
    "body": {"type": "string", "minLength": 1, "maxLength": 1_000_000},
    "body_format": {"enum": ["markdown", "html"], "default": "markdown"},
    "language": {"type": "string", "pattern": "^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$"},
    "kicker": {"type": ["string", "null"], "maxLength": 200},
    "highlights": {"type": "array", "items": {"type": "string", "maxLength": 1000}, "maxItems": 20},
    "dateline": {"type": ["string", "null"], "maxLength": 300},
    "about": _TEXT,
    "press_contacts": {"type": "array", "items": {"type": "object"}, "maxItems": 20},
    "embargo_until": {"type": ["string", "null"], "format": "date-time"},
    "from_name": {"type": ["string", "null"], "maxLength": 200},
    "from_email": {"type": ["string", "null"], "maxLength": 320},
    "reply_to": {"type": ["string", "null"], "maxLength": 320},
}
RELEASE_CREATE = {"type": "object", "additionalProperties": False, "required": ["body"],
                  "properties": {**_RELEASE_FIELDS,
                                 "external_id": {"type": ["string", "null"], "maxLength": 200},
                                 "allow_duplicate": {
                                     "type": "boolean", "default": False,
                                     "description": "create it even if a release with the same title "
                                                    "and body exists (otherwise that one is answered, "
                                                    "200, with duplicate_of)"}}}
RELEASE_UPDATE = {"type": "object", "additionalProperties": False, "properties": _RELEASE_FIELDS}
RELEASE = registry.schema("Release", {
    "type": "object", "required": ["id", "slug", "title", "language", "body_format", "body"],
    "properties": {
        "id": {"type": "integer"}, "slug": {"type": "string"}, "title": {"type": "string"},
        "language": {"type": "string"}, "status": {"type": "string"},
        "body_format": {"type": "string"}, "body": {"type": "string"},
        "external_id": {"type": ["string", "null"]}, "group_id": {"type": ["integer", "null"]},
        "kicker": {"type": ["string", "null"]}, "dateline": {"type": ["string", "null"]},
        "about": {"type": ["string", "null"]},
        "highlights": {"type": "array", "items": {"type": "string"}},
        "press_contacts": {"type": "array"},
        "embargo_until": {"type": ["string", "null"]},
        "attachments": {"type": "array", "items": {"type": "object"}},
        "created_at": {"type": "string"}, "updated_at": {"type": "string"},
        "duplicate_of": {"type": "integer", "description": "set when an identical release already existed"},
    },
})
PREVIEW_QUERY = {"type": "object", "properties": {
    "format": {"enum": ["html", "text", "eml"], "default": "html"},
    "email": {"type": "string", "maxLength": 320},
    "contact_id": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
}}
PREVIEW_TYPES = {"html": "text/html", "text": "text/plain", "eml": "message/rfc822"}
PREVIEW_POLICY = "default-src 'none'; img-src * data:; style-src 'unsafe-inline'"


def release_json(release: Release) -> dict[str, Any]:
    return {
        "id": release.id, "slug": release.slug, "title": release.title,
        "language": release.language, "status": str(release.status),
        "body_format": release.body_format, "body": release.body,
        "external_id": release.external_id, "group_id": release.group_id,
        "kicker": release.kicker, "dateline": release.dateline, "about": release.about,
        "highlights": release.highlights or [], "press_contacts": release.press_contacts or [],
        "embargo_until": iso(release.embargo_until),
        "from_name": release.from_name, "from_email": release.from_email,
        "reply_to": release.reply_to,
        "attachments": [{"id": a.id, "filename": a.filename, "content_type": a.content_type,
                         "size_bytes": a.size_bytes} for a in release.attachments],
        "created_at": iso(release.created_at), "updated_at": iso(release.updated_at),
    }


def _fields(body: dict[str, Any]) -> dict[str, Any]:
    fields = {k: v for k, v in body.items() if k != "allow_duplicate"}
    if fields.get("embargo_until") is not None:
        try:
            fields["embargo_until"] = datetime.fromisoformat(fields["embargo_until"].replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(FieldError("embargo_until", "is not an ISO 8601 date-time")) from None
        if fields["embargo_until"].tzinfo is None:
            raise ValidationError(FieldError("embargo_until", "needs a time zone"))
    return fields


@registry.route("/releases", "GET", summary="List releases", tag="releases",
                query={"type": "object", "properties": PAGE_QUERY},
                response=page_schema(RELEASE), errors=(400,))
def list_releases(query: dict[str, Any]) -> Response:
    rows = releases.list_releases(db_session())
    offset, limit = query.get("offset", 0), query.get("limit", 50)
    return json_response({"items": [release_json(r) for r in rows[offset:offset + limit]],
                          "total": len(rows), "offset": offset, "limit": limit})


@registry.route("/releases", "POST", summary="Create a release from Markdown or HTML (sanitized)",
                tag="releases", body=RELEASE_CREATE, errors=(400, 409),
                responses={201: (JSON, RELEASE), 200: (JSON, RELEASE)})
def create_release(body: dict[str, Any]) -> Response:
    session = db_session()
    try:
        release = releases.create_release(session, current_settings(), actor=actor(), now=utcnow(),
                                          allow_duplicate=body.get("allow_duplicate", False),
                                          **_fields(body))
    except DuplicateRelease as duplicate:  # the existing release, said so: 200, not 201
        session.rollback()
        existing = releases.get_release(session, duplicate.existing_id)
        return json_response({**release_json(existing), "duplicate_of": existing.id}, 200,
                             {"Location": f"/api/v1/releases/{existing.id}"})
    session.commit()
    return json_response(release_json(release), 201,
                         {"Location": f"/api/v1/releases/{release.id}"})


@registry.route("/releases/<id:release_id>", "GET", summary="Get a release", tag="releases",
                response=RELEASE, errors=(404,))
def get_release(release_id: int) -> Response:
    return json_response(release_json(releases.get_release(db_session(), release_id)))


@registry.route("/releases/<id:release_id>", "PATCH", summary="Update a release not yet sent",
                tag="releases", body=RELEASE_UPDATE, response=RELEASE, errors=(400, 404, 409))
def update_release(release_id: int, body: dict[str, Any]) -> Response:
    session = db_session()
    release = releases.update_release(session, current_settings(), release_id, now=utcnow(),
                                      **_fields(body))
    session.commit()
    return json_response(release_json(release))


@registry.route("/releases/<id:release_id>/preview", "GET",
                summary="What a contact would receive: html, text or the whole .eml",
                tag="releases", query=PREVIEW_QUERY, errors=(400, 404),
                responses={200: (",".join(PREVIEW_TYPES.values()), {"type": "string"})})
def preview_release(release_id: int, query: dict[str, Any]) -> Response:
    fmt = query.get("format", "html")
    content = releases.preview(db_session(), current_settings(), release_id,
                               email=query.get("email"), contact_id=query.get("contact_id"),
                               fmt=fmt, now=utcnow())
    mimetype = PREVIEW_TYPES[fmt]
    response = Response(content, mimetype=mimetype)
    if fmt != "eml":
        response.headers["Content-Security-Policy"] = PREVIEW_POLICY
    return response
