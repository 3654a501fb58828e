"""API keys: created once (the secret is shown once), stored as a SHA-256 hash, revocable."""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.errors import NotFound, ValidationError
from service.models import ApiKey

log = logging.getLogger(__name__)

KEY_PREFIX = "cq_"
# Touching last_used_at on every request would turn each read into a write; once a minute is enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_key(session: Session, name: str, *, now: datetime) -> tuple[ApiKey, str]:
    """Store a new key; return the row and the secret token (never stored, shown once)."""
    name = name.strip()
    if not name or len(name) > 120:
        raise ValidationError("must be 1 to 120 characters", field="name")
    token = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, prefix=token[:11], key_hash=hash_key(token), created_at=now)
    session.add(key)
    session.flush()
    log.info("api key %s: created (%s)", key.id, key.prefix)
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
