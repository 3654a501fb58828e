"""Contact fields defined once (service/contacts/fields.py): every definition shows up in the
contacts table, the web form (labels in both languages, length limit), the API's schema and
answers, the CSV header map and export, and the worker's claim and the personal values a
template may print. The sample values are made from each field's kind, so a new definition is
checked without touching this file."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import String, select
from sqlalchemy.orm import Session
from webutil import csrf_token, make_user, sign_in

from service.accounts.api_keys import create_api_key
from service.config import Settings
from service.contacts import fields
from service.contacts.csv_files import map_headers
from service.contacts.fields import FIELDS, EmailUse, Kind
from service.contacts.importing import import_contacts
from service.contacts.store import EXPORT_FIELDS, export_contacts
from service.contacts.validation import fold
from service.delivery import blasts
from service.delivery.queue import claim_due_messages
from service.models import Contact
from service.releases.store import create_release
from service.rendering import mime
from service.rendering.prepare import prepare_release
from service.rendering.recipient import Recipient

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
# Contact columns that are no field people give: identity, state and bookkeeping.
NOT_FIELDS = {"id", "email_key", "status", "unsubscribed_at", "bounced_at", "created_at", "updated_at"}
NAMES = [field.name for field in FIELDS]


def _sample(field: fields.ContactField) -> str:
    """A value the validator accepts for the field, as a person would type it."""
    if field.kind is Kind.email:
        return "Elodie.Martin@lemonde.example"
    if field.kind is Kind.tags:
        return "économie, tourisme"
    if field.kind is Kind.flag:
        return "oui"
    return {Kind.language: "fr", Kind.country: "FR", Kind.media_type: "print"}.get(
        field.kind, f"{field.name} of Élodie"[:field.max_length])


def _stored(field: fields.ContactField) -> Any:
    """The sample as it is stored and returned."""
    if field.kind is Kind.tags:
        return ["économie", "tourisme"]
    if field.kind is Kind.flag:
        return True
    return _sample(field)


def _csv() -> bytes:
    header = ";".join(field.headers[0] for field in FIELDS)
    return f"{header}\n{';'.join(_sample(field) for field in FIELDS)}\n".encode()


def _value(contact: Contact, field: fields.ContactField) -> Any:
    return contact.tag_list if field.kind is Kind.tags else getattr(contact, field.name)


def test_each_definition_is_a_contact_column_with_its_length() -> None:
    """Every definition names a column of `contacts` whose length is the definition's limit, and
    every column people fill in has a definition."""
    columns = Contact.__table__.c
    for field in FIELDS:
        column_type = columns[field.name].type
        length = column_type.length if isinstance(column_type, String) else None
        assert length == field.max_length, field.name
    assert {column.name for column in columns} - NOT_FIELDS == set(NAMES)
    assert len(set(NAMES)) == len(FIELDS)


def test_csv_aliases_map_to_their_field_and_the_export_reimports(db: Session) -> None:
    """Each header alias of a definition maps to that field (no alias claimed twice); a file with
    one column per field stores every value, and its export has every field and reimports as is."""
    folded = [fold(alias) for field in FIELDS for alias in field.headers]
    assert len(folded) == len(set(folded))
    for field in FIELDS:
        for alias in field.headers:
            mapped = map_headers(["email", alias.upper()] if field.kind is not Kind.email else [alias])
            assert field.name in mapped.values(), (field.name, alias)

    report = import_contacts(db, _csv(), list_name="presse", now=NOW)
    assert (report.created, report.rejected) == (1, [])
    contact = db.scalars(select(Contact)).one()
    assert {field.name: _value(contact, field) for field in FIELDS} == \
        {field.name: _stored(field) for field in FIELDS}

    out = io.StringIO()
    assert export_contacts(db, out) == 1
    header = out.getvalue().lstrip("\ufeff").splitlines()[0].split(",")
    assert header == list(EXPORT_FIELDS) and set(NAMES) <= set(header)
    again = import_contacts(db, out.getvalue().encode(), list_name="presse", now=NOW)
    assert (again.unchanged, again.rejected) == (1, [])


@pytest.mark.parametrize("language", ["fr", "en"])
def test_contact_form_shows_each_field_with_its_label_and_limit(client: FlaskClient, db: Session,
                                                                 language: str) -> None:
    """The new-contact page has an input per form field, labelled in the user's language as the
    definition says, bounded by its length; saving it stores every value."""
    sign_in(client, make_user(db, f"{language}@onmt.example", language=language))
    page = client.get("/contacts/new").get_data(as_text=True)
    on_form = [field for field in FIELDS if field.in_form]
    for field in on_form:
        label = field.label_fr if language == "fr" else field.label
        assert f'<label for="{field.name}">{label}</label>' in page, field.name
        assert f'name="{field.name}"' in page
        if field.kind in (Kind.text, Kind.language, Kind.country):
            assert f'maxlength="{field.max_length}" name="{field.name}"' in page, field.name
    assert all(f'name="{field.name}"' not in page for field in FIELDS if not field.in_form)

    data = {field.name: _sample(field) for field in on_form}
    response = client.post("/contacts/new", data={**data, "csrf_token": csrf_token(client, "/contacts/new")})
    assert response.status_code == 303, response.get_data(as_text=True)
    contact = db.scalars(select(Contact)).one()
    assert {field.name: _value(contact, field) for field in on_form} == \
        {field.name: _stored(field) for field in on_form}


def test_api_schema_and_answers_carry_each_field(client: FlaskClient, db: Session) -> None:
    """The OpenAPI document's contact input is each definition's schema, its Contact lists each
    field; a contact created with every field comes back with each of them."""
    _key, token = create_api_key(db, "tests", now=NOW)
    db.commit()
    auth = {"Authorization": f"Bearer {token}"}
    document = client.get("/api/v1/openapi.json").json
    body = document["paths"]["/api/v1/contacts"]["post"]["requestBody"]["content"]["application/json"]
    answer = document["components"]["schemas"]["Contact"]["properties"]
    for field in FIELDS:
        assert body["schema"]["properties"][field.name] == field.input_schema
        assert answer[field.name] == field.output_schema

    sent = {field.name: _stored(field) if field.kind is Kind.tags else _sample(field) for field in FIELDS}
    created = client.post("/api/v1/contacts", json=sent, headers=auth)
    assert created.status_code == 201, created.json
    got = client.get(created.headers["Location"], headers=auth).json
    assert {name: got[name] for name in NAMES} == {field.name: _stored(field) for field in FIELDS}


def test_claim_loads_what_emails_use_and_templates_print_it(db: Session, settings: Settings) -> None:
    """The worker's claim gives each message the fields emails may use, and no other; every field
    a template may print is a personal value, filled per recipient."""
    import_contacts(db, _csv(), list_name="presse", now=NOW)
    release = create_release(db, settings, title="Titre", body="Bonjour", actor="x", now=NOW)
    blast = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"],
                                send_at=NOW, now=NOW)
    db.commit()  # due now: created running, its message queued
    [claimed] = claim_due_messages(db, worker_id="test", now=NOW, limit=10, blast_ids=[blast.id])
    contact = db.scalars(select(Contact)).one()
    assert claimed.recipient == Recipient.from_contact(contact)
    for field in FIELDS:
        assert hasattr(claimed.recipient, field.name) == (field.emails is not EmailUse.none), field.name
        if field.emails is not EmailUse.none:
            assert getattr(claimed.recipient, field.name) == getattr(contact, field.name)

    printed = [field.name for field in FIELDS if field.emails is EmailUse.printed]
    assert set(printed) <= set(mime.PERSONAL_FIELDS)
    prepared = prepare_release(db, release.id, settings)
    variant = prepared.variants[prepared.default_language]
    variant.text = "".join(f"{name}: {mime.marker(name)}\n" for name in printed)
    message = prepared.render(claimed.recipient, message_id="<f@onmt.example>", now=NOW)
    assert message.text == "".join(f"{name}: {getattr(contact, name)}\n" for name in printed)
