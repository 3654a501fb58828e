"""SMTP connections (aiosmtplib) reused for many messages, and the rule that turns every reply or
error into a value: sent, deferred (temporary), failed or bounced (permanent)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import aiosmtplib

from .config import Settings
from .models import DeliveryOutcome

log = logging.getLogger(__name__)

NO_REPLY_CODE = 444  # our code for "the relay gave no reply" (dropped, timed out, refused to connect)
BAD_MAILBOX = re.compile(r"^\s*5\.1\.\d+")  # RFC 3463 5.1.x: bad destination mailbox address
RECONNECT_CODES = frozenset({421, 452})


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: DeliveryOutcome
    smtp_code: int | None
    smtp_reply: str | None
    error_type: str | None = None
    reconnect: bool = False  # the connection must be replaced before the next message
    relay_down: bool = False  # could not even connect


def classify_reply(code: int, reply: str, error_type: str | None = None) -> SendResult:
    """2xx sent; 4xx and 552 temporary; other 5xx permanent, 5.1.x bounced (no such user)."""
    reply = (reply or "").strip()[:1000]
    if 200 <= code < 300:
        return SendResult(DeliveryOutcome.sent, code, reply)
    if 400 <= code < 500 or code == 552:
        return SendResult(DeliveryOutcome.deferred, code, reply, error_type,
                          reconnect=code in RECONNECT_CODES)
    if code >= 500 and BAD_MAILBOX.match(reply):
        return SendResult(DeliveryOutcome.bounced, code, reply, error_type)
    if code >= 500:
        return SendResult(DeliveryOutcome.failed, code, reply, error_type)
    # A reply outside 2xx-5xx is a broken conversation: treat it as temporary and reconnect.
    return SendResult(DeliveryOutcome.deferred, code, reply, error_type, reconnect=True)


def _no_reply(exc: BaseException, *, relay_down: bool = False) -> SendResult:
    return SendResult(DeliveryOutcome.deferred, NO_REPLY_CODE, str(exc)[:1000] or type(exc).__name__,
                      type(exc).__name__, reconnect=True, relay_down=relay_down)


class SmtpConnection:
    """One pooled connection: connects lazily, reconnects after an error or after
    `smtp_messages_per_connection` messages."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: aiosmtplib.SMTP | None = None
        self.sent_count = 0

    def _new_client(self) -> aiosmtplib.SMTP:
        s = self.settings
        return aiosmtplib.SMTP(
            hostname=s.smtp_host, port=s.smtp_port, timeout=s.smtp_timeout_seconds,
            use_tls=s.smtp_tls == "implicit",
            start_tls=True if s.smtp_tls == "starttls" else False,
            username=s.smtp_username or None, password=s.smtp_password or None)

    async def connect(self) -> None:
        await self.close()
        client = self._new_client()
        await client.connect()
        if client.is_ehlo_or_helo_needed:
            await client.ehlo()
        self.client, self.sent_count = client, 0

    async def close(self, *, polite: bool = False) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        if polite and client.is_connected:
            try:
                await client.quit()
                return
            except (aiosmtplib.SMTPException, OSError):
                pass  # closing anyway
        client.close()

    async def send(self, envelope_from: str, address: str, data: bytes, *,
                   before_data: Awaitable[Any] | None = None) -> SendResult:
        """One message to one recipient; never raises for SMTP or network trouble. `before_data`
        is awaited between RCPT and DATA: the worker passes the recording of this connection's
        previous message, so MAIL and RCPT overlap with it, yet at most one accepted message per
        connection is ever unrecorded. `data` must have CRLF line endings (render_bytes does)."""
        if self.client is not None and (not self.client.is_connected
                                        or self.sent_count >= self.settings.smtp_messages_per_connection):
            await self.close(polite=True)
        if self.client is None:
            try:
                await self.connect()
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                await self.close()
                return _no_reply(exc, relay_down=True)
        client = self.client
        assert client is not None
        self.sent_count += 1
        options, encoding = [], "ascii"
        if not (address.isascii() and envelope_from.isascii()):
            if not client.supports_extension("smtputf8"):
                return SendResult(DeliveryOutcome.failed, None, "the relay does not accept non-ASCII "
                                  "addresses (no SMTPUTF8)", "SMTPNotSupported")
            options, encoding = ["SMTPUTF8"], "utf-8"
        if client.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        try:
            await client.mail(envelope_from, options=options, encoding=encoding)
            await client.rcpt(address, encoding=encoding)
            if before_data is not None:
                await before_data
            response = await client.data(data)
            return SendResult(DeliveryOutcome.sent, response.code, response.message[:1000])
        except aiosmtplib.SMTPResponseException as exc:  # MAIL, RCPT or DATA refused
            result = classify_reply(exc.code, exc.message, type(exc).__name__)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            result = _no_reply(exc)
        except ValueError as exc:  # an address aiosmtplib refuses to put on the wire
            result = SendResult(DeliveryOutcome.failed, None, str(exc)[:1000], type(exc).__name__)
        if result.reconnect:
            await self.close()
        else:
            await self._reset()
        return result

    async def _reset(self) -> None:
        """RSET after a refused transaction, so the connection can go on; replace it if that fails."""
        if self.client is None or not self.client.is_connected:
            await self.close()
            return
        try:
            await self.client.rset()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            await self.close()


async def send_each(settings: Settings, envelope_from: str,
                    messages: list[tuple[str, bytes]]) -> list[tuple[SendResult, float]]:
    """Send a few messages over one connection (test sends); each result with its duration."""
    connection = SmtpConnection(settings)
    results = []
    try:
        for address, data in messages:
            started = time.perf_counter()
            results.append((await connection.send(envelope_from, address, data),
                            time.perf_counter() - started))
    finally:
        await connection.close(polite=True)
    return results


# ---- aiosmtplib fast paths --------------------------------------------------------------------
# In DATA, aiosmtplib rewrites every line ending and then dot-stuffs with two regex substitutions
# over the whole message: about 0.15 ms for an 11 KB release, the largest single cost per message
# in the worker (measured with cProfile). Our messages already end their lines with CRLF and rarely
# have a line starting with ".", so we check for that at C speed and hand anything else to the
# original code: the bytes on the wire are exactly the same.

def _install_fast_paths() -> None:
    from aiosmtplib import protocol

    if getattr(protocol, "_communique_fast_paths", False):
        return
    if not (callable(getattr(protocol, "normalize_message_line_endings", None))
            and hasattr(getattr(protocol, "PERIOD_REGEX", None), "sub")):
        return  # a different aiosmtplib: keep its own code
    slow_normalize = protocol.normalize_message_line_endings
    slow_period = protocol.PERIOD_REGEX

    def normalize_message_line_endings(message: bytes) -> bytes:
        crlf = message.count(b"\r\n")
        if message.count(b"\n") == crlf and message.count(b"\r") == crlf and message.endswith(b"\r\n"):
            return message
        return slow_normalize(message)  # type: ignore[no-any-return]

    class _PeriodStuffing:
        @staticmethod
        def sub(replacement: bytes, message: bytes) -> bytes:
            if b"\n." not in message and not message.startswith(b"."):
                return message
            return slow_period.sub(replacement, message)

    protocol.normalize_message_line_endings = normalize_message_line_endings  # type: ignore[assignment]
    protocol.PERIOD_REGEX = _PeriodStuffing()  # type: ignore[assignment]
    protocol._communique_fast_paths = True  # type: ignore[attr-defined]


_install_fast_paths()
