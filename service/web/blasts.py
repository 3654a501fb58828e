"""Blast pages: the schedule form (live recipient count, confirmation step), the blast page
(live progress, per-recipient table, CSV export, pause/resume/cancel/approve/resend) and the
dashboard's blast lists. Each view calls one function of `blasts`."""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from typing import Any

from flask import Response, abort, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from service.accounts import users
from service.contacts import store as contacts
from service.db import utcnow
from service.http.context import current_settings, db_session
from service.http.inputs import MAX_PAGE, query_int
from service.inbound import listing as inbound
from service.models import BlastStatus, InboundKind, MediaType, MessageStatus, User
from service.web.auth import current_user, login_required
from service.web.blueprint import bp, remember_form, render_form
from service.web.forms import ScheduleForm, options
from service.web.i18n import _, current_zone, format_time, utc_offset

ACTIVE = (BlastStatus.scheduled, BlastStatus.running, BlastStatus.paused, BlastStatus.draft)
DONE = (BlastStatus.finished, BlastStatus.cancelled, BlastStatus.expired)
PAGE_SIZE = 100
REPLIES_SHOWN = 200


def dashboard_blasts() -> dict[str, Any]:
    now = utcnow()
    session = db_session()
    every = _blasts().list_blasts(session)
    active = [b for b in every if b.status in ACTIVE]
    finished = [b for b in every if b.status in DONE][:10]
    progress = {b.id: _blasts().blast_progress(session, b.id, now=now) for b in [*active, *finished]}
    return {"active": active, "finished": finished, "progress": progress,
            "reply_count": inbound.reply_count(session)}


def _blasts() -> Any:
    from service.delivery import blasts

    return blasts


def _user() -> User:
    user = current_user()
    assert user is not None
    return user


def _progress(blast_id: int) -> dict[str, Any]:
    """The blast's progress with its ETA already written in the user's time zone and language."""
    data: dict[str, Any] = _blasts().blast_progress(db_session(), blast_id, now=utcnow())
    eta = datetime.fromisoformat(data["eta"]) if data.get("eta") else None
    data["eta_label"] = format_time(eta) if eta else "—"
    data["status_label"] = _("status:" + str(data["status"]))
    return data


@bp.route("/blasts")
@login_required
def blasts_index() -> ResponseReturnValue:
    every = _blasts().list_blasts(db_session(), status=request.args.get("status") or None)
    return render_template("blasts/index.html", blasts=every, statuses=list(BlastStatus))


# ---- the schedule form ----------------------------------------------------------

def _audience_args(source: Any) -> tuple[list[str], dict[str, list[str]]]:
    lists = [name for name in source.getlist("lists") if name]
    filters: dict[str, list[str]] = {}
    for field, key in (("language", "languages"), ("country", "countries"),
                       ("media_type", "media_types"), ("tag", "tags")):
        values = [v.strip() for v in (source.get(field) or "").split(",") if v.strip()]
        if values:
            filters[key] = values
    return lists, filters


def _local(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=current_zone()) if value is not None else None


@bp.route("/audience-count")
@login_required
def audience_count() -> Response:
    """The live recipient count beside the schedule form: after dedupe, status and suppression."""
    lists, filters = _audience_args(request.args)
    if not lists:
        return jsonify(count=0, text=_("Choose at least one list."))
    count = _blasts().count_audience(db_session(), lists, filters)
    return jsonify(count=count, text=_("%(count)s recipients", count=count))


@bp.route("/releases/<id:release_id>/schedule", methods=["GET", "POST"])
@login_required
def blast_new(release_id: int) -> ResponseReturnValue:
    from service.releases import store as releases

    session = db_session()
    settings = current_settings()
    release = releases.get_release(session, release_id)
    form = ScheduleForm()
    if request.method == "GET":  # the box starts as the setting says
        form.track.data = settings.tracking_default
    form.lists.choices = options([(name, f"{name} ({count})")
                                  for name, count in contacts.list_counts(session)])
    form.media_type.choices = options([("", _("All")), *[(m.value, _("media:" + m.value))
                                                         for m in MediaType]])
    zone = current_zone()
    context = {"release": release, "zone": zone, "zone_name": str(zone.key),
               "offset": utc_offset(utcnow(), zone)}
    if not form.validate_on_submit():
        return render_form("blasts/new.html", form, **context)
    user = _user()
    now = utcnow()
    lists, filters = _audience_args(request.form)
    if form.send_now.data and form.send_at.data:
        form.send_at.errors = [_("Choose a date and time, or tick “Send now”, not both.")]
        return render_form("blasts/new.html", form, **context), 400
    send_at = None if form.send_now.data else _local(form.send_at.data)
    if not form.send_now.data and send_at is None:
        form.send_at.errors = [_("Choose a date and time, or tick “Send now”.")]
        return render_form("blasts/new.html", form, **context), 400
    start_before, stop_after = _local(form.start_before.data), _local(form.stop_after.data)
    remember_form("blasts/new.html", form, **context)
    _blasts().check_blast_times(send_at=send_at, start_before=start_before, stop_after=stop_after,
                                now=now, zone=zone)
    may_schedule = users.can_send(user, settings)
    include = bool(form.include_already_sent.data)
    if form.confirmed.data != "yes":
        audience = _blasts().describe_audience(session, release.id, lists, filters,
                                               include_already_sent=include)
        first = _blasts().preview_audience(session, lists, filters, limit=10, release_id=release.id,
                                           include_already_sent=include)
        return render_form("blasts/confirm.html", form, count=audience.count, audience=audience,
                           first=first, send_at=send_at, start_before=start_before,
                           stop_after=stop_after, lists=lists, may_schedule=may_schedule,
                           undo_seconds=settings.undo_seconds, **context)
    remember_form("blasts/new.html", form, **context)
    undo = send_at is None and may_schedule and settings.undo_seconds > 0
    if undo:  # "send now" from the web waits a little, with an Undo button
        send_at = now + timedelta(seconds=settings.undo_seconds)
    blast = _blasts().create_blast(session, settings, release_id=release.id, list_names=lists,
                                   filters=filters, send_at=send_at, start_before=start_before,
                                   stop_after=stop_after, actor=user.email, actor_role=user.role,
                                   now=now, schedule=may_schedule, include_already_sent=include,
                                   attach_pdf=bool(form.attach_pdf.data),
                                   track=bool(form.track.data))
    session.commit()
    if blast.status == BlastStatus.draft:
        flash(_("Blast saved. A sender must approve it before it is sent."), "info")
    elif blast.status == BlastStatus.running:
        flash(_("Sending has started."), "info")
    elif undo:
        flash(_("Sending starts in %(count)s seconds. You can still undo it.",
                count=settings.undo_seconds), "info")
    else:
        flash(_("Blast scheduled."), "info")
    return redirect(url_for("web.blast_show", blast_id=blast.id), code=303)


# ---- the blast page -------------------------------------------------------------

@bp.route("/blasts/<id:blast_id>")
@login_required
def blast_show(blast_id: int) -> ResponseReturnValue:
    session = db_session()
    blast = _blasts().get_blast(session, blast_id)
    now = utcnow()
    undo_left = 0
    if blast.status == BlastStatus.scheduled and blast.send_at is not None and blast.send_at > now:
        window = timedelta(seconds=current_settings().undo_seconds)
        if blast.send_at - window <= now:  # within a "send now" countdown
            undo_left = max(1, int((blast.send_at - now).total_seconds() + 0.999))
    status = request.args.get("status") or None
    page = query_int("page", 1, maximum=MAX_PAGE)
    rows = _blasts().list_deliveries(session, blast_id, status=status, offset=(page - 1) * PAGE_SIZE,
                                  limit=PAGE_SIZE + 1)
    replies = inbound.list_blast_replies(session, blast_id, limit=REPLIES_SHOWN)
    return render_template("blasts/show.html", blast=blast, rows=rows[:PAGE_SIZE],
                           has_more=len(rows) > PAGE_SIZE, page=page, status=status,
                           statuses=list(MessageStatus), undo_left=undo_left,
                           progress=_progress(blast_id),
                           replies=[r for r in replies if r.kind == InboundKind.reply],
                           auto_replies=[r for r in replies if r.kind == InboundKind.auto_reply],
                           came_back=inbound.recipient_events(
                               session, blast_id, [r.contact_id for r in rows[:PAGE_SIZE]]),
                           excerpt=inbound.excerpt)


@bp.route("/blasts/<id:blast_id>/progress.json")
@login_required
def blast_progress(blast_id: int) -> Response:
    return jsonify(_progress(blast_id))


@bp.route("/blasts/<id:blast_id>/deliveries.csv")
@login_required
def blast_export(blast_id: int) -> Response:
    out = io.StringIO()
    _blasts().export_deliveries_csv(db_session(), blast_id, out, status=request.args.get("status") or None)
    return Response(out.getvalue(), mimetype="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="blast-{blast_id}.csv"'})


# ---- the blast report ------------------------------------------------------------

def _report(blast_id: int) -> Any:
    from service.delivery.report import blast_report

    return blast_report(db_session(), blast_id)


@bp.route("/blasts/<id:blast_id>/report")
@login_required
def blast_report(blast_id: int) -> ResponseReturnValue:
    from service.delivery.report_charts import CHARTS

    report = _report(blast_id)
    sort = request.args.get("sort", "first_at")
    if sort in ("name", "outlet", "opens", "clicks", "first_at"):
        report.openers.sort(key=lambda opener: (opener[sort] is None, opener[sort] or ""),
                            reverse=sort in ("opens", "clicks"))
    return render_template("blasts/report.html", blast=_blasts().get_blast(db_session(), blast_id),
                           report=report, charts=CHARTS, sort=sort)


@bp.route("/blasts/<id:blast_id>/report/<any(deliveries, opens, outlets, media_types):chart>.svg")
@login_required
def blast_report_chart(blast_id: int, chart: str) -> Response:
    """A chart as an SVG image (no script: the page shows it with <img>, the CSP allows it)."""
    from service.delivery.report_charts import chart_svg
    from service.web.i18n import current_language

    svg = chart_svg(_report(blast_id), chart, current_language())
    return Response(svg, mimetype="image/svg+xml", headers={"Cache-Control": "private, max-age=60"})


@bp.route("/blasts/<id:blast_id>/report.csv")
@login_required
def blast_report_csv(blast_id: int) -> Response:
    from service.delivery.report import report_csv

    return Response(report_csv(_report(blast_id)), mimetype="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="blast-{blast_id}-report.csv"'})


@bp.route("/blasts/<id:blast_id>/report.pdf")
@login_required
def blast_report_pdf(blast_id: int) -> Response:
    from service.delivery.report_pdf import report_pdf
    from service.web.i18n import current_language

    return Response(report_pdf(_report(blast_id), current_language()), mimetype="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="blast-{blast_id}-report.pdf"'})


def _act(blast_id: int, action: str) -> ResponseReturnValue:
    user = _user()
    settings = current_settings()
    session = db_session()
    now = utcnow()
    if action == "approve":
        if not users.can_approve(user):
            abort(403)
        _blasts().approve_blast(session, blast_id, actor=user.email, now=now, settings=settings)
        message = _("Blast approved and scheduled.")
    else:
        if not users.can_send(user, settings):
            abort(403)
        if action == "pause":
            _blasts().pause_blast(session, blast_id, actor=user.email, now=now)
            message = _("Blast paused.")
        elif action == "resume":
            _blasts().resume_blast(session, blast_id, actor=user.email, now=now)
            message = _("Blast resumed.")
        elif action == "schedule":
            blast = _blasts().get_blast(session, blast_id)
            send_at = blast.send_at if blast.send_at and blast.send_at > now else now
            _blasts().schedule_blast(session, blast_id, send_at=send_at, actor=user.email, now=now,
                                  settings=settings)
            message = _("Blast scheduled.")
        elif action == "cancel":
            _blasts().cancel_blast(session, blast_id, actor=user.email, now=now)
            message = _("Blast cancelled.")
        else:
            new = _blasts().resend_to_unsent(session, settings, blast_id, actor=user.email, now=now)
            session.commit()
            flash(_("A new blast sends the release to those who did not get it."), "info")
            return redirect(url_for("web.blast_show", blast_id=new.id), code=303)
    session.commit()
    flash(message, "info")
    return redirect(url_for("web.blast_show", blast_id=blast_id), code=303)


@bp.route("/blasts/<id:blast_id>/undo", methods=["POST"])
@login_required
def blast_undo(blast_id: int) -> ResponseReturnValue:
    """Undo a web "send now" during its countdown: back to draft, nothing sent."""
    user = _user()
    if not users.can_send(user, current_settings()):
        abort(403)
    _blasts().undo_send(db_session(), blast_id, actor=user.email, now=utcnow())
    db_session().commit()
    flash(_("Undone: nothing was sent. The blast is a draft again."), "info")
    return redirect(url_for("web.blast_show", blast_id=blast_id), code=303)


@bp.route("/blasts/<id:blast_id>/<any(pause, resume, cancel, approve, resend, schedule):action>",
          methods=["POST"])
@login_required
def blast_action(blast_id: int, action: str) -> ResponseReturnValue:
    return _act(blast_id, action)


@bp.route("/")
@login_required
def dashboard() -> str:
    return render_template("dashboard.html", **dashboard_blasts())


def abort_unless(condition: bool) -> None:
    if not condition:
        abort(403)
