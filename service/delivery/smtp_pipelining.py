"""RFC 2920 pipelining on one aiosmtplib connection: the only module that works below
aiosmtplib's public methods, so the only one to re-check when aiosmtplib changes.

Written for aiosmtplib 5.1 (`TESTED_AIOSMTPLIB`, pinned the same in pyproject.toml). aiosmtplib
writes one command and waits for its reply: four round trips per message. Its protocol drops bytes
that arrive while no command waits, so replies to commands written together would be lost; and
3.x to 5.0 differed in exactly those private parts (`_buffer`, `_response_waiter`,
`MAX_RESPONSE_LENGTH`). So this module uses none of them. During one exchange a `Pipeline` takes
the connection's transport over with asyncio's public `transport.set_protocol`, writes the
commands, reads the replies itself, and hands the transport back to aiosmtplib's protocol, which
never notices: connect, EHLO, STARTTLS, AUTH, RSET, QUIT and every non-pipelined send stay
aiosmtplib's own. Nothing in aiosmtplib is replaced, so any other aiosmtplib user in the process
gets stock aiosmtplib.

What it relies on, checked by `attach` at each connect (a mismatch logs one warning and the caller
uses aiosmtplib's public path) and by tests/test_smtp_fence.py: the connected client's `transport`
attribute is the live asyncio transport and `protocol` the protocol it currently feeds."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiosmtplib
from aiosmtplib import SMTPResponse, SMTPStatus

log = logging.getLogger(__name__)

TESTED_AIOSMTPLIB = ">=5.1,<5.2"
# RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; these are aiosmtplib 5.1's own, generous
# limits, kept equal so a reply it would accept is accepted here too.
MAX_LINE_LENGTH = 8192
MAX_RESPONSE_LENGTH = MAX_LINE_LENGTH * 4

_warned = False


def attach(client: aiosmtplib.SMTP) -> Pipeline | None:
    """A pipeline on the connected `client`, or None (one warning per process) when this
    aiosmtplib does not have the shape this module was written for."""
    global _warned
    protocol = getattr(client, "protocol", None)
    transport: Any = getattr(client, "transport", None)
    # uvloop's transports are not asyncio.Transport subclasses: check what is used, by name.
    if (isinstance(protocol, asyncio.BaseProtocol)
            and all(callable(getattr(transport, name, None))
                    for name in ("get_protocol", "set_protocol", "write", "is_closing"))
            and not transport.is_closing() and transport.get_protocol() is protocol):
        return Pipeline(protocol, transport)
    if not _warned:
        _warned = True
        log.warning("aiosmtplib %s: connected client has no transport feeding its protocol (written "
                    "for %s); sending one command at a time", aiosmtplib.__version__, TESTED_AIOSMTPLIB)
    return None


class Pipeline(asyncio.Protocol):
    """`exchange`: write commands together, read their replies in order.

    During an exchange, replies are parsed as bytes arrive and the exchange is woken once, when
    all of them are in; each reply has its own deadline (one timer, moved on per reply). The connection's own
    events (lost, end of file, flow control) are passed on to aiosmtplib's protocol as they come."""

    def __init__(self, protocol: asyncio.BaseProtocol, transport: Any) -> None:
        self._protocol: Any = protocol
        self._transport: asyncio.Transport = transport
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._replies: list[SMTPResponse] = []
        self._wanted = 0
        self._waiter: asyncio.Future[None] | None = None
        self._timeouts: tuple[float | None, ...] = ()
        self._timer: asyncio.TimerHandle | None = None
        self._timed = 0  # the reply the running timer is for

    # ---- asyncio.Protocol, while the exchange holds the transport ------------------------------
    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer.extend(data)
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if b"\n" in data:
            try:
                while len(self._replies) < self._wanted:
                    reply = self._next_reply()
                    if reply is None:
                        break
                    self._replies.append(reply)
            except aiosmtplib.SMTPResponseException as exc:
                _fail(waiter, exc)
                return
            if len(self._replies) >= self._wanted:
                waiter.set_result(None)
                return
            if len(self._replies) != self._timed:
                self._start_timer()  # the next reply has its own limit, from now
        if len(buffer) > MAX_RESPONSE_LENGTH:
            _fail(waiter, aiosmtplib.SMTPResponseException(SMTPStatus.invalid_response, "Response too long"))

    def eof_received(self) -> bool | None:
        if self._waiter is not None:
            _fail(self._waiter, aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return self._protocol.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            error = aiosmtplib.SMTPServerDisconnected("Connection lost")
            error.__cause__ = exc
            _fail(self._waiter, error)
        self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()

    # ---- the exchange --------------------------------------------------------------------------
    async def exchange(self, data: bytes, timeouts: tuple[float | None, ...]
                       ) -> tuple[list[SMTPResponse], aiosmtplib.SMTPException | None]:
        """Write `data`, then read one reply per entry of `timeouts`, in order. Each reply has its
        own limit, counted from the previous reply (RFC 5321 §4.5.3.2: a limit per command, the
        final dot's own 10 minutes), never one budget shared by all. A lost connection or a
        timeout ends the reading: the replies read so far are returned with that error (with no
        reply at all, the error is raised)."""
        transport = self._transport
        if transport.is_closing() or transport.get_protocol() is not self._protocol:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        if self._buffer:  # bytes nobody asked for: the conversation is out of step
            raise aiosmtplib.SMTPResponseException(SMTPStatus.invalid_response, "Unexpected reply")
        waiter = self._waiter = self._loop.create_future()
        replies: list[SMTPResponse] = []
        self._replies, self._wanted, self._timeouts = replies, len(timeouts), timeouts
        transport.set_protocol(self)
        try:
            transport.write(data)
            self._start_timer()
            try:
                await waiter
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPReadTimeoutError) as exc:
                if not replies:
                    raise
                return replies, exc
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._waiter = None
            transport.set_protocol(self._protocol)
        return replies, None

    def _start_timer(self) -> None:
        """The limit of the next reply expected (one timer at a time, replaced per reply)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timed = index = len(self._replies)
        timeout = self._timeouts[index] if index < len(self._timeouts) else None
        if timeout is not None and self._waiter is not None:
            self._timer = self._loop.call_later(timeout, _fail, self._waiter, aiosmtplib.SMTPReadTimeoutError(
                "Timed out waiting for server response"))

    def _next_reply(self) -> SMTPResponse | None:
        """One complete reply from the buffer, or None. One-line replies (nearly all of them)
        take the short way."""
        buffer = self._buffer
        end = buffer.find(b"\n")
        if end < 0:
            return None
        if buffer[3:4] == b"-" or end >= MAX_LINE_LENGTH or not buffer[:3].isdigit():
            return self._next_multiline_reply()
        reply = SMTPResponse(int(buffer[:3]), bytes(buffer[4:end]).strip(b" \t\r\n")
                             .decode("utf-8", "surrogateescape"))
        del buffer[:end + 1]
        return reply

    def _next_multiline_reply(self) -> SMTPResponse | None:
        """RFC 5321 §4.2.1: "250-" lines, then "250 "; the texts joined with newlines, as
        aiosmtplib joins them, and the same errors for a line too long or without a code."""
        buffer = self._buffer
        code, message, offset = -1, bytearray(), 0
        while True:
            end = buffer.find(b"\n", offset)
            if end < 0:
                return None
            line = bytes(buffer[offset:end + 1])
            if len(line) > MAX_LINE_LENGTH:
                raise aiosmtplib.SMTPResponseException(SMTPStatus.invalid_response, "Response too long")
            try:
                code = int(line[:3])
            except ValueError:
                raise aiosmtplib.SMTPResponseException(
                    SMTPStatus.invalid_response,
                    f"Malformed SMTP response line: {line.decode('utf-8', errors='ignore')}") from None
            offset = end + 1
            if message:
                message.extend(b"\n")
            message.extend(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                break
        del buffer[:offset]
        return SMTPResponse(code, bytes(message).decode("utf-8", "surrogateescape"))


def _fail(waiter: asyncio.Future[None], error: BaseException) -> None:
    """Fail an exchange (once), its exception marked as retrieved: the exchange may be gone."""
    if not waiter.done():
        waiter.set_exception(error)
        waiter.exception()
