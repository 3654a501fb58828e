"""The demo's catch-all mail server: aiosmtpd accepting every message on 127.0.0.1 and keeping
it as an .eml file under <instance_path>/outbox/, plus the readers behind the Outbox page."""

from __future__ import annotations

import email
import email.policy
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from service.config import Settings
from service.errors import NotFound

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[0-9]{8}T[0-9]{6}\.[0-9]{6}-[0-9a-f]{32}\.eml$")


def outbox_path(settings: Settings) -> Path:
    return Path(settings.instance_path) / "outbox"


class OutboxHandler:
    """Accepts every recipient and writes the message (with its envelope recipients) to disk."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        received_at = datetime.now(UTC)
        name = f"{received_at:%Y%m%dT%H%M%S.%f}-{uuid.uuid4().hex}.eml"
        envelope_header = f"X-Outbox-Rcpt-To: {', '.join(envelope.rcpt_tos)}\r\n".encode()
        data = envelope.original_content or b""
        temporary = self.folder / f".{name}.tmp"
        temporary.write_bytes(envelope_header + data)
        temporary.rename(self.folder / name)  # the page never sees a half-written file
        log.info("outbox: stored %s for %d recipients", name, len(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


def start_outbox(settings: Settings, *, host: str | None = None, port: int | None = None) -> Any:
    """Start the catch-all server on settings.smtp_host:smtp_port (the relay the worker uses)."""
    from aiosmtpd.controller import Controller

    controller = Controller(OutboxHandler(outbox_path(settings)),
                            hostname=host or settings.smtp_host, port=port or settings.smtp_port,
                            data_size_limit=64 * 1024 * 1024, ready_timeout=10)
    controller.start()
    log.info("outbox: listening on %s:%s", controller.hostname, controller.port)
    return controller


@dataclass(frozen=True)
class OutboxMessage:
    name: str
    recipients: str
    sender: str
    subject: str
    received_at: datetime
    size_bytes: int


def list_outbox(settings: Settings, *, limit: int = 200) -> list[OutboxMessage]:
    """The newest stored messages first."""
    folder = outbox_path(settings)
    if not folder.is_dir():
        return []
    names = sorted((p.name for p in folder.iterdir() if _NAME.match(p.name)), reverse=True)[:limit]
    items = []
    for name in names:
        path = folder / name
        with path.open("rb") as handle:
            head = email.message_from_binary_file(handle, policy=email.policy.default,
                                                  _class=EmailMessage)  # type: ignore[call-arg]
        items.append(OutboxMessage(
            name=name, recipients=str(head.get("X-Outbox-Rcpt-To", "")),
            sender=str(head.get("From", "")), subject=str(head.get("Subject", "")),
            received_at=_received_at(name, head), size_bytes=path.stat().st_size))
    return items


def read_outbox_message(settings: Settings, name: str) -> tuple[EmailMessage, bytes]:
    if not _NAME.match(name):
        raise NotFound(f"outbox message {name} does not exist")
    path = outbox_path(settings) / name
    if not path.is_file():
        raise NotFound(f"outbox message {name} does not exist")
    raw = path.read_bytes()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message, raw


def message_parts(message: EmailMessage) -> tuple[str | None, str | None]:
    """(html, text) bodies of a stored message."""
    html = message.get_body(preferencelist=("html",))
    text = message.get_body(preferencelist=("plain",))
    return (html.get_content() if html is not None else None,  # type: ignore[attr-defined]
            text.get_content() if text is not None else None)  # type: ignore[attr-defined]


def clear_outbox(settings: Settings) -> int:
    folder = outbox_path(settings)
    count = 0
    if folder.is_dir():
        for path in folder.iterdir():
            if _NAME.match(path.name):
                path.unlink()
                count += 1
    return count


def _received_at(name: str, head: EmailMessage) -> datetime:
    try:
        return datetime.strptime(name[:22], "%Y%m%dT%H%M%S.%f").replace(tzinfo=UTC)
    except ValueError:
        date = head.get("Date")
        return parsedate_to_datetime(str(date)) if date else datetime.now(UTC)
