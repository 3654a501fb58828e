"""Unsubscribe links: signed itsdangerous tokens (contact or address, blast) and their URLs."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import datetime

from itsdangerous import BadSignature, URLSafeSerializer
from itsdangerous.encoding import base64_encode
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.config import Settings
from service.errors import NotFound
from service.models import Contact

log = logging.getLogger(__name__)

SALT = "communique.unsubscribe"


@dataclass(frozen=True)
class UnsubscribeToken:
    contact_id: int | None
    email: str | None
    blast_id: int | None


def _serializer(settings: Settings) -> URLSafeSerializer:
    return URLSafeSerializer(settings.secret_key, salt=SALT)


class TokenMaker:
    """Signs tokens exactly as URLSafeSerializer.dumps does, faster: the worker makes one per
    message. The key is derived once (itsdangerous re-derives it on every call), the HMAC
    is OpenSSL's one-shot `hmac.digest` (itsdangerous passes a Python wrapper around sha1, which
    sends `hmac.new` down its pure-Python path), and an int pair is written without json."""

    def __init__(self, settings: Settings) -> None:
        signer = _serializer(settings).make_signer(SALT)
        self._key = signer.derive_key()
        self._digest_name = signer.digest_method().name  # "sha1"
        self.base_url = settings.base_url.rstrip("/")

    def token(self, contact_id: int | None, blast_id: int | None = None,
              email: str | None = None) -> str:
        who: int | str | None = contact_id if contact_id is not None else email
        if who is None:
            raise ValueError("an unsubscribe token needs a contact id or an address")
        if type(who) is int and (blast_id is None or type(blast_id) is int):
            data = f"[{who},{'null' if blast_id is None else blast_id}]".encode()  # = json.dumps
        else:
            data = json.dumps([who, blast_id], separators=(",", ":"), ensure_ascii=False).encode()
        payload = base64_encode(data)
        signature = base64_encode(hmac.digest(self._key, payload, self._digest_name))
        return (payload + b"." + signature).decode("ascii")

    def url(self, token: str) -> str:
        return f"{self.base_url}/u/{token}"


def make_token(settings: Settings, contact_id: int | None, blast_id: int | None = None,
               email: str | None = None) -> str:
    return TokenMaker(settings).token(contact_id, blast_id, email)


def unsubscribe_url(settings: Settings, token: str) -> str:
    return f"{settings.base_url.rstrip('/')}/u/{token}"


def verify_token(settings: Settings, token: str) -> UnsubscribeToken:
    """The token's contact (or address) and blast; NotFound when it was not signed by us."""
    try:
        who, blast_id = _serializer(settings).loads(token)
    except (BadSignature, ValueError, TypeError) as exc:
        raise NotFound("this unsubscribe link is not valid") from exc
    if isinstance(who, bool) or not isinstance(who, int | str):
        raise NotFound("this unsubscribe link is not valid")
    if blast_id is not None and not isinstance(blast_id, int):
        raise NotFound("this unsubscribe link is not valid")
    if isinstance(who, int):
        return UnsubscribeToken(contact_id=who, email=None, blast_id=blast_id)
    return UnsubscribeToken(contact_id=None, email=who, blast_id=blast_id)


def token_fingerprint(token: str) -> str:
    """A short, non-reversible id of a token for logs (never log the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def unsubscribe_by_token(session: Session, settings: Settings, token: str, *, now: datetime,
                         source: str) -> Contact | None:
    """Unsubscribe whoever the token names; None when the address is not (or no longer) a contact."""
    from service.contacts.store import normalize_email, unsubscribe_contact

    who = verify_token(settings, token)
    contact_id = who.contact_id
    if contact_id is None and who.email:
        key = normalize_email(who.email)[1]
        contact_id = session.scalar(select(Contact.id).where(Contact.email_key == key))
    if contact_id is None or session.get(Contact, contact_id) is None:
        log.info("unsubscribe %s: no such contact", token_fingerprint(token))
        return None
    contact = unsubscribe_contact(session, contact_id, now=now, source=source)
    if who.blast_id is not None:
        log.info("contact %s: unsubscribed from blast %s", contact.id, who.blast_id)
    return contact


def contact_for_token(session: Session, settings: Settings, token: str) -> Contact | None:
    who = verify_token(settings, token)
    if who.contact_id is not None:
        return session.get(Contact, who.contact_id)
    return None
