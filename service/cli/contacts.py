"""`communique contacts import|export|suppress` and `communique lists`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from service.cli.context import Context, emit, json_option, pass_context
from service.contacts.importing import import_contacts
from service.contacts.store import export_contacts, list_counts, suppress


@click.group()
def contacts() -> None:
    """Media contacts: import, export, suppress."""


@contacts.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--list", "list_name", metavar="NAME", help="Add every imported contact to this list.")
@click.option("--dry-run", is_flag=True, help="Report what would happen; write nothing.")
@json_option
@pass_context
def import_command(context: Context, file: Path, list_name: str | None, dry_run: bool,
                   as_json: bool) -> None:
    """Import a CSV file (UTF-8 or Windows-1252; comma, semicolon or tab; French or English
    headers). Bad rows are reported and skipped."""
    with context.session() as session:
        report = import_contacts(session, file.read_bytes(), list_name=list_name, dry_run=dry_run,
                                 now=datetime.now(UTC), source=f"import of {file.name}")
    emit(report.as_dict(), as_json, report.summary())


@contacts.command("export")
@click.option("--list", "list_name", metavar="NAME", help="Only this list's contacts.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file instead of standard output.")
@pass_context
def export_command(context: Context, list_name: str | None, output: Path | None) -> None:
    """Export contacts as CSV (UTF-8 with BOM, opens in Excel; re-imports as is)."""
    with context.session() as session:
        if output is None:
            count = export_contacts(session, sys.stdout, list_name=list_name)
        else:
            with output.open("w", encoding="utf-8", newline="") as out:
                count = export_contacts(session, out, list_name=list_name)
    if output is not None:
        click.echo(f"exported {count} contacts to {output}", err=True)


@contacts.command("suppress")
@click.argument("emails", nargs=-1, required=True, metavar="EMAIL...")
@click.option("--reason", help="Why these addresses must never be mailed.")
@json_option
@pass_context
def suppress_command(context: Context, emails: tuple[str, ...], reason: str | None,
                     as_json: bool) -> None:
    """Add addresses to the do-not-contact list; matching contacts become `suppressed`."""
    with context.session() as session:
        added = suppress(session, emails, reason=reason, actor="cli", now=datetime.now(UTC))
    emit({"suppressed": added, "given": len(emails)}, as_json,
         f"suppression list: {added} added, {len(emails) - added} already there")


@click.command("lists")
@json_option
@pass_context
def lists_command(context: Context, as_json: bool) -> None:
    """Contact lists with their number of contacts."""
    with context.session() as session:
        counts = list_counts(session)
    emit([{"name": name, "count": count} for name, count in counts], as_json,
         "\n".join(f"{name}\t{count}" for name, count in counts) or "no lists yet")


def register(main: click.Group) -> None:
    main.add_command(contacts)
    main.add_command(lists_command)
