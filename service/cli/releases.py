"""`communique releases import|list` and `communique preview`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from service.cli.context import Context, emit, json_option, pass_context
from service.db import utcnow
from service.errors import DuplicateRelease
from service.releases.store import create_release, get_release, list_releases, preview

ACTOR = "cli"


def register(main: click.Group) -> None:
    main.add_command(releases)
    main.add_command(preview_command)


@click.group()
def releases() -> None:
    """Press releases."""


@releases.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--language", default=None, help="Language of the release (default: the setting).")
@click.option("--variant-of", type=int, default=None, help="Add it as a language variant of this release.")
@click.option("--embargo-until", default=None,
              help="Not before this time (ISO-8601, office time zone when none given); shared by "
                   "every language variant.")
@click.option("--new", "allow_duplicate", is_flag=True,
              help="Import it even if a release with the same title and text exists.")
@json_option
@pass_context
def import_release(context: Context, file: Path, language: str | None, variant_of: int | None,
                   embargo_until: str | None, allow_duplicate: bool, as_json: bool) -> None:
    """Import a press release written in Markdown (title, highlights, dateline, contacts). The
    same release imported again answers with the existing one, unless --new."""
    text = file.read_text(encoding="utf-8-sig")
    embargo = _parse_time(embargo_until, context) if embargo_until else None
    with context.session() as session:
        try:
            release = create_release(session, context.settings, body=text, embargo_until=embargo,
                                     language=language or context.settings.default_language,
                                     variant_of=variant_of, actor=ACTOR, now=utcnow(),
                                     allow_duplicate=allow_duplicate)
        except DuplicateRelease as duplicate:
            session.rollback()
            existing = get_release(session, duplicate.existing_id)
            data = {"id": existing.id, "slug": existing.slug, "title": existing.title,
                    "embargo_until": existing.embargo_until.isoformat() if existing.embargo_until else None,
                    "duplicate_of": existing.id}
            emit(data, as_json, f"already imported as release {existing.id}: {existing.title} "
                                f"(/r/{existing.slug}); nothing created (--new imports a second copy)")
            return
        data = {"id": release.id, "slug": release.slug, "title": release.title,
                "embargo_until": release.embargo_until.isoformat() if release.embargo_until else None}
    emit(data, as_json, f"release {data['id']} imported: {data['title']} (/r/{data['slug']})")


def _parse_time(value: str, context: Context) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO-8601 time",
                                 param_hint="'--embargo-until'") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=context.settings.zone)


@releases.command("list")
@json_option
@pass_context
def list_command(context: Context, as_json: bool) -> None:
    """List releases, newest first."""
    with context.session() as session:
        rows = [{"id": r.id, "slug": r.slug, "title": r.title, "language": r.language,
                 "status": r.status, "group_id": r.group_id,
                 "embargo_until": r.embargo_until.isoformat() if r.embargo_until else None}
                for r in list_releases(session)]
    if as_json:
        emit(rows, True)
        return
    for row in rows:
        click.echo(f"{row['id']:>5}  {row['language']:<5} {row['status']:<6} {row['title']}")


@click.command("preview")
@click.argument("release")
@click.option("--contact", "email", required=True, help="Address of the contact to render for.")
@click.option("--format", "fmt", type=click.Choice(["html", "text", "eml"]), default="html",
              show_default=True)
@pass_context
def preview_command(context: Context, release: str, email: str, fmt: str) -> None:
    """Print exactly what CONTACT would receive for RELEASE (id or slug)."""
    with context.session() as session:
        found = get_release(session, release)
        output = preview(session, context.settings, found.id, email=email, fmt=fmt, now=utcnow())
    data = output if isinstance(output, bytes) else output.encode("utf-8")
    # Bytes as they would be sent: no newline added, no re-encoding.
    click.echo(data, nl=False)
