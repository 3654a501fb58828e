"""API keys: created once (the secret is shown once), stored as a SHA-256 hash, revocable, each
with scopes: read, write (contacts, releases, draft blasts), send (start, schedule, pause, resume,
cancel, resend) and approve. `approve` is never given unless asked for."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.errors import FieldError, NotFound, ValidationError
from service.models import ApiKey, ApiScope

log = logging.getLogger(__name__)

KEY_PREFIX = "cq_"
# Touching last_used_at on every request would turn each read into a write; once a minute is enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


DEFAULT_SCOPES = (ApiScope.read, ApiScope.write)


def clean_scopes(scopes: Iterable[str] | None) -> list[ApiScope]:
    """The scopes, known and each once, in a fixed order; none given means read and write."""
    given = [s.strip().lower() for s in (scopes or ()) if s and s.strip()]
    unknown = sorted({s for s in given if s not in ApiScope.__members__})
    if unknown:
        raise ValidationError([FieldError("scope", f"unknown scope {s!r}; use read, write, send or approve",
                                          value=s) for s in unknown])
    chosen = set(given) or set(DEFAULT_SCOPES)
    return [s for s in ApiScope if s in chosen]


def has_scope(key: ApiKey, scope: str) -> bool:
    return scope in key.scopes.split(",")


def create_api_key(session: Session, name: str, *, now: datetime,
                   scopes: Iterable[str] | None = None) -> tuple[ApiKey, str]:
    """Store a new key; return the row and the secret token (never stored, shown once)."""
    name = name.strip()
    if not name or len(name) > 120:
        raise ValidationError("must be 1 to 120 characters", field="name")
    chosen = clean_scopes(scopes)
    token = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, prefix=token[:11], key_hash=hash_key(token), created_at=now,
                 scopes=",".join(chosen))
    session.add(key)
    session.flush()
    log.info("api key %s: created (%s, scopes %s)", key.id, key.prefix, key.scopes)
    return key, token


def list_api_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_api_key(session: Session, key_id: int, *, now: datetime) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"api key {key_id} not found")
    if key.revoked_at is None:
        key.revoked_at = now
        log.info("api key %s: revoked", key.id)
    return key


def verify_api_key(session: Session, token: str, *, now: datetime) -> ApiKey | None:
    """The active key for `token`, or None. The lookup is by hash, so the secret is never compared
    byte by byte against stored data."""
    if not token.startswith(KEY_PREFIX):
        return None
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(token)))
    if key is None or key.revoked_at is not None:
        return None
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        key.last_used_at = now
        session.commit()
    return key
