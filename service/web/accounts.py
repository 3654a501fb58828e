"""Web pages of accounts: sign in and out, language, preferences, and the admin's users page."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import current_app, flash, g, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from service.accounts import users as accounts
from service.db import utcnow
from service.http.context import db_session
from service.web.auth import current_user, login_required, login_user, logout_user, role_required
from service.web.blueprint import bp, is_local_path, remember_form, render_form
from service.web.forms import ActionForm, LanguageForm, LoginForm, PreferencesForm, UserForm
from service.web.i18n import _

log = logging.getLogger(__name__)


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int]:
    form = LoginForm(next=request.args.get("next", ""))
    if form.validate_on_submit():
        by_account, by_client = current_app.extensions["login_throttles"]
        client = str(request.remote_addr)  # the real client behind COMMUNIQUE_TRUSTED_PROXIES
        account = f"{form.email.data.strip().lower()} {client}"
        if by_account.is_blocked(account) or by_client.is_blocked(client):
            form.password.errors = [_("Too many failed attempts. Wait a few minutes and try again.")]
            return render_template("login.html", form=form), 429
        user = accounts.authenticate(db_session(), form.email.data, form.password.data, now=utcnow())
        if user is None:
            by_account.record_failure(account)
            by_client.record_failure(client)
            log.info("login failed from %s", request.remote_addr)
            form.password.errors = [_("Wrong email address or password.")]
            return render_template("login.html", form=form), 401
        by_account.reset(account)
        db_session().commit()
        login_user(user)
        log.info("user %s: logged in", user.id)
        return redirect(_safe_next(form.next.data), code=303)
    return render_template("login.html", form=form)


@bp.route("/logout", methods=["POST"])
def logout() -> Response:
    ActionForm().validate_on_submit()  # CSRFProtect already checked the token
    logout_user()
    flash(_("You are signed out."), "info")
    return redirect(url_for("web.login"), code=303)


@bp.route("/language", methods=["POST"])
def set_language() -> Response:
    form = LanguageForm()
    if form.validate_on_submit():
        session["language"] = form.language.data
        user = current_user()
        if user is not None:
            accounts.update_preferences(db_session(), user.id, language=form.language.data)
            db_session().commit()
    return redirect(_safe_next(form.next.data or request.referrer and urlsplit(request.referrer).path),
                    code=303)


@bp.route("/preferences", methods=["GET", "POST"])
@login_required
def preferences() -> Response | str:
    user = current_user()
    assert user is not None
    form = PreferencesForm(obj=user)
    if form.validate_on_submit():
        remember_form("preferences.html", form)
        accounts.update_preferences(db_session(), user.id, language=form.language.data,
                                timezone=(form.timezone.data or "").strip())
        db_session().commit()
        g.pop("language", None)
        flash(_("Preferences saved."), "info")
        return redirect(url_for("web.preferences"), code=303)
    return render_form("preferences.html", form)


@bp.route("/users", methods=["GET", "POST"])
@role_required(accounts.is_admin)
def users() -> Response | str:
    form = UserForm()
    if form.validate_on_submit():
        remember_form("users.html", form, users=accounts.list_users(db_session()))
        accounts.create_user(db_session(), email=form.email.data, password=form.password.data,
                         role=form.role.data, name=form.name.data or None, now=utcnow())
        db_session().commit()
        flash(_("Account created."), "info")
        return redirect(url_for("web.users"), code=303)
    return render_form("users.html", form, users=accounts.list_users(db_session()))


def _safe_next(target: str | None) -> str:
    return target if target and is_local_path(target) else url_for("web.dashboard")
