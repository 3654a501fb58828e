"""Blueprint "public": what a journalist opens without an account — the web version of a
release (/r/<slug>, hidden until its embargo lifts) and the unsubscribe pages (/u/<token>,
also the RFC 8058 one-click POST target named in List-Unsubscribe)."""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, abort, current_app, render_template, request
from jinja2 import ChoiceLoader, FileSystemLoader, PrefixLoader
from werkzeug.wrappers import Response

from service.db import utcnow
from service.errors import NotFound
from service.http.context import current_settings, db_session
from service.models import Release
from service.releases.store import get_release, has_started_blast
from service.rendering import pdf
from service.rendering.email_templates import TEMPLATES as EMAIL_TEMPLATES
from service.rendering.prepare import release_context
from service.rendering.unsubscribe import contact_for_token, token_fingerprint, unsubscribe_by_token
from service.rendering.words import language_of

log = logging.getLogger(__name__)

bp = Blueprint("public", __name__)

PAGE_TEXT = {
    "fr": {"title": "Désabonnement", "question": "Ne plus recevoir nos communiqués à l'adresse",
           "button": "Me désabonner", "done": "C'est fait : vous ne recevrez plus nos communiqués."},
    "en": {"title": "Unsubscribe", "question": "Stop receiving our press releases at",
           "button": "Unsubscribe me", "done": "Done: you will not receive our press releases again."},
    "es": {"title": "Darse de baja", "question": "Dejar de recibir nuestros comunicados en",
           "button": "Darme de baja", "done": "Hecho: no recibirá más nuestros comunicados."},
    "ar": {"title": "إلغاء الاشتراك", "question": "التوقف عن تلقي بلاغاتنا على العنوان",
           "button": "إلغاء اشتراكي", "done": "تم: لن تتلقى بلاغاتنا بعد الآن."},
}


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    # The web version shares blocks with the email templates: they are visible as "email/...".
    app.jinja_loader = ChoiceLoader([app.jinja_loader,  # type: ignore[list-item]
                                     PrefixLoader({"email": FileSystemLoader(EMAIL_TEMPLATES)})])
    try:  # the one-click POST comes from a mail provider's server: it cannot carry a CSRF token
        from service.web.forms import csrf
    except ImportError:  # pragma: no cover - CSRF not installed in this build
        return
    csrf.exempt(unsubscribe)


def _public_release(slug: str) -> Release:
    """The release the public may see, else 404: sending started and the embargo lifted."""
    session = db_session()
    try:
        release = get_release(session, slug)
    except NotFound:
        abort(404)
    if release.slug != slug or (release.embargo_until is not None and utcnow() < release.embargo_until):
        abort(404)
    if not has_started_blast(session, release):  # a draft, or only blasts that never started
        abort(404)
    return release


@bp.get("/r/<slug>")
def show_release(slug: str) -> str:
    release = _public_release(slug)
    context = release_context(release, current_settings(), now=utcnow())
    return render_template("public/release.html", language=context["release"]["language"], **context)


@bp.get("/r/<slug>.pdf")
def release_pdf(slug: str) -> Response:
    """The web copy laid out for print, under the same rule; rendered once per version."""
    release = _public_release(slug)
    settings, now = current_settings(), utcnow()
    data = pdf.release_pdf(release, settings, release_context(release, settings, now=now), now=now)
    response = Response(data, mimetype=pdf.CONTENT_TYPE)
    response.headers["Content-Disposition"] = f'inline; filename="{pdf.pdf_filename(release)}"'
    return response


def _page_language(contact_language: str | None) -> str:
    language = language_of(contact_language) or current_settings().default_language
    return language if language in PAGE_TEXT else "fr"


@bp.route("/u/<token>", methods=["GET", "POST"])
def unsubscribe(token: str) -> str | Response | tuple[str, int]:
    """GET asks; POST unsubscribes at once. A POST whose body is `List-Unsubscribe=One-Click`
    (RFC 8058) needs no CSRF token; any other POST is the confirmation form and must carry one."""
    session = db_session()
    settings = current_settings()
    try:
        contact = contact_for_token(session, settings, token)
    except NotFound:
        abort(404)
    language = _page_language(contact.language if contact is not None else None)
    text = PAGE_TEXT[language]
    if request.method == "GET":
        return render_template("public/unsubscribe.html", language=language, text=text, token=token,
                               address=contact.email if contact is not None else None, done=False)
    one_click = request.form.get("List-Unsubscribe") == "One-Click"
    if not one_click:
        _protect_form()
    unsubscribe_by_token(session, settings, token, now=utcnow(),
                         source="one-click" if one_click else "link")
    session.commit()
    log.info("unsubscribe %s: done (%s)", token_fingerprint(token), "one-click" if one_click else "page")
    if one_click:
        return Response(text["done"], mimetype="text/plain")
    return render_template("public/unsubscribe.html", language=language, text=text, token=token,
                           address=None, done=True)


def _protect_form() -> None:
    csrf = current_app.extensions.get("csrf")
    if csrf is not None and current_app.config.get("WTF_CSRF_ENABLED", True):
        csrf.protect()


