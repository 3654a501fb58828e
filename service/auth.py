"""Accounts: users with hashed passwords, roles (admin, editor, sender), login checks and the
view decorators. The domain half (create, verify) takes a session; the Flask half stays small."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from .config import Settings
from .errors import Conflict, FieldError, ValidationError
from .models import Role, User

log = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 10
LANGUAGES = ("fr", "en")
# Hash a dummy password once so an unknown address costs as much time as a wrong password.
_DUMMY_HASH = generate_password_hash("not-a-real-password")

F = TypeVar("F", bound=Callable[..., Any])


def normalize_user_email(raw: str) -> str:
    try:
        return validate_email((raw or "").strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise ValidationError(FieldError("email", f"not a valid address: {exc}")) from exc


def create_user(session: Session, *, email: str, password: str, role: Role | str = Role.editor,
                name: str | None = None, language: str = "fr", now: datetime) -> User:
    """A new account; the password is stored only as a salted hash (werkzeug's scrypt)."""
    address = normalize_user_email(email)
    errors = []
    if len(password or "") < MIN_PASSWORD_LENGTH:
        errors.append(FieldError("password", f"must be at least {MIN_PASSWORD_LENGTH} characters"))
    if role not in set(Role):
        errors.append(FieldError("role", "must be admin, editor or sender"))
    if language not in LANGUAGES:
        errors.append(FieldError("language", "must be fr or en"))
    if errors:
        raise ValidationError(errors)
    if session.scalar(select(User.id).where(func.lower(User.email) == address)) is not None:
        raise Conflict(f"a user with the address {address} already exists")
    user = User(email=address, name=name, password_hash=generate_password_hash(password),
                role=Role(role), language=language, is_active=True, created_at=now)
    session.add(user)
    session.flush()
    log.info("user %s: created with role %s", user.id, user.role)
    return user


def set_password(session: Session, user_id: int, password: str) -> None:
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise ValidationError(FieldError("password",
                                         f"must be at least {MIN_PASSWORD_LENGTH} characters"))
    user = session.get(User, user_id)
    if user is not None:
        user.password_hash = generate_password_hash(password)


def authenticate(session: Session, email: str, password: str, *, now: datetime) -> User | None:
    """The active user with this address and password, or None (same cost either way)."""
    address = (email or "").strip().lower()
    user = session.scalar(select(User).where(func.lower(User.email) == address))
    if user is None or not user.is_active:
        check_password_hash(_DUMMY_HASH, password or "")
        return None
    if not check_password_hash(user.password_hash, password or ""):
        return None
    user.last_login_at = now
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.email)))


def update_preferences(session: Session, user_id: int, *, language: str | None = None,
                       timezone: str | None = None) -> None:
    user = session.get(User, user_id)
    if user is None:
        return
    if language is not None:
        if language not in LANGUAGES:
            raise ValidationError(FieldError("language", "must be fr or en"))
        user.language = language
    if timezone is not None:
        if timezone:
            try:
                ZoneInfo(timezone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValidationError(FieldError("timezone", "unknown time zone")) from exc
        user.timezone = timezone or None


def can_edit(user: User) -> bool:
    return user.role in (Role.admin, Role.editor)


def can_approve(user: User) -> bool:
    return user.role in (Role.admin, Role.sender)


def can_send(user: User, settings: Settings) -> bool:
    """Schedule, send now, pause, resume, cancel, resend. Editors may too unless approval is on."""
    if user.role in (Role.admin, Role.sender):
        return True
    return user.role == Role.editor and not settings.require_approval


class LoginThrottle:
    """At most `limit` failed logins per key (address or client IP) in `window_seconds`.

    In memory, per process: enough to slow a guesser on the single-process server; behind
    gunicorn each worker counts on its own, which still bounds the rate."""

    def __init__(self, limit: int = 10, window_seconds: float = 300.0) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        kept = [t for t in self._failures.get(key, []) if now - t < self.window_seconds]
        if kept:
            self._failures[key] = kept
        else:
            self._failures.pop(key, None)
        return kept

    def is_blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(k, now)) >= self.limit for k in keys)

    def record_failure(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._recent(key, now)
                self._failures.setdefault(key, []).append(now)

    def reset(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


# ---- Flask side ---------------------------------------------------------------

def current_user() -> User | None:
    from flask import g, session

    if "user" not in g:
        from .db_app import db_session

        user_id = session.get("user_id")
        user = db_session().get(User, user_id) if isinstance(user_id, int) else None
        if user is not None and not user.is_active:
            user = None
        g.user = user
    return g.user  # type: ignore[no-any-return]


def login_user(user: User) -> None:
    from flask import g, session

    session.clear()  # a fresh session on login: no fixation
    session["user_id"] = user.id
    session.permanent = True
    g.user = user


def logout_user() -> None:
    from flask import g, session

    session.clear()
    g.pop("user", None)


def login_required(view: F) -> F:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        from flask import redirect, request, url_for

        if current_user() is None:
            return redirect(url_for("web.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def role_required(check: Callable[[User], bool]) -> Callable[[F], F]:
    """Anonymous -> login page; signed in without the right -> 403."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            from flask import abort, redirect, request, url_for

            user = current_user()
            if user is None:
                return redirect(url_for("web.login", next=request.full_path.rstrip("?")))
            if not check(user):
                abort(403)
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorator


def is_admin(user: User) -> bool:
    return user.role == Role.admin


def sender_check(user: User) -> bool:
    from .db_app import current_settings

    return can_send(user, current_settings())
