"""SMTP connections (aiosmtplib) reused for many messages, and the rule that turns every reply or
error into a value: sent, deferred (temporary), failed or bounced (permanent). Only public
aiosmtplib here; pipelining, which needs more, is fenced in smtp_pipelining."""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import aiosmtplib
from aiosmtplib import SMTPResponse, SMTPStatus

from service.config import Settings
from service.delivery import smtp_pipelining
from service.errors import RenderError
from service.models import DeliveryOutcome
from service.rendering.mime import ascii_address

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


def classify_reply(code: int, reply: str, error_type: str | None = None, *,
                   size: int | None = None) -> SendResult:
    """2xx sent; 4xx temporary; 5xx permanent, 5.1.x bounced (no such user). 552 is temporary
    only at RCPT (RFC 5321 §4.5.3.1.10: too many recipients); at MAIL or after DATA it is the
    message size, permanent: the reply then says the size we sent (`size`, in bytes)."""
    reply = (reply or "").strip()[:1000]
    if 200 <= code < 300:
        return SendResult(DeliveryOutcome.sent, code, reply)
    if 400 <= code < 500 or (code == 552 and error_type == "SMTPRecipientRefused"):
        return SendResult(DeliveryOutcome.deferred, code, reply, error_type,
                          reconnect=code in RECONNECT_CODES)
    if code == 552 and size is not None:
        reply = f"{reply[:900]} (the message is {size} bytes)"
    if code >= 500 and BAD_MAILBOX.match(reply):
        return SendResult(DeliveryOutcome.bounced, code, reply, error_type)
    if code >= 500:
        return SendResult(DeliveryOutcome.failed, code, reply, error_type)
    # A reply outside 2xx-5xx is a broken conversation: treat it as temporary and reconnect.
    return SendResult(DeliveryOutcome.deferred, code, reply, error_type, reconnect=True)


def is_connection_limit(result: SendResult) -> bool:
    """421 to MAIL: the relay closes this connection before the transaction (its limit of
    messages per connection); the message was not taken and may go at once on a new connection.
    (A 421 at RCPT is about that recipient: it keeps the retry schedule.)"""
    return result.smtp_code == 421 and result.error_type == "SMTPSenderRefused"


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
        self._pipeline: smtp_pipelining.Pipeline | None = None  # PIPELINING offered and allowed
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
        if self.settings.smtp_pipelining == "auto" and client.supports_extension("pipelining"):
            self._pipeline = smtp_pipelining.attach(client)
        self._size = client.supports_extension("size")

    async def close(self, *, polite: bool = False) -> None:
        """Close; `polite` says QUIT first, except with an envelope open (QUIT would be taken as
        message content): then the connection is dropped and the relay discards that message."""
        client, self.client = self.client, None
        opened, self._open = self._open, None
        self._pipeline = None
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
        return (self._pipeline is not None and self.client is not None
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
        `then` = (from, to, size) of the next message, chained when `can_chain` said so.

        A 421 at MAIL on a connection that has delivered messages is the relay's limit of
        messages per connection: the message is tried once more at once, on a new connection."""
        reused = self.client is not None and self.sent_count > 0 and self._open is None
        result = await self._send_once(envelope_from, address, data, before_data, wire, then)
        if reused and is_connection_limit(result):
            result = await self._send_once(envelope_from, address, data, before_data, wire, then)
        return result

    async def _send_once(self, envelope_from: str, address: str, data: bytes,
                         before_data: Awaitable[Any] | None, wire: bool,
                         then: tuple[str, str, int] | None) -> SendResult:
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
        if not (address.isascii() and envelope_from.isascii()) and not client.supports_extension("smtputf8"):
            envelope_from, address = _a_labels(envelope_from), _a_labels(address)  # IDN: punycode
        self.sent_count += 1
        pipeline = self._pipeline
        if pipeline is not None and (self._open is not None or (
                _simple_address(envelope_from) and _SIMPLE_ADDRESS.match(address))):
            return await self._send_pipelined(pipeline, envelope_from, address, data, before_data,
                                              wire, then)
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
            response = await client.data(data, timeout=self.settings.smtp_data_timeout_seconds)
            return SendResult(DeliveryOutcome.sent, response.code, response.message[:1000])
        except aiosmtplib.SMTPResponseException as exc:  # MAIL, RCPT or DATA refused
            result = classify_reply(exc.code, exc.message, type(exc).__name__, size=len(data))
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

    async def _send_pipelined(self, pipeline: smtp_pipelining.Pipeline, envelope_from: str, address: str,
                              data: bytes, before_data: Awaitable[Any] | None, wire: bool,
                              then: tuple[str, str, int] | None) -> SendResult:
        """RFC 2920: MAIL, RCPT and DATA in one write, their replies read in order (skipped when
        the previous send already opened this envelope); the content goes only after 354, and
        only once `before_data` is done, with the `then` envelope behind it. Codes, replies and
        error types are those of the one-command-at-a-time path."""
        timeout = self.settings.smtp_timeout_seconds
        # Each reply its own limit (RFC 5321 §4.5.3.2): a command's, or the final dot's long one.
        envelope_timeouts = (timeout, timeout, timeout)
        dot_timeout = self.settings.smtp_data_timeout_seconds
        try:
            if self._open is None:
                replies, error = await pipeline.exchange(
                    self._envelope(envelope_from, address, len(data)), envelope_timeouts)
                refused = await self._open_envelope(replies, error, envelope_from, address, len(data))
                if refused is not None:
                    await self._after_refusal(refused)
                    return refused
            self._open = None
            if before_data is not None:
                await before_data
            content = data if wire else _data_form(data)
            if then is not None and self.client is not None:
                replies, error = await pipeline.exchange(content + self._envelope(*then),
                                                         (dot_timeout, *envelope_timeouts))
            else:
                then = None
                replies, error = await pipeline.exchange(content, (dot_timeout,))  # raises if no reply
        except aiosmtplib.SMTPResponseException as exc:  # a reply we cannot read
            result = classify_reply(exc.code, exc.message, type(exc).__name__, size=len(data))
            await self._after_refusal(result)
            return result
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            return _no_reply(exc)
        response = replies[0]
        if response.code == SMTPStatus.completed:
            result = SendResult(DeliveryOutcome.sent, response.code, response.message[:1000])
        else:
            result = classify_reply(response.code, response.message, "SMTPDataError", size=len(data))
        if then is not None and error is None and not result.reconnect:
            self.then_result = await self._open_envelope(replies[1:], None, then[0], then[1], then[2])
            if self.then_result is not None:
                await self._after_refusal(self.then_result)
        elif error is not None or result.reconnect:
            await self.close()  # a `then` envelope whose replies did not all come: not tried
        return result

    async def _open_envelope(self, replies: list[SMTPResponse], error: aiosmtplib.SMTPException | None,
                             envelope_from: str, address: str, size: int) -> SendResult | None:
        """The replies to MAIL, RCPT, DATA: None when DATA got 354 (the envelope is now open),
        else the refusal. Out of step (a reply missing, or 354 for a refused envelope), the
        connection is closed: a refusal read before it still counts."""
        mail, rcpt, start = replies + [None] * (3 - len(replies))
        if error is not None or (mail is not None and rcpt is not None and start is not None
                                 and start.code == SMTPStatus.start_input
                                 and (mail.code != SMTPStatus.completed or rcpt.code not in _RCPT_OK)):
            await self.close()
        if mail is not None and mail.code != SMTPStatus.completed:
            return classify_reply(mail.code, mail.message, "SMTPSenderRefused", size=size)
        if rcpt is not None and rcpt.code not in _RCPT_OK:
            return classify_reply(rcpt.code, rcpt.message, "SMTPRecipientRefused")
        if error is not None:
            return _no_reply(error)
        assert start is not None
        if start.code != SMTPStatus.start_input:
            return classify_reply(start.code, start.message, "SMTPDataError", size=size)
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


# ---- pipelining (RFC 2920): what goes on the wire; the exchange itself is smtp_pipelining's ----

_RCPT_OK = (SMTPStatus.completed, SMTPStatus.will_forward)
# A dot-atom address: aiosmtplib's quote_address gives exactly "<address>" for it. Anything else
# (quoted local parts, display names, non-ASCII) takes aiosmtplib's own path.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\Z")


_STUFFED = re.compile(rb"(?m)^\.\.")
_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")
_LINE_START_DOT = re.compile(rb"(?m)^\.")


def _data_form(message: bytes) -> bytes:
    """RFC 5321 §4.5.2: CRLF line ends, a leading dot doubled, ".\r\n" at the end; the bytes
    aiosmtplib's DATA writes. Checked at C speed first: the regexes cost ~0.15 ms on an 11 KB
    message, and ours are nearly always in shape already."""
    crlf = message.count(b"\r\n")
    if not (message.count(b"\n") == crlf and message.count(b"\r") == crlf and message.endswith(b"\r\n")):
        message = _LINE_END.sub(b"\r\n", message)
        if not message.endswith(b"\r\n"):
            message += b"\r\n"
    if message.startswith(b".") or b"\n." in message:
        message = _LINE_START_DOT.sub(b"..", message)
    return message + b".\r\n"


def _unstuff(wire: bytes) -> bytes:
    """The message back from its DATA form (for aiosmtplib, which stuffs and ends it itself)."""
    return _STUFFED.sub(b".", wire[:-3] if wire.endswith(b"\r\n.\r\n") else wire)


def _a_labels(address: str) -> str:
    """An IDN domain as punycode (A-labels), for a relay without SMTPUTF8; an address that has no
    ASCII form (non-ASCII before the @) is left as it is, for the refusal below."""
    try:
        return ascii_address(address)
    except RenderError:
        return address


@functools.lru_cache(maxsize=64)
def _simple_address(address: str) -> bool:
    """The envelope sender is one RFC 5321 dot-atom (per message under VERP, so not cached)."""
    return _SIMPLE_ADDRESS.match(address) is not None
