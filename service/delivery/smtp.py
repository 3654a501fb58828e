"""SMTP connections (aiosmtplib) reused for many messages, and the rule that turns every reply or
error into a value: sent, deferred (temporary), failed or bounced (permanent)."""

from __future__ import annotations

import asyncio
import functools
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

from service.config import Settings
from service.models import DeliveryOutcome

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
    `smtp_messages_per_connection` messages.

    On a relay that offers PIPELINING, `send(..., then=next_envelope)` writes the next message's
    MAIL, RCPT and DATA right behind this message's content (RFC 2920 allows commands after the
    end of data): one write and one round trip per message. The next message's envelope is then
    open (`is_open_for`), refused (`then_result`), or was not tried (neither)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: aiosmtplib.SMTP | None = None
        self.sent_count = 0
        self.then_result: SendResult | None = None  # the refusal of the last `then` envelope
        self._open: tuple[str, str] | None = None  # (from, to) whose DATA got 354, content due
        self._pipelined = False  # PIPELINING offered and our protocol in place
        self._size = False  # SIZE offered

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
        self._pipelined = (client.supports_extension("pipelining")
                           and isinstance(client.protocol, PipeliningProtocol))
        self._size = client.supports_extension("size")

    async def close(self, *, polite: bool = False) -> None:
        """Close; `polite` says QUIT first, except with an envelope open (QUIT would be taken as
        message content): then the connection is dropped and the relay discards that message."""
        client, self.client = self.client, None
        opened, self._open = self._open, None
        if client is None:
            return
        if polite and opened is None and client.is_connected:
            try:
                await client.quit()
                return
            except (aiosmtplib.SMTPException, OSError):
                pass  # closing anyway
        client.close()

    @property
    def is_open(self) -> bool:
        return self._open is not None

    def is_open_for(self, envelope_from: str, address: str) -> bool:
        return self._open == (envelope_from, address) and self.client is not None

    def can_chain(self, envelope_from: str, address: str) -> bool:
        """Could a message to `address` have its envelope written behind the next content?"""
        return (self._pipelined and self.client is not None
                and self.sent_count + 1 < self.settings.smtp_messages_per_connection
                and _simple_address(envelope_from) and _SIMPLE_ADDRESS.match(address) is not None)

    async def send(self, envelope_from: str, address: str, data: bytes, *,
                   before_data: Awaitable[Any] | None = None, wire: bool = False,
                   then: tuple[str, str, int] | None = None) -> SendResult:
        """One message to one recipient; never raises for SMTP or network trouble. `before_data`
        is awaited between RCPT and DATA: the worker passes the recording of this connection's
        previous message, so MAIL and RCPT overlap with it, yet at most one accepted message per
        connection is ever unrecorded. `wire=True` says `data` is already in its DATA form: CRLF
        line ends, dot-stuffed, ending with ".\r\n" (render_bytes(wire=True)), so it is not checked
        or copied again.
        `then` = (from, to, size) of the next message, chained when `can_chain` said so."""
        self.then_result = None
        if self._open is not None and self._open != (envelope_from, address):
            await self.close()  # an envelope open for another message: this one cannot follow
        if self.client is not None and (not self.client.is_connected or (
                self._open is None and self.sent_count >= self.settings.smtp_messages_per_connection)):
            await self.close(polite=True)  # (an open envelope is never closed politely)
        if self.client is None:
            try:
                await self.connect()
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                await self.close()
                return _no_reply(exc, relay_down=True)
        client = self.client
        assert client is not None
        self.sent_count += 1
        if self._open is not None or (self._pipelined and _simple_address(envelope_from)
                                      and _SIMPLE_ADDRESS.match(address)):
            return await self._send_pipelined(client.protocol, envelope_from, address, data,  # type: ignore[arg-type]
                                              before_data, wire, then)
        if wire:  # aiosmtplib stuffs and ends the data itself
            data = _unstuff(data)
        options, encoding = [], "ascii"
        if not (address.isascii() and envelope_from.isascii()):
            if not client.supports_extension("smtputf8"):
                return SendResult(DeliveryOutcome.failed, None, "the relay does not accept non-ASCII "
                                  "addresses (no SMTPUTF8)", "SMTPNotSupported")
            options, encoding = ["SMTPUTF8"], "utf-8"
        if self._size:
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
        await self._after_refusal(result)
        return result

    async def _after_refusal(self, result: SendResult) -> None:
        if result.reconnect:
            await self.close()
        else:
            await self._reset()

    def _envelope(self, envelope_from: str, address: str, size: int) -> bytes:
        size_option = b" SIZE=%d" % size if self._size else b""
        return b"".join((b"MAIL FROM:<", envelope_from.encode("ascii"), b">", size_option,
                         b"\r\nRCPT TO:<", address.encode("ascii"), b">\r\nDATA\r\n"))

    async def _send_pipelined(self, protocol: PipeliningProtocol, envelope_from: str, address: str,
                              data: bytes, before_data: Awaitable[Any] | None, wire: bool,
                              then: tuple[str, str, int] | None) -> SendResult:
        """RFC 2920: MAIL, RCPT and DATA in one write, their replies read in order (skipped when
        the previous send already opened this envelope); the content goes only after 354, and
        only once `before_data` is done, with the `then` envelope behind it. Codes, replies and
        error types are those of the one-command-at-a-time path."""
        timeout = self.settings.smtp_timeout_seconds
        try:
            if self._open is None:
                replies, error = await protocol.exchange(
                    self._envelope(envelope_from, address, len(data)), 3, timeout)
                refused = await self._open_envelope(replies, error, envelope_from, address)
                if refused is not None:
                    await self._after_refusal(refused)
                    return refused
            self._open = None
            if before_data is not None:
                await before_data
            if wire:
                content = data
            else:
                data = aiosmtplib_protocol.normalize_message_line_endings(data)
                content = aiosmtplib_protocol.PERIOD_REGEX.sub(b"..", data) + b".\r\n"
            if then is not None and self.client is not None:
                replies, error = await protocol.exchange(content + self._envelope(*then), 4, timeout)
            else:
                then = None
                replies, error = await protocol.exchange(content, 1, timeout)  # raises if no reply
        except aiosmtplib.SMTPResponseException as exc:  # a reply we cannot read
            result = classify_reply(exc.code, exc.message, type(exc).__name__)
            await self._after_refusal(result)
            return result
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            return _no_reply(exc)
        response = replies[0]
        if response.code == SMTPStatus.completed:
            result = SendResult(DeliveryOutcome.sent, response.code, response.message[:1000])
        else:
            result = classify_reply(response.code, response.message, "SMTPDataError")
        if then is not None and error is None and not result.reconnect:
            self.then_result = await self._open_envelope(replies[1:], None, then[0], then[1])
            if self.then_result is not None:
                await self._after_refusal(self.then_result)
        elif error is not None or result.reconnect:
            await self.close()  # a `then` envelope whose replies did not all come: not tried
        return result

    async def _open_envelope(self, replies: list[SMTPResponse], error: aiosmtplib.SMTPException | None,
                             envelope_from: str, address: str) -> SendResult | None:
        """The replies to MAIL, RCPT, DATA: None when DATA got 354 (the envelope is now open),
        else the refusal. Out of step (a reply missing, or 354 for a refused envelope), the
        connection is closed: a refusal read before it still counts."""
        mail, rcpt, start = replies + [None] * (3 - len(replies))
        if error is not None or (mail is not None and rcpt is not None and start is not None
                                 and start.code == SMTPStatus.start_input
                                 and (mail.code != SMTPStatus.completed or rcpt.code not in _RCPT_OK)):
            await self.close()
        if mail is not None and mail.code != SMTPStatus.completed:
            return classify_reply(mail.code, mail.message, "SMTPSenderRefused")
        if rcpt is not None and rcpt.code not in _RCPT_OK:
            return classify_reply(rcpt.code, rcpt.message, "SMTPRecipientRefused")
        if error is not None:
            return _no_reply(error)
        assert start is not None
        if start.code != SMTPStatus.start_input:
            return classify_reply(start.code, start.message, "SMTPDataError")
        self._open = (envelope_from, address)
        return None

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


_STUFFED = re.compile(rb"(?m)^\.\.")


def _unstuff(wire: bytes) -> bytes:
    """The message back from its DATA form (for aiosmtplib, which stuffs and ends it itself)."""
    return _STUFFED.sub(b".", wire[:-3] if wire.endswith(b"\r\n.\r\n") else wire)


@functools.lru_cache(maxsize=64)
def _simple_address(address: str) -> bool:
    """For the envelope sender: the same few addresses on every message."""
    return _SIMPLE_ADDRESS.match(address) is not None


class PipeliningProtocol(aiosmtplib_protocol.SMTPProtocol):
    """aiosmtplib's protocol, plus `exchange`: write commands together, read their replies.

    During an exchange, replies are parsed as bytes arrive and the exchange is woken once, when
    all of them are in; its deadline is one timer for the whole exchange."""

    _pipelining = False
    _wanted = 0
    _replies: list[SMTPResponse]
    _exchange_waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        if not self._pipelining:
            super().data_received(data)
            return
        self._buffer.extend(data)
        waiter = self._exchange_waiter
        if waiter is None or waiter.done() or b"\n" not in data:
            return
        try:
            while len(self._replies) < self._wanted:
                reply = self._next_reply()
                if reply is None:
                    break
                self._replies.append(reply)
        except aiosmtplib.SMTPException as exc:
            _fail(waiter, exc)
            return
        if len(self._replies) >= self._wanted:
            waiter.set_result(None)
        elif len(self._buffer) > aiosmtplib_protocol.MAX_RESPONSE_LENGTH:
            _fail(waiter, aiosmtplib.SMTPResponseException(SMTPStatus.invalid_response,
                                                           "Response too long"))

    def _next_reply(self) -> SMTPResponse | None:
        """One complete reply from the buffer, or None. A one-line reply (nearly all of them) is
        read here; anything else by aiosmtplib's own parser."""
        buffer = self._buffer
        end = buffer.find(b"\n")
        if end < 0:
            return None
        if buffer[3:4] == b"-" or end >= aiosmtplib_protocol.MAX_LINE_LENGTH or not buffer[:3].isdigit():
            return self._read_response_from_buffer()
        reply = SMTPResponse(int(buffer[:3]), bytes(buffer[4:end]).strip(b" \t\r\n")
                             .decode("utf-8", "surrogateescape"))
        del buffer[:end + 1]
        return reply

    def connection_lost(self, exc: Exception | None) -> None:
        if self._exchange_waiter is not None and not self._exchange_waiter.done():
            error = aiosmtplib.SMTPServerDisconnected("Connection lost")
            error.__cause__ = exc
            _fail(self._exchange_waiter, error)
        super().connection_lost(exc)

    def eof_received(self) -> bool:
        if self._exchange_waiter is not None and not self._exchange_waiter.done():
            _fail(self._exchange_waiter, aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return super().eof_received()

    async def exchange(self, data: bytes, count: int, timeout: float | None
                       ) -> tuple[list[SMTPResponse], aiosmtplib.SMTPException | None]:
        """Write `data`, then read `count` replies in order. A lost connection or a timeout ends
        the reading: the replies read so far are returned with that error (with no reply at
        all, the error is raised)."""
        if self.transport is None or self._response_waiter is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        if self._buffer:  # bytes nobody asked for: the conversation is out of step
            raise aiosmtplib.SMTPResponseException(SMTPStatus.invalid_response, "Unexpected reply")
        waiter = self._exchange_waiter = self._loop.create_future()
        replies: list[SMTPResponse] = []
        self._replies, self._wanted, self._pipelining = replies, count, True
        timer = None
        try:
            self.write(data)
            if timeout is not None:  # `timeout` per reply expected, one timer for them all
                timer = self._loop.call_later(timeout * count, _fail, waiter,
                                              aiosmtplib.SMTPReadTimeoutError(
                                                  "Timed out waiting for server response"))
            try:
                await waiter
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPReadTimeoutError) as exc:
                if not replies:
                    raise
                return replies, exc
        finally:
            if timer is not None:
                timer.cancel()
            self._pipelining, self._exchange_waiter = False, None
            if self.transport is not None and (self._response_waiter is None
                                               or self._response_waiter.done()):
                self._response_waiter = self._loop.create_future()
        return replies, None


def _fail(waiter: asyncio.Future[None], error: BaseException) -> None:
    """Fail an exchange (once), its exception marked as retrieved: the exchange may be gone."""
    if not waiter.done():
        waiter.set_exception(error)
        waiter.exception()


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
