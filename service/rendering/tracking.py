"""Engagement tracking links: the per-message token of the open pixel and of tracked links, and
each release link signed once per release.

A message's token is `<blast>-<contact>-<signature>` (like VERP: one `hmac.digest` per message,
spliced into the skeleton like the unsubscribe link). A tracked link is
`/c/<message token>/<release>.<url in base64url>.<signature>`: the link part is made once per
release, when it is prepared, and names the exact URL of the release; changing any character of
either part makes the link name nothing (404), so the redirect never goes anywhere else.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import re
from dataclasses import dataclass

from service.config import Settings
from service.rendering import mime

MESSAGE_SALT = b"communique.track"
LINK_SALT = b"communique.track-link"
_SIGNATURE_BYTES = 10  # 80 bits, 20 hex digits
_MESSAGE_TOKEN = re.compile(r"([0-9]{1,18})-([0-9]{1,18})-([0-9a-f]{20})")
_LINK_TOKEN = re.compile(r"([0-9]{1,18})\.([A-Za-z0-9_-]{1,2800})\.([0-9a-f]{20})")
# An absolute http(s) link in an href attribute; mailto:, the unsubscribe link (a marker) and
# anchors are left alone.
_HREF = re.compile(r'href="(https?://[^"]+)"')
MAX_URL_LENGTH = 2000  # the engagements.url column


@dataclass(frozen=True, slots=True)
class MessageToken:
    blast_id: int
    contact_id: int


def _key(settings: Settings, salt: bytes) -> bytes:
    return hmac.digest(settings.secret_key.encode(), salt, "sha256")


def _signature(key: bytes, data: bytes) -> str:
    return hmac.digest(key, data, "sha256")[:_SIGNATURE_BYTES].hex()


class TrackMaker:
    """Makes the per-message token; built once per prepared release."""

    def __init__(self, settings: Settings) -> None:
        self._key = _key(settings, MESSAGE_SALT)

    def token(self, blast_id: int, contact_id: int) -> str:
        data = f"{blast_id}-{contact_id}"
        return f"{data}-{_signature(self._key, data.encode('ascii'))}"


def verify_message_token(settings: Settings, token: str) -> MessageToken | None:
    """The ledger row (blast, contact) a token names, or None when it was not signed by us."""
    match = _MESSAGE_TOKEN.fullmatch(token)
    if match is None:
        return None
    blast_id, contact_id, signature = match.groups()
    expected = _signature(_key(settings, MESSAGE_SALT), f"{blast_id}-{contact_id}".encode("ascii"))
    if not hmac.compare_digest(expected, signature):
        return None
    return MessageToken(int(blast_id), int(contact_id))


def link_token(settings: Settings, release_id: int, url: str) -> str:
    payload = base64.urlsafe_b64encode(url.encode("utf-8")).rstrip(b"=").decode("ascii")
    data = f"{release_id}.{payload}"
    return f"{data}.{_signature(_key(settings, LINK_SALT), data.encode('ascii'))}"


def verify_link_token(settings: Settings, token: str) -> tuple[int, str] | None:
    """(release id, the exact URL) a link token names, or None when it is not ours."""
    match = _LINK_TOKEN.fullmatch(token)
    if match is None:
        return None
    release_id, payload, signature = match.groups()
    expected = _signature(_key(settings, LINK_SALT), f"{release_id}.{payload}".encode("ascii"))
    if not hmac.compare_digest(expected, signature):
        return None
    try:
        url = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return int(release_id), url


def pixel_url(settings: Settings) -> str:
    """The open pixel's URL with the message token's marker in it."""
    return f"{settings.base_url.rstrip('/')}/o/{mime.marker('track')}.gif"


def rewrite_links(html_body: str, settings: Settings, release_id: int) -> str:
    """Every absolute http(s) link of the (rendered, CSS-inlined) HTML through a tracked
    redirect; done once per release variant, the message token left as a marker."""
    base = f"{settings.base_url.rstrip('/')}/c/{mime.marker('track')}/"

    def replace(match: re.Match[str]) -> str:
        url = html.unescape(match.group(1))
        if len(url) > MAX_URL_LENGTH or not url.isascii() and len(url.encode()) > MAX_URL_LENGTH:
            return match.group(0)
        # On a line of its own (white space between attributes): only this short line is
        # encoded per message, not the paragraph around it.
        return f'\nhref="{base}{link_token(settings, release_id, url)}"\n'

    return _HREF.sub(replace, html_body)
