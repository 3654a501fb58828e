"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, a recording handler, faults injected
server-side (replies chosen per recipient, a dropped connection during DATA, a slow server).
It counts transactions as they start (MAIL) and as their content arrives, so a test can tell what
began after a given moment."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore


@dataclass
class Fault:
    """Answer `code reply` at RCPT for this recipient, `times` times (None: always)."""

    code: int
    reply: str
    times: int | None = None
    at: str = "rcpt"  # "rcpt", "mail" (reply to MAIL FROM), "data" (reply after DATA) or "drop"


class RecordingHandler:
    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.faults: dict[str, Fault] = {}
        self.delay_seconds = 0.0  # a slow relay: wait this long before answering the content
        self.mail_count = 0  # transactions started (MAIL commands)
        self.content_count = 0  # transactions past DATA (content received, reply maybe not yet sent)
        self.connections = 0
        self.pipelining = False  # advertise PIPELINING (RFC 2920) in the EHLO reply
        self.pipelined_count = 0  # RCPTs that arrived with the DATA command already written behind
        self.chained_count = 0  # contents that arrived with the next MAIL already written behind
        self.messages_per_connection = 0  # >0: 421 at MAIL after this many messages on a connection
        self.refuse_connections = 0  # the next this many connections get 421 at the greeting
        self.refused_connections = 0
        self.smtputf8 = True  # advertise SMTPUTF8; False: an ASCII-only relay
        self.lock = threading.Lock()

    def fail(self, address: str, code: int, reply: str, times: int | None = None,
             at: str = "rcpt") -> None:
        self.faults[address.lower()] = Fault(code, reply, times, at)

    def _take_fault(self, address: str, at: str) -> Fault | None:
        with self.lock:
            fault = self.faults.get(address.lower())
            if fault is None or fault.at != at:
                return None
            if fault.times is not None:
                if fault.times <= 0:
                    return None
                fault.times -= 1
            return fault

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.connections += 1
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        if not self.smtputf8:
            responses = [r for r in responses if "SMTPUTF8" not in r.upper()]
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        with self.lock:
            self.mail_count += 1
        limit = self.messages_per_connection
        if limit and getattr(session, "delivered_count", 0) >= limit:
            return "421 4.7.0 Too many messages on this connection, closing"
        fault = self._take_fault(address, "mail")
        if fault is not None:
            return f"{fault.code} {fault.reply}"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        waiting = getattr(getattr(server, "_reader", None), "_buffer", b"")
        if bytes(waiting).upper().startswith(b"DATA\r\n"):
            with self.lock:
                self.pipelined_count += 1
        fault = self._take_fault(address, "rcpt")
        if fault is not None:
            return f"{fault.code} {fault.reply}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        waiting = getattr(getattr(server, "_reader", None), "_buffer", b"")
        if bytes(waiting[:10]).upper().startswith(b"MAIL FROM:"):
            with self.lock:
                self.chained_count += 1
        with self.lock:
            self.content_count += 1
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        for address in envelope.rcpt_tos:
            if self._take_fault(address, "drop") is not None:
                assert server.transport is not None
                server.transport.abort()
                return "421 dropped"
            fault = self._take_fault(address, "data")
            if fault is not None:
                return f"{fault.code} {fault.reply}"
        session.delivered_count = getattr(session, "delivered_count", 0) + 1  # type: ignore[attr-defined]
        with self.lock:
            self.messages.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos),
                                          bytes(envelope.original_content or b"")))
        return "250 Message accepted"

    # ---- what the tests read -------------------------------------------
    def received_by(self, address: str) -> list[Received]:
        return [m for m in self.messages if address.lower() in (r.lower() for r in m.rcpt_tos)]

    def recipient_counts(self) -> Counter[str]:
        return Counter(r.lower() for m in self.messages for r in m.rcpt_tos)


class _FaultySMTP(SMTP):
    """aiosmtpd's server, able to refuse a connection at the greeting (421, then close)."""

    async def _handle_client(self) -> None:
        handler = self.event_handler
        with handler.lock:
            refuse = handler.refuse_connections > 0
            if refuse:
                handler.refuse_connections -= 1
                handler.refused_connections += 1
        if refuse:
            await self.push("421 4.3.2 Service not available, try later")
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _FaultySMTP(self.handler, **self.SMTP_kwargs)


@dataclass
class SmtpServer:
    handler: RecordingHandler
    host: str
    port: int
    controller: Any = field(repr=False)

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    def stop(self) -> None:
        self.controller.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_smtp_server(handler: RecordingHandler | None = None) -> SmtpServer:
    handler = handler or RecordingHandler()
    port = free_port()
    controller = _Controller(handler, hostname="127.0.0.1", port=port,
                            data_size_limit=50 * 1024 * 1024, ready_timeout=10)
    controller.start()
    return SmtpServer(handler, "127.0.0.1", port, controller)
