"""Contacts pages: search and filter, create and edit, CSV import with its report, export,
suppression list. Each view calls one function of `contacts`."""

from __future__ import annotations

import io
from typing import Any

from flask import Response, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import BadRequest

from service.accounts import users
from service.contacts import importing
from service.contacts import store as contacts
from service.db import utcnow
from service.http.context import db_session
from service.http.inputs import MAX_PAGE, query_int
from service.inbound.listing import excerpt, list_contact_inbound
from service.models import ContactStatus, MediaType
from service.web.auth import current_user, login_required, role_required
from service.web.blueprint import bp, remember_form, render_form
from service.web.forms import CONTACT_FORM_FIELDS, ContactForm, ImportForm, SuppressForm, options
from service.web.i18n import _

PAGE_SIZE = 50
FILTERS = ("query", "list_name", "language", "country", "media_type", "tag", "status")


def _filters() -> dict[str, str | None]:
    filters = {name: (request.args.get(name) or "").strip() or None for name in FILTERS}
    # A list name ends up in the export's Content-Disposition header: no line breaks, no controls.
    if any(value and any(ord(c) < 0x20 or c == "\x7f" for c in value) for value in filters.values()):
        raise BadRequest("a filter contains a line break or a control character")
    return filters


def _media_choices() -> list[Any]:
    return options([("", "—"), *[(m.value, _("media:" + m.value)) for m in MediaType]])


@bp.route("/contacts")
@login_required
def contacts_index() -> ResponseReturnValue:
    filters = _filters()
    page = query_int("page", 1, maximum=MAX_PAGE)
    rows, total = contacts.search_contacts(db_session(), **filters, offset=(page - 1) * PAGE_SIZE,
                                           limit=PAGE_SIZE)
    return render_template("contacts/index.html", rows=rows, total=total, page=page,
                           pages=max(1, -(-total // PAGE_SIZE)), filters=filters,
                           lists=contacts.list_counts(db_session()),
                           media_types=list(MediaType), statuses=list(ContactStatus))


def _contact_data(form: ContactForm) -> dict[str, Any]:
    return {name: form[name].data for name in CONTACT_FORM_FIELDS}


@bp.route("/contacts/new", methods=["GET", "POST"])
@role_required(users.can_edit)
def contact_new() -> ResponseReturnValue:
    form = ContactForm()
    form.media_type.choices = _media_choices()
    if form.validate_on_submit():
        remember_form("contacts/edit.html", form, contact=None)
        contact = contacts.create_contact(db_session(), _contact_data(form), now=utcnow())
        db_session().commit()
        flash(_("Contact saved."), "info")
        return redirect(url_for("web.contact_edit", contact_id=contact.id), code=303)
    return render_form("contacts/edit.html", form, contact=None)


@bp.route("/contacts/<id:contact_id>", methods=["GET", "POST"])
@login_required
def contact_edit(contact_id: int) -> ResponseReturnValue:
    contact = contacts.get_contact(db_session(), contact_id)
    came_back = list_contact_inbound(db_session(), contact_id)
    form = ContactForm(obj=contact)
    if request.method == "GET":  # the column stores ",a,b,"; people read "a, b"
        form.tags.data = ", ".join(contact.tag_list)
    form.media_type.choices = _media_choices()
    if request.method == "POST":
        user = current_user()
        if user is None or not users.can_edit(user):
            return render_template("error.html", title=_("Not allowed"),
                                   message=_("Your role does not allow this action.")), 403
        if form.validate_on_submit():
            remember_form("contacts/edit.html", form, contact=contact, came_back=came_back,
                          excerpt=excerpt)
            contacts.update_contact(db_session(), contact_id, _contact_data(form), now=utcnow())
            db_session().commit()
            flash(_("Contact saved."), "info")
            return redirect(url_for("web.contact_edit", contact_id=contact_id), code=303)
    return render_form("contacts/edit.html", form, contact=contact, came_back=came_back,
                       excerpt=excerpt)


@bp.route("/contacts/<id:contact_id>/delete", methods=["POST"])
@role_required(users.can_edit)
def contact_delete(contact_id: int) -> ResponseReturnValue:
    contacts.delete_contact(db_session(), contact_id)
    db_session().commit()
    flash(_("Contact deleted."), "info")
    return redirect(url_for("web.contacts_index"), code=303)


@bp.route("/contacts/import", methods=["GET", "POST"])
@role_required(users.can_edit)
def contacts_import() -> ResponseReturnValue:
    form = ImportForm()
    if form.validate_on_submit():
        remember_form("contacts/import.html", form, report=None)
        data = form.file.data.read()
        report = importing.import_contacts(
            db_session(), data, list_name=form.list_name.data.strip(), dry_run=form.dry_run.data,
            now=utcnow(), source=f"web import {form.file.data.filename} by {current_user().email}")  # type: ignore[union-attr]
        db_session().commit()
        return render_template("contacts/import.html", form=form, report=report.as_dict(),
                               filename=form.file.data.filename, dry_run=form.dry_run.data)
    return render_form("contacts/import.html", form, report=None)


@bp.route("/contacts/export.csv")
@login_required
def contacts_export() -> Response:
    filters = {k: v for k, v in _filters().items() if v is not None}
    out = io.StringIO()
    contacts.export_contacts(db_session(), out, **filters)
    name = (filters.get("list_name") or "contacts").replace('"', "")
    return Response(out.getvalue(), mimetype="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


@bp.route("/suppressions", methods=["GET", "POST"])
@login_required
def suppressions() -> ResponseReturnValue:
    form = SuppressForm()
    entries = contacts.list_suppressions(db_session())
    if form.validate_on_submit():
        user = current_user()
        assert user is not None
        if not users.can_edit(user):
            return render_template("error.html", title=_("Not allowed"),
                                   message=_("Your role does not allow this action.")), 403
        remember_form("contacts/suppressions.html", form, entries=entries)
        emails = [line.strip() for line in form.emails.data.replace(",", "\n").splitlines()
                  if line.strip()]
        added = contacts.suppress(db_session(), emails, reason=form.reason.data or None,
                                  actor=user.email, now=utcnow())
        db_session().commit()
        flash(_("%(count)s addresses added to the suppression list.", count=added), "info")
        return redirect(url_for("web.suppressions"), code=303)
    return render_form("contacts/suppressions.html", form, entries=entries)
