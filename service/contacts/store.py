"""Media contacts: create, edit, search, export; lists; consent, status and suppression.

CSV import lives in `importing.py`, field definitions in `fields.py`, the validator in
`validation.py`. A contact is mailable only while its status is `active`; suppression and
unsubscribes are sticky: no import, edit or list change turns them back to `active`."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.contacts.fields import FIELDS
from service.contacts.validation import (
    normalize_country,
    normalize_email,
    normalize_language,
    normalize_media_type,
    normalize_tags,
    tags_column,
    validate_contact,
)
from service.errors import Conflict, FieldError, NotFound, ValidationError
from service.events import EventType, record_event
from service.models import Contact, ContactList, ContactStatus, Suppression, list_memberships

__all__ = [
    "add_to_list", "create_contact", "delete_contact", "export_contacts", "get_contact",
    "get_or_create_list", "is_suppressed", "list_counts", "list_suppressions",
    "mark_bounced", "normalize_email", "remove_from_list", "search_contacts", "suppress",
    "unsubscribe_contact", "update_contact", "validate_contact",
]

log = logging.getLogger(__name__)

# The header re-imports cleanly: the fields people edit, `status` (shown, never read by an import),
# then the record-keeping ones (consent source).
EXPORT_FIELDS = (*(field.name for field in FIELDS if field.in_form), "status",
                 *(field.name for field in FIELDS if not field.in_form))
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def is_suppressed(session: Session, email_key: str) -> bool:
    return session.scalar(select(Suppression.id).where(Suppression.email_key == email_key)) \
        is not None


def get_contact(session: Session, contact_id: int) -> Contact:
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"contact {contact_id} does not exist")
    return contact


def create_contact(session: Session, data: Mapping[str, Any], *, now: datetime,
                   list_names: Iterable[str] = ()) -> Contact:
    """Add one journalist; an address already known is a Conflict, a suppressed one is stored
    as `suppressed` (never mailed)."""
    fields = validate_contact(data)
    if session.scalar(select(Contact.id).where(Contact.email_key == fields["email_key"])):
        raise Conflict(f"email: a contact with the address {fields['email']} already exists")
    fields["tags"] = tags_column(fields["tags"])
    status = (ContactStatus.suppressed if is_suppressed(session, fields["email_key"])
              else ContactStatus.active)
    contact = Contact(**fields, status=status, created_at=now, updated_at=now)
    session.add(contact)
    session.flush()
    for name in list_names:
        add_to_list(session, name, [contact.id])
    log.info("contact %s: created (%s)", contact.id, status)
    return contact


def update_contact(session: Session, contact_id: int, data: Mapping[str, Any], *,
                   now: datetime) -> Contact:
    """Change the fields present in `data` (an empty value clears a field; tags are replaced).
    The status is not editable here: unsubscribes and suppression stay."""
    contact = get_contact(session, contact_id)
    fields = validate_contact(data, partial=True)
    if "email_key" in fields and fields["email_key"] != contact.email_key:
        other = session.scalar(select(Contact.id).where(Contact.email_key == fields["email_key"]))
        if other is not None:
            raise Conflict(f"email: a contact with the address {fields['email']} already exists")
        if is_suppressed(session, fields["email_key"]):
            contact.status = ContactStatus.suppressed
    if "tags" in fields:
        fields["tags"] = tags_column(fields["tags"])
    for name, value in fields.items():
        setattr(contact, name, value)
    contact.updated_at = now
    session.flush()
    return contact


def delete_contact(session: Session, contact_id: int) -> None:
    """Remove a journalist. An unsubscribed, bounced or suppressed address goes on the
    suppression list first, so re-importing an old file cannot bring it back."""
    contact = get_contact(session, contact_id)
    if contact.status != ContactStatus.active and not is_suppressed(session, contact.email_key):
        session.add(Suppression(email_key=contact.email_key,
                                reason=f"contact deleted while {contact.status}"))
    session.delete(contact)
    session.flush()
    log.info("contact %s: deleted", contact_id)


def search_contacts(session: Session, *, query: str | None = None, list_name: str | None = None,
                    language: str | None = None, country: str | None = None,
                    media_type: str | None = None, tag: str | None = None,
                    status: str | None = None, offset: int = 0,
                    limit: int = 50) -> tuple[list[Contact], int]:
    """One page of contacts matching every given filter, by name, and the total count."""
    statement = _filtered(select(Contact), query=query, list_name=list_name, language=language,
                          country=country, media_type=media_type, tag=tag, status=status)
    total = session.scalar(select(func.count()).select_from(statement.subquery())) or 0
    page = (statement.order_by(func.coalesce(Contact.last_name, ""),
                               func.coalesce(Contact.first_name, ""), Contact.id)
            .offset(max(offset, 0)).limit(max(1, min(limit, 1000))))
    return list(session.scalars(page)), total


def export_contacts(session: Session, out: TextIO, *, list_name: str | None = None,
                    **filters: Any) -> int:
    """Write matching contacts as CSV (UTF-8 with BOM, so Excel shows accents; the header row
    re-imports). Cells that a spreadsheet would run as a formula get a leading apostrophe
    (OWASP CSV injection). Returns the number of contacts written."""
    statement = _filtered(select(Contact), list_name=list_name, **filters).order_by(Contact.id)
    writer = csv.writer(out, lineterminator="\r\n")
    out.write("\ufeff")
    writer.writerow(EXPORT_FIELDS)
    count = 0
    for contact in session.scalars(statement.execution_options(yield_per=1000)):
        row = [", ".join(contact.tag_list) if name == "tags" else getattr(contact, name)
               for name in EXPORT_FIELDS]
        writer.writerow([neutralize_formula(value) for value in row])
        count += 1
    return count


def suppress(session: Session, emails: Iterable[str], *, reason: str | None = None,
             actor: str | None = None, now: datetime) -> int:
    """Put addresses on the organisation-wide do-not-contact list and mark matching contacts
    `suppressed`. Returns how many addresses were new on the list."""
    keys: dict[str, None] = {}
    errors: list[FieldError] = []
    for raw in emails:
        try:
            keys[normalize_email(raw)[1]] = None
        except ValidationError as exc:
            errors.extend(exc.errors)
    if errors:
        raise ValidationError(errors)
    known = set(session.scalars(select(Suppression.email_key)
                                .where(Suppression.email_key.in_(list(keys)))))
    new = [key for key in keys if key not in known]
    session.add_all(Suppression(email_key=key, reason=reason, created_by=actor, created_at=now)
                    for key in new)
    session.execute(update(Contact)
                    .where(Contact.email_key.in_(list(keys)),
                           Contact.status != ContactStatus.suppressed)
                    .values(status=ContactStatus.suppressed, updated_at=now)
                    .execution_options(synchronize_session="fetch"))
    session.flush()
    log.info("suppressed %d new addresses (%d given)", len(new), len(keys))
    return len(new)


def list_suppressions(session: Session) -> list[Suppression]:
    return list(session.scalars(select(Suppression).order_by(Suppression.email_key)))


def get_or_create_list(session: Session, name: str) -> ContactList:
    clean = " ".join((name or "").split())
    if not clean:
        raise ValidationError(FieldError("list", "a list needs a name"))
    if len(clean) > 120:
        raise ValidationError(FieldError("list", "longer than 120 characters", value=clean))
    contact_list = session.scalar(select(ContactList).where(ContactList.name == clean))
    if contact_list is None:
        contact_list = ContactList(name=clean)
        session.add(contact_list)
        session.flush()
        log.info("list %s: created %r", contact_list.id, clean)
    return contact_list


def list_counts(session: Session) -> list[tuple[str, int]]:
    """Every list's name and number of contacts, by name."""
    rows = session.execute(
        select(ContactList.name, func.count(list_memberships.c.contact_id))
        .outerjoin(list_memberships, list_memberships.c.list_id == ContactList.id)
        .group_by(ContactList.id, ContactList.name).order_by(ContactList.name))
    return [(name, count) for name, count in rows]


def add_to_list(session: Session, list_name: str, contact_ids: Sequence[int]) -> int:
    """Add contacts to a list (created if new); already members are left alone. A suppressed
    address stays `suppressed` whatever list it joins. Returns the number of contacts given."""
    contact_list = get_or_create_list(session, list_name)
    ids = list(dict.fromkeys(contact_ids))
    found = set(session.scalars(select(Contact.id).where(Contact.id.in_(ids))))
    missing = [contact_id for contact_id in ids if contact_id not in found]
    if missing:
        raise NotFound(f"contact {missing[0]} does not exist")
    add_memberships(session, contact_list.id, ids)
    _enforce_suppression(session, ids)
    return len(ids)


def remove_from_list(session: Session, list_name: str, contact_ids: Sequence[int]) -> int:
    contact_list = session.scalar(select(ContactList).where(ContactList.name == list_name))
    if contact_list is None:
        raise NotFound(f"list {list_name!r} does not exist")
    result = session.execute(delete(list_memberships).where(
        list_memberships.c.list_id == contact_list.id,
        list_memberships.c.contact_id.in_(list(contact_ids))))
    session.expire_all()
    return int(getattr(result, "rowcount", 0) or 0)


def add_memberships(session: Session, list_id: int, contact_ids: Sequence[int]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING, in the session's SQL dialect."""
    if not contact_ids:
        return
    dialect = session.get_bind().dialect.name
    rows = [{"list_id": list_id, "contact_id": contact_id} for contact_id in contact_ids]
    if dialect == "postgresql":  # one statement over an array, not one row per parameter set
        ids = bindparam("contact_ids", list(contact_ids), type_=postgresql.ARRAY(Integer))
        session.execute(postgresql.insert(list_memberships).from_select(
            ["list_id", "contact_id"], select(literal(list_id), func.unnest(ids)))
            .on_conflict_do_nothing())
    elif dialect == "sqlite":
        session.execute(sqlite.insert(list_memberships).on_conflict_do_nothing(), rows)
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        existing = set(session.scalars(select(list_memberships.c.contact_id).where(
            list_memberships.c.list_id == list_id)))
        rows = [row for row in rows if row["contact_id"] not in existing]
        if rows:
            session.execute(insert(list_memberships), rows)
    session.expire_all()


def unsubscribe_contact(session: Session, contact_id: int, *, now: datetime,
                        source: str = "link") -> Contact:
    """The journalist asked to stop: never mailed again, and no import re-activates them."""
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"contact {contact_id} does not exist")
    if contact.status == ContactStatus.active:
        contact.status = ContactStatus.unsubscribed
        contact.unsubscribed_at = now
        log.info("contact %s: unsubscribed (%s)", contact.id, source)
        record_event(session, EventType.contact_unsubscribed,
                     {"contact_id": contact.id, "email": contact.email, "source": source}, now=now)
    return contact


def set_do_not_track(session: Session, contact_id: int, *, now: datetime) -> Contact:
    """The journalist asked not to be tracked: no pixel and no tracked link in later messages,
    and no open or click of earlier ones recorded."""
    contact = get_contact(session, contact_id)
    if not contact.do_not_track:
        contact.do_not_track = True
        contact.updated_at = now
        log.info("contact %s: asked not to be tracked", contact.id)
    return contact


def mark_bounced(session: Session, contact_id: int, *, now: datetime) -> None:
    """A permanent 5.1.x refusal: the address does not exist, so no later blast mails it."""
    contact = session.get(Contact, contact_id)
    if contact is not None and contact.status == ContactStatus.active:
        contact.status = ContactStatus.bounced
        contact.bounced_at = now
        log.info("contact %s: marked bounced", contact.id)
        record_event(session, EventType.contact_bounced,
                     {"contact_id": contact.id, "email": contact.email}, now=now)


def _enforce_suppression(session: Session, contact_ids: Sequence[int]) -> None:
    suppressed = select(Suppression.email_key)
    session.execute(update(Contact)
                    .where(Contact.id.in_(list(contact_ids)),
                           Contact.email_key.in_(suppressed),
                           Contact.status != ContactStatus.suppressed)
                    .values(status=ContactStatus.suppressed)
                    .execution_options(synchronize_session=False))


def _filtered(statement: Select[Any], *, query: str | None = None, list_name: str | None = None,
              language: str | None = None, country: str | None = None,
              media_type: str | None = None, tag: str | None = None,
              status: str | None = None) -> Select[Any]:
    conditions: list[ColumnElement[bool]] = []
    errors: list[FieldError] = []
    if query and query.strip():
        pattern = "%" + _escape_like(query.strip()) + "%"
        conditions.append(or_(*(column.ilike(pattern, escape="\\") for column in (
            Contact.email, Contact.first_name, Contact.last_name, Contact.outlet, Contact.role,
            Contact.city))))
    if list_name:
        conditions.append(Contact.id.in_(
            select(list_memberships.c.contact_id).join(
                ContactList, ContactList.id == list_memberships.c.list_id)
            .where(ContactList.name == list_name)))
    checks = (("language", language, normalize_language), ("country", country, normalize_country),
              ("media_type", media_type, normalize_media_type), ("status", status, ContactStatus))
    values: dict[str, str] = {}
    for field, value, normalize in checks:
        if value:
            try:
                values[field] = str(normalize(value))  # type: ignore[operator]
            except ValueError as exc:
                errors.append(FieldError(field, str(exc), value=value))
    if "language" in values:
        code = values["language"]
        conditions.append(or_(Contact.language == code, Contact.language.like(code + "-%")))
    conditions.extend(getattr(Contact, field) == values[field]
                      for field in ("country", "media_type", "status") if field in values)
    if tag:
        tags = normalize_tags(tag)
        for one in tags:
            conditions.append(Contact.tags.like("%," + _escape_like(one) + ",%", escape="\\"))
    if errors:
        raise ValidationError(errors)
    return statement.where(*conditions)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def neutralize_formula(value: Any) -> str:
    """A CSV cell a spreadsheet will not run as a formula (OWASP CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text
