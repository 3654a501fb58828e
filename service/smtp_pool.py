"""SMTP connections (aiosmtplib) reused for many messages, and the rule that turns every reply or
error into a value: sent, deferred (temporary), failed or bounced (permanent)."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

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

    async def send(self, envelope_from: str, address: str, data: bytes) -> SendResult:
        """One message to one recipient; never raises for SMTP or network trouble."""
        if self.client is not None and (not self.client.is_connected
                                        or self.sent_count >= self.settings.smtp_messages_per_connection):
            await self.close(polite=True)
        if self.client is None:
            try:
                await self.connect()
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                await self.close()
                return _no_reply(exc, relay_down=True)
        assert self.client is not None
        options = ["SMTPUTF8"] if not (address.isascii() and envelope_from.isascii()) else None
        try:
            _errors, reply = await self.client.sendmail(envelope_from, [address], data, mail_options=options)
            result = SendResult(DeliveryOutcome.sent, 250, reply[:1000])
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            result = classify_reply(refused.code, refused.message, type(refused).__name__)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError) as exc:
            result = _no_reply(exc)
        except aiosmtplib.SMTPResponseException as exc:
            result = classify_reply(exc.code, exc.message, type(exc).__name__)
        except aiosmtplib.SMTPNotSupported as exc:
            result = SendResult(DeliveryOutcome.failed, None, str(exc), type(exc).__name__)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            result = _no_reply(exc)
        except ValueError as exc:  # an address aiosmtplib refuses to put on the wire
            result = SendResult(DeliveryOutcome.failed, None, str(exc)[:1000], type(exc).__name__)
        self.sent_count += 1
        if result.reconnect:
            await self.close()
        return result


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
