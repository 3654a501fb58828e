"""`communique blasts create|list|show|pause|resume|cancel|deliveries`."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import click

from service.cli.context import Context, emit, json_option, pass_context
from service.db import utcnow
from service.delivery.blasts import (
    blast_progress,
    cancel_blast,
    create_blast,
    export_deliveries_csv,
    list_blasts,
    list_deliveries,
    pause_blast,
    resume_blast,
)
from service.errors import FieldError, ValidationError

ACTOR = "cli"


def register(main: click.Group) -> None:
    main.add_command(blasts)


def _parse_time(value: str | None, context: Context, field: str) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(FieldError(field, f"{value!r} is not an ISO-8601 time")) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=context.settings.zone)


@click.group()
def blasts() -> None:
    """Send a release to contact lists, now or at a set time."""


@blasts.command("create")
@click.option("--release", "release_id", type=int, required=True, help="Release id.")
@click.option("--list", "list_names", multiple=True, required=True, help="Contact list name (repeatable).")
@click.option("--at", "send_at", help="Send time, ISO-8601 (office time zone when none given); default now.")
@click.option("--start-before", help="Do not start after this time (ISO-8601).")
@click.option("--stop-after", help="Stop sending after this time (ISO-8601).")
@click.option("--language", multiple=True, help="Only contacts in this language (repeatable).")
@click.option("--country", multiple=True, help="Only contacts in this country, ISO code (repeatable).")
@click.option("--media-type", multiple=True, help="Only this media type (repeatable).")
@click.option("--tag", multiple=True, help="Only contacts with any of these tags (repeatable).")
@click.option("--include-already-sent", is_flag=True,
              help="Also send to contacts who already received this release (left out by default).")
@click.option("--attach-pdf", is_flag=True,
              help="Attach the release as a PDF (in each recipient's language) to every message.")
@click.option("--track/--no-track", default=None,
              help="Record opens and clicks (said in the footer); default COMMUNIQUE_TRACKING_DEFAULT.")
@json_option
@pass_context
def create(context: Context, release_id: int, list_names: tuple[str, ...], send_at: str | None,
           start_before: str | None, stop_after: str | None, language: tuple[str, ...],
           country: tuple[str, ...], media_type: tuple[str, ...], tag: tuple[str, ...],
           include_already_sent: bool, attach_pdf: bool, track: bool | None, as_json: bool) -> None:
    """Create a blast; without --at it starts now. Contacts who already received the release
    (in any language) are left out unless --include-already-sent."""
    filters = {k: list(v) for k, v in (("languages", language), ("countries", country),
                                       ("media_types", media_type), ("tags", tag)) if v}
    with context.session() as session:
        try:
            blast = create_blast(session, context.settings, release_id=release_id, list_names=list_names,
                                 filters=filters, send_at=_parse_time(send_at, context, "at"),
                                 start_before=_parse_time(start_before, context, "start_before"),
                                 stop_after=_parse_time(stop_after, context, "stop_after"),
                                 actor=ACTOR, now=utcnow(), include_already_sent=include_already_sent,
                                 attach_pdf=attach_pdf, track=track)
        except ValidationError as exc:
            past = [e for e in exc.errors if e.field == "send_at"]
            if past:  # a usage error: exit status 2, like any bad option
                raise click.BadParameter(past[0].reason, param_hint="'--at'") from exc
            raise
        data = {"id": blast.id, "status": str(blast.status), "recipients": blast.recipient_count,
                "already_sent": blast.already_sent_count, "attach_pdf": blast.attach_pdf,
                "track": blast.track}
        when = blast.send_at.isoformat() if blast.send_at else "now"
    left_out = ""
    if data["already_sent"]:
        left_out = (f"; {data['already_sent']} already received this release: "
                    + ("included again" if include_already_sent
                       else "left out (--include-already-sent to include them)"))
    emit(data, as_json, f"blast {data['id']}: {data['status']}, {data['recipients']} recipients, "
                        f"send at {when}{left_out}")


@blasts.command("list")
@json_option
@pass_context
def list_(context: Context, as_json: bool) -> None:
    """List blasts, newest first."""
    with context.session() as session:
        rows = [{"id": b.id, "release_id": b.release_id, "status": str(b.status),
                 "send_at": b.send_at.isoformat() if b.send_at else None,
                 "recipients": b.recipient_count} for b in list_blasts(session)]
    lines = [f"{r['id']:>5}  {r['status']:<10} release {r['release_id']:<5} {r['recipients']:>7} "
             f"recipients  {r['send_at'] or ''}" for r in rows]
    emit(rows, as_json, "\n".join(lines) or "no blasts")


@blasts.command("show")
@click.argument("blast_id", type=int)
@json_option
@pass_context
def show(context: Context, blast_id: int, as_json: bool) -> None:
    """Progress of a blast: counts per delivery status, rate and ETA."""
    with context.session() as session:
        data = blast_progress(session, blast_id, now=utcnow())
    counts = ", ".join(f"{k} {v}" for k, v in data["counts"].items())
    text = f"blast {blast_id}: {data['status']}; {counts}; {data['rate']} msgs/s; eta {data['eta'] or '-'}"
    came_back = ", ".join(f"{k} {v}" for k, v in data["inbound"].items() if v)
    if came_back:
        text += f"\ncame back: {came_back}"
    if data.get("paused_reason"):
        text += f"\npaused: {data['paused_reason']}"
    emit(data, as_json, text)


@blasts.command("report")
@click.argument("blast_id", type=int)
@json_option
@pass_context
def report(context: Context, blast_id: int, as_json: bool) -> None:
    """The blast report: sent, delivered, bounced, opened (people; machines apart), clicked."""
    from service.delivery.report import blast_report

    with context.session() as session:
        data = blast_report(session, blast_id).as_dict()
    totals, rates = data["totals"], data["totals"]["rates"]

    def pct(rate: float | None) -> str:
        return "-" if rate is None else f"{rate:.1%}"

    lines = [f"blast {blast_id}: {data['release_title']}",
             f"sent {totals['sent']}, delivered {totals['delivered']} ({pct(rates['delivered'])}), "
             f"bounced {totals['bounced']}, failed {totals['failed']}",
             f"opened {totals['opened']} ({pct(rates['opened'])}), by machines only "
             f"{totals['opened_by_machines']}, clicked {totals['clicked']} ({pct(rates['clicked'])})"
             + ("" if data["track"] else " (not tracked)")]
    lines += [f"  {link['people']:>5} {link['url']}" for link in data["top_links"]]
    emit(data, as_json, "\n".join(lines))


def _state_command(name: str, action: Any, help_text: str) -> None:
    @blasts.command(name, help=help_text)
    @click.argument("blast_id", type=int)
    @json_option
    @pass_context
    def command(context: Context, blast_id: int, as_json: bool) -> None:
        with context.session() as session:
            blast = action(session, blast_id, actor=ACTOR, now=utcnow())
            data = {"id": blast.id, "status": str(blast.status)}
        emit(data, as_json, f"blast {blast_id}: {data['status']}")


_state_command("pause", pause_blast, "Pause a running blast (resume continues where it stopped).")
_state_command("resume", resume_blast, "Resume a paused blast.")
_state_command("cancel", cancel_blast, "Cancel a blast; nothing more is sent.")


@blasts.command("deliveries")
@click.argument("blast_id", type=int)
@click.option("--status", help="Only rows in this status (queued, sending, sent, deferred, failed, bounced).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout.")
@click.option("--limit", type=int, default=100, show_default=True, help="Rows shown without --csv.")
@json_option
@pass_context
def deliveries(context: Context, blast_id: int, status: str | None, as_csv: bool, limit: int,
               as_json: bool) -> None:
    """Who got it: the ledger rows of a blast."""
    with context.session() as session:
        if as_csv:
            export_deliveries_csv(session, blast_id, sys.stdout, status=status)
            return
        rows = [{"email": r.email, "status": str(r.status), "attempts": r.attempts,
                 "smtp_code": r.last_smtp_code, "smtp_reply": r.last_smtp_reply,
                 "sent_at": r.sent_at.isoformat() if r.sent_at else None}
                for r in list_deliveries(session, blast_id, status=status, limit=limit)]
    lines = [f"{r['status']:<9} {r['attempts']:>2}  {r['email']}  {r['smtp_code'] or ''} "
             f"{r['smtp_reply'] or ''}" for r in rows]
    emit(rows, as_json, "\n".join(lines) or "no deliveries")
