"""API resources: contacts (search, get, create, update, delete, CSV import) and lists."""

from __future__ import annotations

from typing import Any

from flask import Response

from service.api.blueprint import PAGE_QUERY, iso, json_response, page_schema, registry
from service.contacts import importing
from service.contacts import store as contacts
from service.contacts.fields import FIELDS, Kind
from service.db import utcnow
from service.http.context import db_session
from service.models import Contact, ContactStatus, MediaType

CONTACT_INPUT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {field.name: field.input_schema for field in FIELDS},
}
CONTACT_CREATE = {**CONTACT_INPUT, "required": ["email"], "properties": {
    **CONTACT_INPUT["properties"],
    "lists": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 120},
              "maxItems": 20}}}
CONTACT = registry.schema("Contact", {
    "type": "object",
    "required": ["id", "email", "status", "tags", "lists", "created_at", "updated_at"],
    "properties": {
        "id": {"type": "integer"},
        **{field.name: field.output_schema for field in FIELDS},
        "unsubscribed_at": {"type": ["string", "null"]}, "bounced_at": {"type": ["string", "null"]},
        "status": {"enum": [str(s) for s in ContactStatus]},
        "lists": {"type": "array", "items": {"type": "string"}},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
})
CONTACT_QUERY = {"type": "object", "properties": {
    "query": {"type": "string", "maxLength": 200},
    "list": {"type": "string", "maxLength": 120},
    "language": {"type": "string", "maxLength": 35},
    "country": {"type": "string", "maxLength": 60},
    "media_type": {"enum": [str(m) for m in MediaType]},
    "tag": {"type": "string", "maxLength": 60},
    "status": {"enum": [str(s) for s in ContactStatus]},
    **PAGE_QUERY,
}}
IMPORT_QUERY = {"type": "object", "properties": {
    "list": {"type": "string", "minLength": 1, "maxLength": 120},
    "dry_run": {"type": "boolean", "default": False},
}}
IMPORT_REPORT = registry.schema("ImportReport", {
    "type": "object", "required": ["created", "updated", "unchanged", "rejected"],
    "properties": {"created": {"type": "integer"}, "updated": {"type": "integer"},
                   "unchanged": {"type": "integer"},
                   "rejected": {"type": "array", "items": {"type": "object"}}}})
LISTS = {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": {
    "type": "object", "required": ["name", "contact_count"],
    "properties": {"name": {"type": "string"}, "contact_count": {"type": "integer"}}}}}}


def contact_json(contact: Contact) -> dict[str, Any]:
    data: dict[str, Any] = {"id": contact.id}
    for field in FIELDS:
        data[field.name] = contact.tag_list if field.kind is Kind.tags else getattr(contact, field.name)
    data.update(status=str(contact.status),
                lists=sorted(c.name for c in contact.lists),
                unsubscribed_at=iso(contact.unsubscribed_at), bounced_at=iso(contact.bounced_at),
                created_at=iso(contact.created_at), updated_at=iso(contact.updated_at))
    return data


@registry.route("/contacts", "GET", summary="Search contacts (filters, pagination)", tag="contacts",
                query=CONTACT_QUERY, response=page_schema(CONTACT), errors=(400,))
def list_contacts(query: dict[str, Any]) -> Response:
    offset, limit = query.get("offset", 0), query.get("limit", 50)
    rows, total = contacts.search_contacts(
        db_session(), query=query.get("query"), list_name=query.get("list"),
        language=query.get("language"), country=query.get("country"),
        media_type=query.get("media_type"), tag=query.get("tag"), status=query.get("status"),
        offset=offset, limit=limit)
    return json_response({"items": [contact_json(c) for c in rows], "total": total,
                          "offset": offset, "limit": limit})


@registry.route("/contacts", "POST", summary="Create a contact", tag="contacts",
                body=CONTACT_CREATE, response=CONTACT, status=201, errors=(400, 409))
def create_contact(body: dict[str, Any]) -> Response:
    session = db_session()
    contact = contacts.create_contact(session, body, now=utcnow(), list_names=body.get("lists", ()))
    session.commit()
    return json_response(contact_json(contact), 201,
                         {"Location": f"/api/v1/contacts/{contact.id}"})


@registry.route("/contacts/<id:contact_id>", "GET", summary="Get a contact", tag="contacts",
                response=CONTACT, errors=(404,))
def get_contact(contact_id: int) -> Response:
    return json_response(contact_json(contacts.get_contact(db_session(), contact_id)))


@registry.route("/contacts/<id:contact_id>", "PATCH", summary="Update a contact's fields",
                tag="contacts", body=CONTACT_INPUT, response=CONTACT, errors=(400, 404, 409))
def update_contact(contact_id: int, body: dict[str, Any]) -> Response:
    session = db_session()
    contact = contacts.update_contact(session, contact_id, body, now=utcnow())
    session.commit()
    return json_response(contact_json(contact))


@registry.route("/contacts/<id:contact_id>", "DELETE", summary="Delete a contact", tag="contacts",
                responses={204: ("application/json", None)}, errors=(404,))
def delete_contact(contact_id: int) -> Response:
    session = db_session()
    contacts.delete_contact(session, contact_id)
    session.commit()
    return Response(status=204)


@registry.route("/contacts/import", "POST", summary="Import a CSV export (text/csv body)",
                tag="contacts", query=IMPORT_QUERY, body={"type": "string"}, body_type="text/csv",
                response=IMPORT_REPORT, errors=(400,))
def import_contacts(query: dict[str, Any], body: bytes) -> Response:
    session = db_session()
    report = importing.import_contacts(session, body, list_name=query.get("list"),
                                      dry_run=query.get("dry_run", False), now=utcnow(),
                                      source="api")
    session.commit()
    return json_response(report.as_dict())


@registry.route("/lists", "GET", summary="Contact lists and their sizes", tag="lists",
                response=LISTS, errors=())
def list_lists() -> Response:
    counts = contacts.list_counts(db_session())
    return json_response({"items": [{"name": n, "contact_count": c} for n, c in counts]})
