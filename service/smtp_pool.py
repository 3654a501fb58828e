"""SMTP connections (aiosmtplib) reused for many messages, and the rule that turns every reply or
error into a value: sent, deferred (temporary), failed or bounced (permanent)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import aiosmtplib
from aiosmtplib import protocol as aiosmtplib_protocol
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import SMTPStatus

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
            username=s.smtp_username or None, password=s.smtp_password or None,
            cert_bundle=s.smtp_ca_file or None)

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
                   before_data: Awaitable[Any] | None = None, crlf: bool = False) -> SendResult:
        """One message to one recipient; never raises for SMTP or network trouble. `before_data`
        is awaited between RCPT and DATA: the worker passes the recording of this connection's
        previous message, so MAIL and RCPT overlap with it, yet at most one accepted message per
        connection is ever unrecorded. `data` must have CRLF line endings (render_bytes does);
        `crlf=True` says the caller guarantees it, so it is not checked again (~40 µs)."""
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
            if (encoding == "ascii" and client.supports_extension("pipelining")
                    and isinstance(client.protocol, PipeliningProtocol)
                    and _SIMPLE_ADDRESS.match(envelope_from) and _SIMPLE_ADDRESS.match(address)):
                response = await self._send_pipelined(client.protocol, envelope_from, address,
                                                      options, data, before_data, crlf)
            else:
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

    async def _send_pipelined(self, protocol: PipeliningProtocol, envelope_from: str, address: str,
                              options: list[str], data: bytes,
                              before_data: Awaitable[Any] | None, crlf: bool) -> SMTPResponse:
        """RFC 2920: MAIL, RCPT and DATA in one write, their replies read in order; the content
        goes only after 354, and only once `before_data` is done. Raises aiosmtplib's own
        exceptions (same types, codes and replies as the one-command-at-a-time path)."""
        timeout = self.settings.smtp_timeout_seconds
        command = b"".join((b"MAIL FROM:<", envelope_from.encode("ascii"), b">",
                            *(b" " + option.encode("ascii") for option in options),
                            b"\r\nRCPT TO:<", address.encode("ascii"), b">\r\nDATA\r\n"))
        lock = protocol._command_lock
        if lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        async with lock:
            replies, error = await protocol.exchange(command, 3, timeout)
            mail, rcpt, start = replies + [None] * (3 - len(replies))
            if error is not None or (mail is not None and rcpt is not None and start is not None
                                     and start.code == SMTPStatus.start_input
                                     and (mail.code != SMTPStatus.completed or rcpt.code not in _RCPT_OK)):
                # Out of step (a reply is missing, or the server wants content for a refused
                # envelope): this connection cannot go on. A refusal read before still counts.
                await self.close()
            if mail is not None and mail.code != SMTPStatus.completed:
                raise aiosmtplib.SMTPSenderRefused(mail.code, mail.message, envelope_from)
            if rcpt is not None and rcpt.code not in _RCPT_OK:
                raise aiosmtplib.SMTPRecipientRefused(rcpt.code, rcpt.message, address)
            if error is not None:
                raise error
            assert start is not None
            if start.code != SMTPStatus.start_input:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            if before_data is not None:
                await before_data
            if not crlf:
                data = aiosmtplib_protocol.normalize_message_line_endings(data)
            content = aiosmtplib_protocol.PERIOD_REGEX.sub(b"..", data)
            (response,), _ = await protocol.exchange(content + b".\r\n", 1, timeout)  # raises if no reply
        if response.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response

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


# ---- pipelining (RFC 2920) --------------------------------------------------------------------
# aiosmtplib writes one command and waits for its reply: four round trips per message. Its protocol
# also drops bytes that arrive while a parsed reply waits to be picked up, so replies to commands
# written together could be lost. PipeliningProtocol keeps every byte while a pipelined exchange
# is under way and otherwise is aiosmtplib's protocol unchanged; aiosmtplib still does connect,
# EHLO, STARTTLS, AUTH, RSET, QUIT and every send that is not a plain ASCII one.

_RCPT_OK = (SMTPStatus.completed, SMTPStatus.will_forward)
# A dot-atom address: aiosmtplib's quote_address gives exactly "<address>" for it. Anything else
# (quoted local parts, display names, non-ASCII) takes aiosmtplib's own path.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\Z")


class PipeliningProtocol(aiosmtplib_protocol.SMTPProtocol):
    """aiosmtplib's protocol, plus `exchange`: write commands together, read their replies."""

    _pipelining = False

    def data_received(self, data: bytes) -> None:
        if not self._pipelining:
            super().data_received(data)
            return
        waiter = self._response_waiter
        if waiter is None:
            return
        self._buffer.extend(data)
        if not waiter.done() and b"\n" in data:
            waiter.set_result(None)  # type: ignore[arg-type]  # only a wake-up: exchange parses

    async def exchange(self, data: bytes, count: int, timeout: float | None
                       ) -> tuple[list[SMTPResponse], aiosmtplib.SMTPException | None]:
        """Write `data`, then read `count` replies in order. A lost connection or a timeout ends
        the reading: the replies read so far are returned with that error (with no reply at
        all, the error is raised)."""
        if self.transport is None or self._response_waiter is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        if self._buffer:  # bytes nobody asked for: the conversation is out of step
            raise aiosmtplib.SMTPResponseException(SMTPStatus.invalid_response, "Unexpected reply")
        replies: list[SMTPResponse] = []
        deadline: asyncio.Timeout | None = None
        self._pipelining = self._response_pending = True
        try:
            if self._response_waiter.done():
                self._response_waiter = self._loop.create_future()
            self.write(data)
            # One deadline for the exchange (`timeout` per reply expected), not one timer per reply.
            async with asyncio.timeout(None if timeout is None else timeout * count) as deadline:
                while len(replies) < count:
                    try:
                        replies.append(await self._next_reply())
                    except aiosmtplib.SMTPServerDisconnected as exc:
                        if not replies:
                            raise
                        return replies, exc
        except TimeoutError as exc:
            if deadline is None or not deadline.expired():
                raise
            timed_out = aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response")
            if not replies:
                raise timed_out from exc
            return replies, timed_out
        finally:
            self._pipelining = self._response_pending = False
            if self.transport is not None and (self._response_waiter is None
                                               or self._response_waiter.done()):
                self._response_waiter = self._loop.create_future()
        return replies, None

    async def _next_reply(self) -> SMTPResponse:
        while True:
            if len(self._buffer) > aiosmtplib_protocol.MAX_RESPONSE_LENGTH:
                raise aiosmtplib.SMTPResponseException(SMTPStatus.invalid_response, "Response too long")
            reply = self._read_response_from_buffer()
            if reply is not None:
                return reply
            waiter = self._response_waiter
            if waiter is None or self.transport is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            if waiter.done():
                waiter.result()  # raises when the connection was lost or the server closed it
                waiter = self._response_waiter = self._loop.create_future()
            await waiter


def _install_pipelining() -> None:
    """aiosmtplib builds its protocol by this name at connect time; the subclass is a drop-in."""
    from aiosmtplib import smtp

    if smtp.SMTPProtocol is aiosmtplib_protocol.SMTPProtocol:
        smtp.SMTPProtocol = PipeliningProtocol  # type: ignore[misc]


_install_pipelining()


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
