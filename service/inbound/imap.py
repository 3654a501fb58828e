"""IMAP polling (COMMUNIQUE_INBOUND_IMAP_URL), for offices whose bounces and replies land in a
hosted mailbox: each message is received like one the listener got, then moved to
COMMUNIQUE_INBOUND_IMAP_FOLDER. A message that could not be processed (database down, relay
refusing a reply's forward for now, too big) stays where it is, unread: nothing is deleted
before its copy is in the folder."""

from __future__ import annotations

import asyncio
import email
import email.policy
import imaplib
import logging
import re
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import getaddresses
from urllib.parse import unquote, urlsplit

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import make_engine, make_session_factory
from service.errors import ConfigError
from service.inbound.replies import ForwardDeferred, receive_message

log = logging.getLogger(__name__)

MAX_PER_POLL = 500
IMAP_TIMEOUT_SECONDS = 60.0
# Where hosted mailboxes and MTAs keep the address a message was delivered to (the VERP address).
ADDRESS_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To", "Cc")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")


@dataclass(frozen=True)
class Mailbox:
    host: str
    port: int
    tls: bool
    user: str
    password: str
    folder: str

    @classmethod
    def from_url(cls, url: str) -> Mailbox:
        """imap[s]://user:password@host[:port]/FOLDER (user and password %-encoded)."""
        parts = urlsplit(url)
        if parts.scheme not in ("imap", "imaps") or not parts.hostname or not parts.username:
            raise ConfigError("COMMUNIQUE_INBOUND_IMAP_URL: must be imaps://user:password@host/INBOX")
        tls = parts.scheme == "imaps"
        return cls(parts.hostname, parts.port or (993 if tls else 143), tls, unquote(parts.username),
                   unquote(parts.password or ""), unquote(parts.path.lstrip("/")) or "INBOX")


@dataclass
class PollResult:
    processed_count: int = 0
    left_count: int = 0  # left in the mailbox for the next poll


def envelope_addresses(raw: bytes) -> list[str]:
    """The addresses a fetched message was delivered to, the envelope ones first."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    values = [str(value) for name in ADDRESS_HEADERS for value in message.get_all(name, [])]
    return [address for _name, address in getaddresses(values) if "@" in address]


def _connect(mailbox: Mailbox, settings: Settings) -> imaplib.IMAP4:
    if mailbox.tls:
        context = ssl.create_default_context(cafile=settings.smtp_ca_file or None)
        return imaplib.IMAP4_SSL(mailbox.host, mailbox.port, ssl_context=context,
                                 timeout=IMAP_TIMEOUT_SECONDS)
    return imaplib.IMAP4(mailbox.host, mailbox.port, timeout=IMAP_TIMEOUT_SECONDS)


def _quoted(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def poll_mailbox(settings: Settings, session_factory: sessionmaker[Session]) -> PollResult:
    """Receive every message of the mailbox's folder once (up to MAX_PER_POLL) and move each one
    processed to the done folder. Raises imaplib.IMAP4.error or OSError when the server fails."""
    mailbox = Mailbox.from_url(settings.inbound_imap_url)
    done = _quoted(settings.inbound_imap_folder)
    result = PollResult()
    client = _connect(mailbox, settings)
    try:
        client.login(mailbox.user, mailbox.password)
        capabilities = {str(c).upper() for c in client.capability()[1][0].decode().split()}
        client.create(done)  # "already exists" is a NO answer, not an exception
        status, _data = client.select(_quoted(mailbox.folder))
        if status != "OK":
            raise imaplib.IMAP4.error(f"cannot open folder {mailbox.folder!r}")
        _status, found = client.uid("SEARCH", "ALL")
        uids = [uid for uid in found[0].split()] if found and found[0] else []
        result.left_count = max(0, len(uids) - MAX_PER_POLL)
        for uid in uids[:MAX_PER_POLL]:
            if _receive_one(client, settings, session_factory, uid):
                _move(client, uid, done, capabilities)
                result.processed_count += 1
            else:
                result.left_count += 1
        if "MOVE" not in capabilities:
            client.expunge()  # only the \Deleted copies made above
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass  # the connection is gone anyway
    return result


def _receive_one(client: imaplib.IMAP4, settings: Settings,
                 session_factory: sessionmaker[Session], uid: str) -> bool:
    _status, sized = client.uid("FETCH", uid, "(RFC822.SIZE)")
    size = _SIZE.search(sized[0] if sized and isinstance(sized[0], bytes) else b"")
    if size is None or int(size.group(1)) > settings.inbound_max_bytes:
        log.warning("inbound imap: message uid %s is too big or unreadable: left in place",
                    uid)
        return False
    _status, fetched = client.uid("FETCH", uid, "(BODY.PEEK[])")  # PEEK: not marked \Seen
    raw = next((part[1] for part in fetched if isinstance(part, tuple)), None)
    if raw is None:
        return False
    with session_factory() as db:
        try:
            receive_message(db, settings, raw, envelope_to=envelope_addresses(raw),
                            envelope_from=None, now=datetime.now(UTC), run=asyncio.run)
            db.commit()
        except (SQLAlchemyError, ForwardDeferred) as exc:
            db.rollback()
            log.warning("inbound imap: message uid %s left for the next poll (%s)", uid,
                        type(exc).__name__)
            return False
    return True


def _move(client: imaplib.IMAP4, uid: str, done: str, capabilities: set[str]) -> None:
    """RFC 6851 MOVE; else COPY then \\Deleted (expunged at the end of the poll)."""
    if "MOVE" in capabilities:
        status, _data = client.uid("MOVE", uid, done)
        if status != "OK":
            raise imaplib.IMAP4.error(f"cannot move uid {uid} to the done folder")
        return
    status, _data = client.uid("COPY", uid, done)
    if status != "OK":
        raise imaplib.IMAP4.error(f"cannot copy uid {uid} to the done folder")
    client.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)")


def run_poller(settings: Settings, *, stop: threading.Event | None = None, once: bool = False) -> int:
    """Poll every COMMUNIQUE_INBOUND_IMAP_POLL_SECONDS until `stop` is set (or once); a server
    that fails is logged and tried again at the next poll. Returns the messages processed."""
    if not settings.inbound_imap_url:
        raise ConfigError("COMMUNIQUE_INBOUND_IMAP_URL: not set")
    stop = stop or threading.Event()
    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)
    processed = 0
    try:
        while True:
            try:
                result = poll_mailbox(settings, session_factory)
                processed += result.processed_count
                log.info("inbound imap: %d processed, %d left", result.processed_count,
                         result.left_count)
            except (imaplib.IMAP4.error, OSError) as exc:
                log.warning("inbound imap: polling failed: %s", exc)
                if once:
                    raise
            if once or stop.wait(settings.inbound_imap_poll_seconds):
                return processed
    finally:
        engine.dispose()
