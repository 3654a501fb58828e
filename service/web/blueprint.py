"""The "web" blueprint itself and what its pages share: form rendering that shows domain errors
next to the fields, one error handler per domain error, and the local-path check for redirects."""


from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    flash,
    g,
    redirect,
    render_template,
    request,
)
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response

from service.errors import Conflict, NotFound, ValidationError
from service.http.context import current_settings, db_session
from service.web.i18n import _, translate_reason

log = logging.getLogger(__name__)

bp = Blueprint("web", __name__)

__all__ = ["bp", "is_local_path", "remember_form", "render_form"]


# ---- one error handler for the blueprint ---------------------------------------

def render_form(template: str, form: FlaskForm | None = None, **context: Any) -> str:
    """Render a form page, remembering it so a ValidationError from the domain call that follows
    is shown next to the fields (see `_validation_error`)."""
    g.form_page = (template, form, context)
    return render_template(template, form=form, **context)


def remember_form(template: str, form: FlaskForm | None = None, **context: Any) -> None:
    g.form_page = (template, form, context)


@bp.errorhandler(ValidationError)
def _validation_error(error: ValidationError) -> tuple[str, int]:
    db_session().rollback()
    general: list[str] = []
    page = g.get("form_page")
    form = page[1] if page else None
    for item in error.errors:
        reason = translate_reason(item.reason)
        if item.row is not None:
            reason = _("row %(row)s", row=item.row) + (f", {item.field}" if item.field else "") \
                + f": {reason}"
            general.append(reason)
        elif form is not None and item.field and item.field in form:
            form[item.field].errors = [*form[item.field].errors, reason]  # type: ignore[list-item]
        else:
            general.append(f"{item.field}: {reason}" if item.field else reason)
    if page is None:
        return render_template("error.html", title=_("Invalid input"), messages=general), 400
    template, form, context = page
    return render_template(template, form=form, errors=general, **context), 400


@bp.errorhandler(NotFound)
def _not_found(error: NotFound) -> tuple[str, int]:
    db_session().rollback()
    return render_template("error.html", title=_("Not found"),
                           message=_("This page does not exist or was deleted.")), 404


@bp.errorhandler(Conflict)
def _conflict(error: Conflict) -> Response | tuple[str, int]:
    db_session().rollback()
    flash(translate_reason(str(error)), "error")
    target = request.referrer
    if target and _is_local(target):
        return redirect(target, code=303)
    return render_template("error.html", title=_("Not possible now"), message=str(error)), 409


@bp.errorhandler(413)
def _too_large(_error: Exception) -> tuple[str, int]:
    limit = current_settings().upload_max_bytes
    size = _("%(count)s MB", count=f"{limit / 1048576:g}") if limit >= 1048576 \
        else _("%(count)s KB", count=f"{limit / 1024:g}")
    return render_template("error.html", title=_("File too large"),
                           message=_("The file is larger than %(size)s. Choose a smaller file.",
                                     size=size)), 413


@bp.errorhandler(403)
def _forbidden(_error: Exception) -> tuple[str, int]:
    return render_template("error.html", title=_("Not allowed"),
                           message=_("Your role does not allow this action.")), 403


def _is_local(target: str) -> bool:
    return is_local_path(target) or urlsplit(target).netloc == request.host


def is_local_path(target: str) -> bool:
    """A path on this site: browsers drop tabs and newlines and read a backslash as a slash, so
    `/<tab>/evil.example` or `/\\evil.example` would lead off-site; any such character is refused."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target \
            or any(ord(c) <= 0x20 or c == "\x7f" for c in target):
        return False
    parts = urlsplit(target)
    return parts.scheme == "" and parts.netloc == ""
