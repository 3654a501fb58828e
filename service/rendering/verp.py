"""VERP envelope senders: `<local>+<blast>-<contact>-<signature>@<domain>` names one ledger row.
The Reply-To of COMMUNIQUE_REPLY_ADDRESS uses the same token on its own base address.

The token is lowercase letters, digits and "-" only, so it survives MTAs that lower-case or
otherwise normalise local parts; the signature is HMAC-SHA256 truncated to 80 bits (hex), with
a key derived once from the secret key: one `hmac.digest` per message, cheap enough for the
worker's hot path (like TokenMaker's unsubscribe tokens).
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from service.config import Settings

SALT = b"communique.verp"
_SIGNATURE_BYTES = 10  # 80 bits: 20 hex digits (hex: half the cost of base32 per message)
_TOKEN = re.compile(r"([0-9]{1,18})-([0-9]{1,18})-([0-9a-f]{20})")


@dataclass(frozen=True, slots=True)
class VerpToken:
    blast_id: int
    contact_id: int


def _key(settings: Settings) -> bytes:
    return hmac.digest(settings.secret_key.encode(), SALT, "sha256")


def _signature(key: bytes, data: bytes) -> str:
    return hmac.digest(key, data, "sha256")[:_SIGNATURE_BYTES].hex()


class VerpMaker:
    """Makes the per-message envelope sender (or, on the reply address, Reply-To); built once
    per prepared release."""

    def __init__(self, settings: Settings, base: str | None = None) -> None:
        local, _, domain = (base or settings.bounce_address).rpartition("@")
        self.local = local
        self.domain = domain.lower()
        self.address = f"{local}@{self.domain}"
        self._key = _key(settings)

    def token(self, blast_id: int, contact_id: int) -> str:
        data = f"{blast_id}-{contact_id}"
        return f"{data}-{_signature(self._key, data.encode('ascii'))}"

    def envelope(self, blast_id: int, contact_id: int) -> str:
        return f"{self.local}+{self.token(blast_id, contact_id)}@{self.domain}"


def verify_address(settings: Settings, address: str) -> VerpToken | None:
    """The ledger row a VERP address (on the bounce or the reply address) names, or None when it
    is not ours or its signature is wrong (a forged or mangled address names nothing)."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    base, plus, token = local.partition("+")
    named = f"{base}@{domain}".lower()
    if not plus or not any(named == ours.lower()
                           for ours in (settings.bounce_address, settings.reply_address) if ours):
        return None
    match = _TOKEN.fullmatch(token.lower())
    if match is None:
        return None
    blast_id, contact_id, signature = match.groups()
    expected = _signature(_key(settings), f"{blast_id}-{contact_id}".encode("ascii"))
    if not hmac.compare_digest(expected, signature):
        return None
    return VerpToken(int(blast_id), int(contact_id))
