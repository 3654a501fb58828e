"""Release pages: list (state of each release, variants under it), create (or import a Markdown
file), edit with a live preview, the read-only page of a release that has started sending and its
"new version", attachments, the email preview (desktop and mobile width, text part, headers, raw
source, warnings) and the test send. Each view calls one function of `releases` / `blasts`."""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from service.accounts import users
from service.db import utcnow
from service.errors import DuplicateRelease, ValidationError
from service.http.context import current_settings, db_session
from service.http.inputs import optional_query_id
from service.models import Contact, Release
from service.releases.checks import check_message
from service.releases.markdown import HtmlTooComplex, markdown_to_html
from service.releases.states import blasts_of, list_release_groups
from service.rendering.prepare import release_html
from service.web.auth import current_user, login_required, role_required
from service.web.blueprint import bp, remember_form, render_form
from service.web.forms import (
    PRESS_CONTACT_KEYS,
    PRESS_CONTACT_ROWS,
    RELEASE_LANGUAGES,
    AttachmentForm,
    MarkdownImportForm,
    ReleaseForm,
    TestSendForm,
    VariantForm,
)
from service.web.i18n import _, current_zone, translate_reason

FIELDS = ("title", "kicker", "language", "dateline", "body", "about", "from_name", "reply_to")


def _releases() -> Any:
    from service.releases import store as releases

    return releases


STARTED = ("This release has started sending: it can no longer be changed, so that every "
           "recipient gets the same version. To change it, make a new version.")


def _release_fields(form: ReleaseForm) -> dict[str, Any]:
    """The form's values as `create_release` / `update_release` take them. Highlights and press
    contacts absent from the request (a client posting some fields only) are left as they are."""
    data: dict[str, Any] = {name: (form[name].data or None) for name in FIELDS}
    data["title"] = form.title.data
    data["body"] = form.body.data or ""
    embargo = form.embargo_until.data
    data["embargo_until"] = embargo.replace(tzinfo=current_zone()) if embargo else None
    if "highlights" in request.form:
        data["highlights"] = form.highlight_lines()
    if any(key.startswith("press_contacts-") for key in request.form):
        data["press_contacts"] = form.contact_rows()
    return data


def _release_form(release: Release | None = None, *, from_request: bool = False,
                  **defaults: Any) -> ReleaseForm:
    """The editor filled from the stored release (and, on a POST, from the request over it), with
    two empty press contact rows to fill."""
    data: dict[str, Any] = dict(defaults)
    if release is not None:
        data.update({name: getattr(release, name) for name in FIELDS})
        data["highlights"] = "\n".join(release.highlights or [])
        data["press_contacts"] = [{key: entry.get(key) for key in PRESS_CONTACT_KEYS}
                                  for entry in release.press_contacts or []]
        if release.embargo_until:
            data["embargo_until"] = release.embargo_until.astimezone(current_zone()).replace(tzinfo=None)
    form = ReleaseForm(data=data) if from_request else ReleaseForm(formdata=None, data=data)
    wanted = min(PRESS_CONTACT_ROWS, max(3, len(form.contact_rows()) + 2))
    while len(form.press_contacts) < wanted:
        form.press_contacts.append_entry()
    return form


@bp.route("/releases")
@login_required
def releases_index() -> ResponseReturnValue:
    return render_template("releases/index.html", groups=list_release_groups(db_session()))


@bp.route("/releases/new", methods=["GET", "POST"])
@role_required(users.can_edit)
def release_new() -> ResponseReturnValue:
    form = _release_form(from_request=True, language=request.args.get("language") or "fr")
    import_form = MarkdownImportForm(prefix="md")
    if form.validate_on_submit():
        remember_form("releases/new.html", form, import_form=import_form)
        user = current_user()
        assert user is not None
        release = _releases().create_release(db_session(), current_settings(), body_format="markdown",
                                             **_release_fields(form), actor=user.email, now=utcnow())
        db_session().commit()
        flash(_("Release saved."), "info")
        return redirect(url_for("web.release_edit", release_id=release.id), code=303)
    return render_form("releases/new.html", form, import_form=import_form)


@bp.route("/releases/import", methods=["POST"])
@role_required(users.can_edit)
def release_import() -> ResponseReturnValue:
    form = _release_form(from_request=True)
    import_form = MarkdownImportForm(prefix="md")
    if not import_form.validate_on_submit():
        return render_form("releases/new.html", form, import_form=import_form), 400
    remember_form("releases/new.html", form, import_form=import_form)
    user = current_user()
    assert user is not None
    text = import_form.file.data.read().decode("utf-8-sig", errors="replace")
    # Without a title, create_release parses the pasted release (title, kicker, dateline...).
    try:
        release = _releases().create_release(db_session(), current_settings(), body=text,
                                             body_format="markdown", language=import_form.language.data,
                                             actor=user.email, now=utcnow(),
                                             allow_duplicate=request.form.get("md-new") == "y")
    except DuplicateRelease as duplicate:
        db_session().rollback()
        existing = _releases().get_release(db_session(), duplicate.existing_id)
        flash(_("%(file)s was already imported as “%(title)s”: here it is. Nothing was created.",
                file=import_form.file.data.filename, title=existing.title), "info")
        return redirect(url_for("web.release_edit", release_id=existing.id), code=303)
    db_session().commit()
    flash(_("Release imported from %(file)s. Check it, then preview it.",
            file=import_form.file.data.filename), "info")
    return redirect(url_for("web.release_edit", release_id=release.id), code=303)


@bp.route("/releases/<id:release_id>", methods=["GET", "POST"])
@login_required
def release_edit(release_id: int) -> ResponseReturnValue:
    releases = _releases()
    release = releases.get_release(db_session(), release_id)
    posted = request.method == "POST"
    if posted:
        user = current_user()
        if user is None or not users.can_edit(user):
            return render_template("error.html", title=_("Not allowed"),
                                   message=_("Your role does not allow this action.")), 403
    if releases.has_started_blast(db_session(), release):
        # Opened before sending started: the changes are shown back, to keep as a new version.
        form = _release_form(release, from_request=True) if posted else None
        return render_template("releases/sent.html", form=form, **_sent_context(release)), \
            409 if posted else 200
    form = _release_form(release, from_request=posted)
    context = _edit_context(release)
    if posted and form.validate_on_submit():
        remember_form("releases/edit.html", form, **context)
        releases.update_release(db_session(), current_settings(), release_id,
                                **_release_fields(form), now=utcnow())
        db_session().commit()
        flash(_("Release saved."), "info")
        return redirect(url_for("web.release_edit", release_id=release_id), code=303)
    return render_form("releases/edit.html", form, **context)


def _sent_context(release: Release) -> dict[str, Any]:
    """The read-only page: the release as sent, its variants and its send history."""
    from service.delivery import blasts

    session = db_session()
    history = blasts_of(session, release)
    body_html, about_html = release_html(release)
    return {"release": release, "variants": _variants(release), "online_url": _online_url(release),
            "body_html": body_html, "about_html": about_html, "history": history,
            "counts": {b.id: blasts.blast_counts(session, b.id) for b in history},
            "started_message": _(STARTED)}


@bp.route("/releases/<id:release_id>/new-version", methods=["POST"])
@role_required(users.can_edit)
def release_new_version(release_id: int) -> ResponseReturnValue:
    """A copy of the release (and of its variants) to edit and send separately; the changes posted
    from a form opened before sending started, if any, go into the copy."""
    releases = _releases()
    release = releases.get_release(db_session(), release_id)
    user = current_user()
    assert user is not None
    form = _release_form(release, from_request=True) if "title" in request.form else None
    if form is not None and not form.validate_on_submit():
        return render_template("releases/sent.html", form=form, **_sent_context(release)), 400
    now = utcnow()
    copy = releases.copy_release(db_session(), current_settings(), release_id, actor=user.email, now=now)
    if form is not None:
        remember_form("releases/sent.html", form, **_sent_context(release))
        releases.update_release(db_session(), current_settings(), copy.id, **_release_fields(form),
                                now=now)
    db_session().commit()
    flash(_("New version created: a draft of its own, to edit and send separately."), "info")
    return redirect(url_for("web.release_edit", release_id=copy.id), code=303)


def _refuse_if_started(release: Release) -> ResponseReturnValue | None:
    if not _releases().has_started_blast(db_session(), release):
        return None
    flash(_(STARTED), "error")
    return redirect(url_for("web.release_edit", release_id=release.id), code=303)


def _show_errors(form: Any, error: ValidationError, default: str) -> None:
    """A domain refusal beside the field of this small form (the page holds several forms)."""
    db_session().rollback()
    for item in error.errors:
        name = item.field if item.field in form else default
        form[name].errors = [*form[name].errors, translate_reason(item.reason)]


def _saved_form(release: Release) -> ReleaseForm:
    """The editor filled from the stored release (not from the request: a variant or an
    attachment POST re-renders the edit page)."""
    return _release_form(release)


def _edit_context(release: Any, **forms: Any) -> dict[str, Any]:
    variant_form = forms.get("variant_form") or VariantForm(prefix="var", formdata=None)
    if not forms.get("variant_form"):
        taken = {v.language for v in _releases().variants_of(db_session(), release)}
        variant_form.language.data = next(
            (code for code, _label in RELEASE_LANGUAGES if code not in taken), "en")
    return {"release": release, "attachment_form": forms.get("attachment_form")
            or AttachmentForm(prefix="att"), "variant_form": variant_form,
            "variants": _variants(release), "online_url": _online_url(release)}


def _online_url(release: Any) -> str | None:
    from werkzeug.routing import BuildError

    for endpoint in ("public.show_release", "public.release"):
        try:
            return url_for(endpoint, slug=release.slug)
        except BuildError:
            continue
    return None


def _variants(release: Any) -> list[Any]:
    return [r for r in _releases().variants_of(db_session(), release) if r.id != release.id]


@bp.route("/releases/markdown-preview", methods=["POST"])
@login_required
def release_markdown_preview() -> ResponseReturnValue:
    """The live preview beside the editor: kicker, title, highlights, dateline and body, "about"
    and press contacts as the email shows them (sanitized). Takes the whole form, or a body."""
    form = ReleaseForm(meta={"csrf": False})
    try:
        if "title" not in request.form:
            return markdown_to_html(form.body.data or ""), 200, {"Content-Type": "text/html; charset=utf-8"}
        draft = Release(language=form.language.data or "fr", body_format="markdown",
                        body=form.body.data or "", dateline=(form.dateline.data or "").strip() or None,
                        about=(form.about.data or "").strip() or None)
        body_html, about_html = release_html(draft)
    except HtmlTooComplex as exc:
        return f"body: {exc}", 400, {"Content-Type": "text/plain; charset=utf-8"}
    return render_template("releases/_live_preview.html", form=form, body_html=body_html,
                           about_html=about_html, highlights=form.highlight_lines(),
                           contacts=form.contact_rows())


@bp.route("/releases/<id:release_id>/attachments", methods=["POST"])
@role_required(users.can_edit)
def release_attachment(release_id: int) -> ResponseReturnValue:
    releases = _releases()
    release = releases.get_release(db_session(), release_id)
    refused = _refuse_if_started(release)
    if refused is not None:
        return refused
    form = AttachmentForm(prefix="att")
    if not form.validate_on_submit():
        form.file.errors = [_("Choose a file to attach.")]
        return render_form("releases/edit.html", _saved_form(release),
                           **_edit_context(release, attachment_form=form)), 400
    upload = form.file.data
    try:
        releases.add_attachment(db_session(), current_settings(), release_id, filename=upload.filename,
                                content_type=upload.mimetype or "application/octet-stream",
                                data=upload.read(), now=utcnow())
    except ValidationError as exc:  # every reason is about the chosen file: show it beside it
        _show_errors(form, exc, "file")
        return render_form("releases/edit.html", _saved_form(release),
                           **_edit_context(release, attachment_form=form)), 400
    db_session().commit()
    flash(_("Attachment %(file)s added.", file=upload.filename), "info")
    return redirect(url_for("web.release_edit", release_id=release_id), code=303)


@bp.route("/releases/<id:release_id>/variants", methods=["POST"])
@role_required(users.can_edit)
def release_variant(release_id: int) -> ResponseReturnValue:
    """A language variant from a Markdown file or pasted text, in the release's group."""
    releases = _releases()
    release = releases.get_release(db_session(), release_id)
    refused = _refuse_if_started(release)
    if refused is not None:
        return refused
    form = VariantForm(prefix="var")
    page = ("releases/edit.html", _saved_form(release))
    if not form.validate_on_submit():
        return render_form(*page, **_edit_context(release, variant_form=form)), 400
    upload = form.file.data
    text = upload.read().decode("utf-8-sig", errors="replace") if upload else ""
    text = text.strip() or (form.body.data or "").strip()
    if not text:
        form.body.errors = [_("Choose a Markdown file or paste the text.")]
        return render_form(*page, **_edit_context(release, variant_form=form)), 400
    user = current_user()
    assert user is not None
    try:
        variant = releases.create_release(db_session(), current_settings(), body=text,
                                          body_format="markdown", language=form.language.data,
                                          variant_of=release.id, actor=user.email, now=utcnow())
    except ValidationError as exc:
        _show_errors(form, exc, "body")
        return render_form(*page, **_edit_context(release, variant_form=form)), 400
    db_session().commit()
    flash(_("Variant in %(code)s created. Check it, then preview it.",
            code=variant.language), "info")
    return redirect(url_for("web.release_edit", release_id=variant.id), code=303)


# ---- preview and test send --------------------------------------------------------

def _preview_target() -> tuple[str | None, int | None]:
    email = (request.values.get("email") or "").strip() or None
    contact_id = optional_query_id("contact_id")
    return email, contact_id


@bp.route("/releases/<id:release_id>/preview")
@login_required
def release_preview(release_id: int) -> ResponseReturnValue:
    releases = _releases()
    session = db_session()
    settings = current_settings()
    release = releases.get_release(session, release_id)
    email, contact_id = _preview_target()
    now = utcnow()
    rendered = releases.preview(session, settings, release_id, email=email, contact_id=contact_id,
                                fmt="eml", now=now)
    message = _as_rendered(rendered)
    warnings = releases.validate_release(session, settings, release_id)
    checks = check_message(message)
    contacts = list(session.scalars(select(Contact).order_by(Contact.last_name, Contact.id).limit(200)))
    form = TestSendForm(contact_id=str(contact_id or ""))
    return render_template("releases/preview.html", release=release, message=message,
                           warnings=warnings, checks=checks, contacts=contacts, email=email,
                           contact_id=contact_id,
                           form=form, raw=message.raw.decode("utf-8", "replace"))


def _as_rendered(result: Any) -> Any:
    """`preview(..., fmt="eml")` gives a RenderedMessage (or its raw bytes): normalise to one."""
    if hasattr(result, "raw"):
        return result
    import email
    import email.policy

    from service.rendering.prepare import RenderedMessage

    raw = result if isinstance(result, bytes) else str(result).encode()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    html = parsed.get_body(preferencelist=("html",))  # type: ignore[attr-defined]
    text = parsed.get_body(preferencelist=("plain",))  # type: ignore[attr-defined]
    return RenderedMessage(str(parsed.get("Subject", "")), html.get_content() if html else "",
                           text.get_content() if text else "",
                           {k: str(v) for k, v in parsed.items()}, str(parsed.get("Message-ID", "")),
                           raw)


@bp.route("/releases/<id:release_id>/test", methods=["POST"])
@login_required
def release_send_test(release_id: int) -> ResponseReturnValue:
    from service.delivery import blasts

    form = TestSendForm()
    back = url_for("web.release_preview", release_id=release_id,
                   contact_id=form.contact_id.data or None)
    if not form.validate_on_submit():
        flash(_("Type at least one address."), "error")
        return redirect(back, code=303)
    addresses = [a.strip() for a in form.addresses.data.replace(";", ",").split(",") if a.strip()]
    remember_form("error.html", None, title=_("Invalid input"))
    user = current_user()
    assert user is not None
    results = blasts.send_test(db_session(), current_settings(), release_id, addresses,
                               as_contact_id=optional_query_id("contact_id"),
                               now=utcnow(), actor=user.email, actor_role=user.role)
    db_session().commit()
    sent = [r["address"] for r in results if r["outcome"] != "suppressed"]
    skipped = [r["address"] for r in results if r["outcome"] == "suppressed"]
    if sent:
        flash(_("Test sent to %(addresses)s.", addresses=", ".join(sent)), "info")
    if skipped:
        flash(_("Not sent to %(addresses)s: on the do-not-contact list, unsubscribed or bounced.",
                addresses=", ".join(skipped)), "error")
    return redirect(back, code=303)
