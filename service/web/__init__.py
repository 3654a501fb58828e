"""Blueprint "web": the press office's HTML pages. Thin: parse the form, call one domain
function, render. Here: the blueprint, its set-up and its one error handler per error; the pages
of each area live beside it (accounts, contacts, releases, blasts, outbox) on the same blueprint;
public.py is the journalists' blueprint (web copy, unsubscribe)."""

from __future__ import annotations

from typing import Any

from flask import Flask, render_template, request
from flask_wtf.csrf import CSRFError

from service.accounts import users
from service.http.context import current_settings
from service.web import auth, i18n
from service.web.auth import current_user
from service.web.blueprint import bp
from service.web.forms import ActionForm, csrf
from service.web.i18n import _

__all__ = ["bp", "csrf", "init_app"]


def init_app(app: Flask) -> None:
    from service.web import accounts, blasts, contacts, outbox, releases  # noqa: F401  (register views)

    csrf.init_app(app)
    i18n.init_app(app)
    # In the app's rate-limit store (create_app sets it up first): failures per account *and*
    # client address, so a guesser elsewhere cannot lock the owner out; and per client address.
    settings = app.extensions["communique"].settings
    storage = app.extensions["communique_limiter"].storage
    app.extensions["login_throttles"] = (
        auth.LoginThrottle(storage, "login-account", settings.login_failure_limit),
        auth.LoginThrottle(storage, "login-address", settings.login_ip_failure_limit))
    app.register_blueprint(bp)
    app.context_processor(_template_globals)
    app.register_error_handler(CSRFError, _csrf_error)


def _template_globals() -> dict[str, Any]:
    user = current_user() if request.blueprint == "web" else None
    settings = current_settings()
    return {
        "current_user": user,
        "can_edit": bool(user and users.can_edit(user)),
        "can_send": bool(user and users.can_send(user, settings)),
        "can_approve": bool(user and users.can_approve(user)),
        "is_admin": bool(user and users.is_admin(user)),
        "action_form": ActionForm(formdata=None),  # only renders its token; never reads the body
        "office_zone": settings.timezone,
    }


_CSRF_MESSAGE = "The form expired or was sent from another site. Reload the page and try again."


def _csrf_error(error: CSRFError) -> tuple[str, int]:
    return render_template("error.html", title=_("Form expired"),
                           message=_(_CSRF_MESSAGE)), 400
