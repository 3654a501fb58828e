"""Blueprint "public": what a journalist opens without an account — the web version of a
release (/r/<slug>, hidden until its embargo lifts) and the unsubscribe pages (/u/<token>,
also the RFC 8058 one-click POST target named in List-Unsubscribe)."""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, abort, current_app, redirect, render_template, request
from jinja2 import ChoiceLoader, FileSystemLoader, PrefixLoader
from werkzeug.wrappers import Response

from service.contacts.store import set_do_not_track
from service.db import utcnow
from service.delivery.engagement import Fetch, record_click, record_open
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
           "button": "Me désabonner", "done": "C'est fait : vous ne recevrez plus nos communiqués.",
           "track_question": "Ou continuer à les recevoir sans mesure d'ouverture ni de clics :",
           "track_button": "Ne plus me suivre",
           "track_done": "C'est fait : nous ne mesurerons plus l'ouverture de nos messages ni vos clics."},
    "en": {"title": "Unsubscribe", "question": "Stop receiving our press releases at",
           "button": "Unsubscribe me", "done": "Done: you will not receive our press releases again.",
           "track_question": "Or keep receiving them without open and click tracking:",
           "track_button": "Do not track me",
           "track_done": "Done: we will no longer record when you open our messages or click."},
    "es": {"title": "Darse de baja", "question": "Dejar de recibir nuestros comunicados en",
           "button": "Darme de baja", "done": "Hecho: no recibirá más nuestros comunicados.",
           "track_question": "O seguir recibiéndolos sin medir aperturas ni clics:",
           "track_button": "No hacer seguimiento",
           "track_done": "Hecho: ya no registraremos sus aperturas ni sus clics."},
    "ar": {"title": "إلغاء الاشتراك", "question": "التوقف عن تلقي بلاغاتنا على العنوان",
           "button": "إلغاء اشتراكي", "done": "تم: لن تتلقى بلاغاتنا بعد الآن.",
           "track_question": "أو مواصلة تلقيها دون تتبع الفتح والنقرات:",
           "track_button": "عدم تتبعي",
           "track_done": "تم: لن نسجل بعد الآن فتحك لرسائلنا أو نقراتك."},
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
    csrf.exempt(open_pixel)
    csrf.exempt(click)


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




@bp.post("/u/<token>/do-not-track")
def do_not_track(token: str) -> str:
    """Keep receiving releases, but no pixel, no tracked link, nothing recorded."""
    session = db_session()
    try:
        contact = contact_for_token(session, current_settings(), token)
    except NotFound:
        abort(404)
    if contact is None:
        abort(404)
    _protect_form()
    set_do_not_track(session, contact.id, now=utcnow())
    session.commit()
    language = _page_language(contact.language)
    text = {**PAGE_TEXT[language], "done": PAGE_TEXT[language]["track_done"]}
    return render_template("public/unsubscribe.html", language=language, text=text, token=token,
                           address=None, done=True)


# A 1x1 transparent GIF (43 bytes).
PIXEL = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00"
         b"\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def _fetch() -> Fetch:
    return Fetch(request.headers.get("User-Agent", ""), request.remote_addr, utcnow())


@bp.get("/o/<token>.gif")
def open_pixel(token: str) -> Response:
    """The open pixel of a tracked message; 404 for a token we did not sign."""
    session = db_session()
    try:
        record_open(session, current_settings(), token, _fetch())
    except NotFound:
        abort(404)
    session.commit()
    response = Response(PIXEL, mimetype="image/gif")
    response.headers["Cache-Control"] = "no-store, private"
    return response


@bp.get("/c/<token>/<link>")
def click(token: str, link: str) -> Response:
    """A tracked link: to the exact URL of the release it was made for, else 404 (never an
    open redirect). The release's own web copy keeps its embargo rule at /r/<slug>."""
    session = db_session()
    try:
        url = record_click(session, current_settings(), token, link, _fetch())
    except NotFound:
        abort(404)
    session.commit()
    response = redirect(url, 302)
    response.headers["Cache-Control"] = "no-store, private"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
