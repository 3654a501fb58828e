"""Users: accounts with hashed passwords, roles (admin, editor, sender), preferences, login checks."""

from __future__ import annotations

import logging
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from service.config import Settings
from service.errors import Conflict, FieldError, NotFound, ValidationError
from service.models import Role, User

log = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 10
LANGUAGES = ("fr", "en")
# Hash a dummy password once so an unknown address costs as much time as a wrong password.
_DUMMY_HASH = generate_password_hash("not-a-real-password")

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
        end_sessions(user)


def set_role(session: Session, user_id: int, role: Role | str) -> None:
    """A new role; the user signs in again, so no page keeps rights it no longer has."""
    if role not in set(Role):
        raise ValidationError(FieldError("role", "must be admin, editor or sender"))
    user = session.get(User, user_id)
    if user is not None and user.role != role:
        user.role = Role(role)
        end_sessions(user)


def set_active(session: Session, user_id: int, active: bool) -> None:
    """Disable (or enable again) an account; disabling ends its sessions."""
    user = session.get(User, user_id)
    if user is not None and user.is_active != active:
        user.is_active = active
        end_sessions(user)


def end_sessions(user: User) -> None:
    """Every session cookie issued to this user so far stops working (see User.session_version)."""
    user.session_version = (user.session_version or 0) + 1
    log.info("user %s: sessions ended", user.id)


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


def get_user_by_email(session: Session, email: str) -> User:
    user = session.scalar(select(User).where(func.lower(User.email) == (email or "").strip().lower()))
    if user is None:
        raise NotFound(f"no user with the address {email}")
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


def is_admin(user: User) -> bool:
    return user.role == Role.admin
