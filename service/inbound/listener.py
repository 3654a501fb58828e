"""`communique inbound`: an aiosmtpd SMTP or LMTP server for the bounce/reply domain. The MTA
forwards that domain to it; each message is classified, acted on and stored before the final
dot's 250, so a database failure answers 451 and the MTA keeps the message and retries."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from service.config import Settings
from service.db import make_engine, make_session_factory
from service.delivery.smtp import SendResult
from service.errors import ConfigError
from service.inbound.replies import ForwardDeferred, receive_message

log = logging.getLogger(__name__)

STOP_POLL_SECONDS = 0.2
COMMAND_TIMEOUT_SECONDS = 60.0
MAX_RECIPIENTS = 50
FORWARD_TIMEOUT_SECONDS = 15 * 60.0  # a backstop: each SMTP step has its own limit


class InboundHandler:
    """aiosmtpd handler: accepts only the bounce and reply domains; processes each message in one
    database thread (one writer at a time, which SQLite needs and PostgreSQL does not mind at
    this rate). A reply is forwarded before its row is committed, so a relay that cannot take it
    now makes a 451 and the MTA's retry, never a stored reply that nobody received."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[DbSession],
                 executor: ThreadPoolExecutor, *, lmtp: bool) -> None:
        self.settings = settings
        self.domains = {address.rpartition("@")[2].lower()
                        for address in (settings.bounce_address, settings.reply_address) if address}
        self.domain = (settings.bounce_address or settings.reply_address).rpartition("@")[2].lower()
        self.session_factory = session_factory
        self.executor = executor
        self.lmtp = lmtp
        self.processed_count = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address.rpartition("@")[2].lower().rstrip(".") not in self.domains:
            return "550 5.1.2 this server accepts mail for its own domain only"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = bytes(envelope.original_content or b"")
        if len(raw) > self.settings.inbound_max_bytes:
            reply = "552 5.3.4 message too big"
        else:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self.executor, self._process, raw,
                                           list(envelope.rcpt_tos), envelope.mail_from, loop)
                reply = "250 2.0.0 OK"
            except SQLAlchemyError:
                log.exception("inbound: storing a message failed")
                reply = "451 4.3.0 temporary failure, try again later"
            except ForwardDeferred as exc:
                log.warning("inbound: forwarding a reply failed for now: %s", exc)
                reply = "451 4.4.0 forwarding the reply failed, try again later"
        # LMTP (RFC 2033 §4.2): one reply per accepted recipient.
        return "\r\n".join([reply] * max(1, len(envelope.rcpt_tos))) if self.lmtp else reply

    def _process(self, raw: bytes, rcpt_tos: list[str], mail_from: str | None,
                 loop: asyncio.AbstractEventLoop) -> None:
        def run(forward: Coroutine[Any, Any, SendResult]) -> SendResult:
            # The SMTP conversation runs on the listener's loop, free while this thread works.
            future = asyncio.run_coroutine_threadsafe(forward, loop)
            try:
                return future.result(timeout=FORWARD_TIMEOUT_SECONDS)
            except TimeoutError as exc:
                future.cancel()
                raise ForwardDeferred("forwarding a reply: no answer in time") from exc

        with self.session_factory() as db:
            try:
                receive_message(db, self.settings, raw, envelope_to=rcpt_tos,
                                envelope_from=mail_from, now=datetime.now(UTC), run=run)
                db.commit()
            except (SQLAlchemyError, ForwardDeferred):
                db.rollback()
                raise
        self.processed_count += 1


async def serve(settings: Settings, *, host: str, port: int, lmtp: bool, stop: threading.Event,
                on_started: Callable[[int], None] | None = None) -> int:
    """Listen until `stop` is set; returns how many messages were processed."""
    if not (settings.bounce_address or settings.reply_address):
        raise ConfigError("COMMUNIQUE_BOUNCE_ADDRESS: `communique inbound` needs the bounce "
                          "(or COMMUNIQUE_REPLY_ADDRESS) address whose domain it receives")
    engine = make_engine(settings.database_url)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inbound-db")
    handler = InboundHandler(settings, make_session_factory(engine), executor, lmtp=lmtp)
    protocol: Any = LMTP if lmtp else SMTP
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: protocol(handler, data_size_limit=settings.inbound_max_bytes,
                         timeout=COMMAND_TIMEOUT_SECONDS, hostname=handler.domain),
        host=host, port=port)
    bound_port = server.sockets[0].getsockname()[1]
    log.info("inbound: listening on %s:%d (%s) for @%s", host, bound_port,
             "LMTP" if lmtp else "SMTP", ", @".join(sorted(handler.domains)))
    if on_started is not None:
        on_started(bound_port)
    try:
        while not stop.is_set():
            await asyncio.sleep(STOP_POLL_SECONDS)
    finally:
        server.close()
        await server.wait_closed()
        executor.shutdown(wait=True)
        engine.dispose()
        log.info("inbound: stopped after %d messages", handler.processed_count)
    return handler.processed_count


def run_listener(settings: Settings, *, host: str = "127.0.0.1", port: int = 2525, lmtp: bool = False,
                 stop: threading.Event | None = None,
                 on_started: Callable[[int], None] | None = None) -> int:
    """Run the listener until SIGTERM/SIGINT (in the main thread) or `stop` is set."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: stop.set())
    return asyncio.run(serve(settings, host=host, port=port, lmtp=lmtp, stop=stop,
                             on_started=on_started))
