"""CSV import of media contacts: each row of a file read by `csv_files` validated by the one
contact validator, duplicates merged (in the file and against the database), suppression enforced.

Streams the file and writes in chunks (one query for a chunk's known addresses, bulk insert,
bulk update, bulk list memberships), inside one savepoint: all or nothing, and `dry_run` rolls
the savepoint back so its report is exactly what a real import would do."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import String, Table, any_, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from service.contacts.csv_files import delimiter_name, encoding_name, open_csv
from service.contacts.fields import FIELDS, Kind
from service.contacts.store import add_memberships, get_or_create_list
from service.contacts.validation import tags_column, validate_contact
from service.errors import FieldError, ValidationError
from service.models import Contact, ContactStatus, Suppression

log = logging.getLogger(__name__)

CHUNK_ROWS = 2000
MERGED_FIELDS = tuple(field.name for field in FIELDS if field.kind not in (Kind.email, Kind.tags))
UPDATED = (*MERGED_FIELDS, "tags", "status")
WRITTEN = ("email", "email_key", *UPDATED)

_CONTACTS = cast(Table, Contact.__table__)


@dataclass
class ImportReport:
    """What an import did (or, for a dry run, would do): one count per data row."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[FieldError] = field(default_factory=list)
    not_mailable: int = 0  # rows whose contact is unsubscribed, bounced or suppressed
    dry_run: bool = False
    list_name: str | None = None
    encoding: str = ""
    delimiter: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": [{"row": error.row, "field": error.field, "value": error.value or "",
                          "reason": error.reason} for error in self.rejected],
        }

    def summary(self) -> str:
        """A sentence for people, then one line per rejected row."""
        prefix = "dry run, nothing written: would import" if self.dry_run else "imported"
        where = f" into list {self.list_name!r}" if self.list_name else ""
        lines = [f"{prefix}{where}: {self.created} created, {self.updated} updated, "
                 f"{self.unchanged} unchanged, {len(self.rejected)} rejected "
                 f"({encoding_name(self.encoding)}, {delimiter_name(self.delimiter)})"]
        if self.not_mailable:
            lines.append(f"{self.not_mailable} rows are unsubscribed, bounced or suppressed "
                         "contacts: kept that way, they will not be mailed")
        lines += [f"row {error.row}, {error.field}: {error.reason}"
                  + (f" ({error.value!r})" if error.value else "") for error in self.rejected]
        return "\n".join(lines)


def import_contacts(session: Session, data: bytes, *, list_name: str | None = None,
                    dry_run: bool = False, now: datetime, source: str | None = None) -> ImportReport:
    """Import a CSV file's bytes; rows go to `list_name` when given. A bad row is reported
    (row, field, value, reason) and skipped; a file that cannot be read raises ValidationError
    and writes nothing. `source` is recorded as the consent source of new contacts."""
    source_file = open_csv(data)
    report = ImportReport(dry_run=dry_run, list_name=list_name, encoding=source_file.encoding,
                          delimiter=source_file.delimiter)
    savepoint = session.begin_nested()
    try:
        list_id = get_or_create_list(session, list_name).id if list_name else None
        chunk: list[tuple[int, dict[str, Any]]] = []
        for row_number, cells in source_file.rows:
            if isinstance(cells, FieldError):
                report.rejected.append(cells)
                continue
            contact = _validate_row(row_number, cells, report)
            if contact is None:
                continue
            if source and not contact.get("consent_source"):
                contact["consent_source"] = source
            chunk.append((row_number, contact))
            if len(chunk) >= CHUNK_ROWS:
                _import_chunk(session, chunk, list_id, report, now)
                chunk = []
        if chunk:
            _import_chunk(session, chunk, list_id, report, now)
    except BaseException:
        savepoint.rollback()
        raise
    if dry_run:
        savepoint.rollback()
    else:
        savepoint.commit()
    session.expire_all()
    log.info("contact import%s: %d created, %d updated, %d unchanged, %d rejected",
             " (dry run)" if dry_run else "", report.created, report.updated, report.unchanged,
             len(report.rejected))
    return report


def _validate_row(row_number: int, cells: dict[str, str],
                  report: ImportReport) -> dict[str, Any] | None:
    try:
        return validate_contact(cells)
    except ValidationError as exc:
        first = exc.errors[0]
        others = [error.field or "" for error in exc.errors[1:]]
        reason = first.reason + (f" (also wrong: {', '.join(others)})" if others else "")
        value = first.value if first.value is not None else cells.get(first.field or "", "")
        report.rejected.append(FieldError(first.field, reason, row=row_number,
                                          value=(value or "").strip()))
        return None


@dataclass
class _Record:
    """A contact as this chunk sees it: the stored row (or a new one) with the file merged in."""

    values: dict[str, Any]
    tags: list[str]
    status: str
    id: int | None = None
    dirty: bool = False

    def merge(self, incoming: dict[str, Any]) -> bool:
        """Non-empty values overwrite, empty cells never blank, tags are unioned."""
        changed = False
        for name in MERGED_FIELDS:
            value = incoming.get(name)
            if value is not None and value != self.values.get(name):
                self.values[name] = value
                changed = True
        for tag in incoming["tags"]:
            if tag not in self.tags:
                self.tags.append(tag)
                changed = True
        return changed

    def row(self) -> dict[str, Any]:
        return {**self.values, "tags": tags_column(self.tags), "status": self.status}


def _import_chunk(session: Session, chunk: list[tuple[int, dict[str, Any]]], list_id: int | None,
                  report: ImportReport, now: datetime) -> None:
    keys = list({contact["email_key"] for _, contact in chunk})
    records = _stored_records(session, keys)
    suppressed = set(session.scalars(select(Suppression.email_key)
                                     .where(_among(session, Suppression.email_key, keys))))
    new: dict[str, _Record] = {}
    for _row_number, contact in chunk:
        key = contact["email_key"]
        record = records.get(key)
        if record is None:
            status = ContactStatus.suppressed if key in suppressed else ContactStatus.active
            values = {name: contact.get(name) for name in MERGED_FIELDS}
            values.update(email=contact["email"], email_key=key)
            record = records[key] = new[key] = _Record(values, list(contact["tags"]), status)
            report.created += 1
        else:
            changed = record.merge(contact)
            if key in suppressed and record.status != ContactStatus.suppressed:
                record.status = ContactStatus.suppressed
                changed = True
            record.dirty = record.dirty or changed
            if changed:
                report.updated += 1
            else:
                report.unchanged += 1
        if record.status != ContactStatus.active:
            report.not_mailable += 1
    if new:
        inserted = _insert_contacts(session, [record.row() for record in new.values()], now)
        for contact_id, key in inserted:
            records[key].id = contact_id
    changed_rows = [{**record.row(), "id": record.id} for key, record in records.items()
                    if record.dirty and key not in new]
    if changed_rows:
        _update_contacts(session, changed_rows, now)
    if list_id is None:
        return
    if session.get_bind().dialect.name == "postgresql" and new:  # brand-new ids cannot conflict
        _copy(session, "list_memberships", ("list_id", "contact_id"),
              ((list_id, record.id) for record in new.values()))
        add_memberships(session, list_id, [record.id for key, record in records.items()
                                           if key not in new and record.id is not None])
    else:
        add_memberships(session, list_id, [record.id for record in records.values()
                                           if record.id is not None])


def _insert_contacts(session: Session, rows: list[dict[str, Any]],
                     now: datetime) -> list[tuple[int, str]]:
    """Insert a chunk, returning (id, email_key). PostgreSQL gets COPY (psycopg writes rows in
    C; a many-VALUES INSERT of 2,000 rows costs psycopg more to build than the server to run)
    then one lookup of the new ids; SQLite a Core executemany (a third of the ORM's cost)."""
    table = _CONTACTS
    stamps = {"created_at": now, "updated_at": now}
    if session.get_bind().dialect.name == "postgresql":
        _copy(session, "contacts", (*WRITTEN, *stamps),
              ((*(row[name] for name in WRITTEN), now, now) for row in rows))
        keys = [row["email_key"] for row in rows]
        return [(row.id, row.email_key) for row in session.execute(
            select(table.c.id, table.c.email_key).where(_among(session, table.c.email_key, keys)))]
    result = session.execute(insert(table).returning(table.c.id, table.c.email_key),
                             [{**row, **stamps} for row in rows])
    return [(row.id, row.email_key) for row in result]


def _copy(session: Session, table: str, columns: tuple[str, ...], rows: Iterable[tuple[Any, ...]],
          ) -> None:
    """COPY rows into a table on the session's own PostgreSQL connection and transaction."""
    driver = session.connection().connection.driver_connection
    with driver.cursor() as cursor, cursor.copy(  # type: ignore[union-attr]
            f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _update_contacts(session: Session, rows: list[dict[str, Any]], now: datetime) -> None:
    """Write merged contacts back by id (not the address columns: they did not change)."""
    table = _CONTACTS
    if session.get_bind().dialect.name == "postgresql":
        source = _unnested(rows, ("id", *UPDATED))
        session.execute(update(table).where(table.c.id == source.c.id).values(
            {**{name: source.c[name] for name in UPDATED}, "updated_at": now}))
        return
    statement = update(table).where(table.c.id == bindparam("row_id")).values(
        {name: bindparam(f"row_{name}") for name in (*UPDATED, "updated_at")})
    session.execute(statement, [
        {"row_id": row["id"], "row_updated_at": now, **{f"row_{name}": row[name] for name in UPDATED}}
        for row in rows])


def _among(session: Session, column: Any, keys: list[str]) -> Any:
    """`column IN (...)`; on PostgreSQL `= ANY(array)`, one parameter instead of 2,000."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam("keys", keys, type_=postgresql.ARRAY(String)))
    return column.in_(keys)


def _unnested(rows: list[dict[str, Any]], names: tuple[str, ...]) -> Any:
    """unnest(:a, :b, ...) AS t(a, b, ...): one array parameter per column (PostgreSQL)."""
    table = _CONTACTS
    arrays = [bindparam(f"rows_{name}", [row[name] for row in rows],
                        type_=postgresql.ARRAY(table.c[name].type)) for name in names]
    return func.unnest(*arrays).table_valued(*names).render_derived()


def _stored_records(session: Session, keys: list[str]) -> dict[str, _Record]:
    table = _CONTACTS
    rows = session.execute(select(table.c.id, table.c.email, table.c.email_key, table.c.tags,
                                  table.c.status, *(table.c[name] for name in MERGED_FIELDS))
                           .where(_among(session, table.c.email_key, keys)))
    records = {}
    for contact_id, email, email_key, tags, status, *merged in rows:
        values = dict(zip(MERGED_FIELDS, merged, strict=True))
        values.update(email=email, email_key=email_key)
        records[email_key] = _Record(values, [tag for tag in tags.split(",") if tag], status,
                                     id=contact_id)
    return records
