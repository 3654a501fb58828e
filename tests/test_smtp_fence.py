"""The fence around pipelining: it works on the aiosmtplib it was written for, says so loudly when
aiosmtplib changes, leaves every other aiosmtplib user in the process stock, and
COMMUNIQUE_SMTP_PIPELINING=off sends through aiosmtplib's public path only."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP as ServerSession
from aiosmtpd.smtp import Envelope, Session
from aiosmtplib import SMTPResponse, SMTPStatus
from packaging.specifiers import SpecifierSet
from smtp_server import RecordingHandler, SmtpServer, start_smtp_server
from test_delivery import ledger, start

from service.delivery import smtp_pipelining
from service.delivery.smtp import SmtpConnection, _data_form
from service.delivery.worker import run_worker

ROOT = Path(__file__).resolve().parent.parent
RECHECK = ("re-read service/delivery/smtp_pipelining.py against the installed aiosmtplib "
           "(smtp.py: SMTP.protocol/.transport after connect; protocol.py: the reply parser and its "
           "limits), run tests/test_pipelining.py and tests/test_smtp_fence.py, then move "
           "TESTED_AIOSMTPLIB and the pin in pyproject.toml together")
# Lines that aiosmtplib's DATA changes: a leading dot, a bare LF, a lone CR, no final line end.
AWKWARD = b"Subject: dots\n\n.first line starts with a dot\n..two dots\nbare lf\rlone cr\r\nend"
AWKWARD_RECEIVED = (b"Subject: dots\r\n\r\n.first line starts with a dot\r\n..two dots\r\nbare lf\r\n"
                    b"lone cr\r\nend\r\n")


def _pinned_aiosmtplib() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for requirement in project["project"]["dependencies"]:
        if re.match(r"aiosmtplib\b", requirement):
            return requirement.removeprefix("aiosmtplib").strip()
    raise AssertionError("pyproject.toml does not list aiosmtplib")


def _send(settings, messages: list[tuple[str, bytes]]) -> list[tuple[str, int | None, str | None]]:  # type: ignore[no-untyped-def]
    async def scenario() -> list[tuple[str, int | None, str | None]]:
        connection = SmtpConnection(settings)
        try:
            results = [await connection.send("presse@example.org", address, data)
                       for address, data in messages]
        finally:
            await connection.close(polite=True)
        return [(str(r.outcome), r.smtp_code, r.smtp_reply) for r in results]

    return asyncio.run(scenario())


# ---- the aiosmtplib the fence was written for ---------------------------------------------------

def test_installed_aiosmtplib_is_the_one_the_fence_was_written_for() -> None:
    """pyproject.toml pins aiosmtplib to the range smtp_pipelining was written for, and the
    installed version is inside it."""
    pinned, installed = _pinned_aiosmtplib(), version("aiosmtplib")
    assert pinned == smtp_pipelining.TESTED_AIOSMTPLIB, (
        f"pyproject.toml pins aiosmtplib{pinned} but smtp_pipelining was written for "
        f"aiosmtplib{smtp_pipelining.TESTED_AIOSMTPLIB}: {RECHECK}")
    assert installed in SpecifierSet(pinned), (
        f"aiosmtplib {installed} is installed, outside aiosmtplib{pinned}: {RECHECK}")


def test_what_the_pipeline_relies_on_is_still_there(smtpd: SmtpServer) -> None:
    """Everything smtp_pipelining takes from aiosmtplib has the shape it was written for: after
    connect, `client.transport` feeds `client.protocol`, whose connection events can be passed on;
    replies, statuses and errors are built as used; the reply limits match aiosmtplib's own."""
    problems = []
    protocol_module = aiosmtplib.protocol
    for name, expected in (("MAX_LINE_LENGTH", smtp_pipelining.MAX_LINE_LENGTH),
                           ("MAX_RESPONSE_LENGTH", smtp_pipelining.MAX_RESPONSE_LENGTH)):
        if getattr(protocol_module, name, None) != expected:
            problems.append(f"aiosmtplib.protocol.{name} is {getattr(protocol_module, name, 'gone')}, "
                            f"smtp_pipelining.{name} is {expected}")
    for name in ("completed", "will_forward", "start_input", "invalid_response"):
        if not hasattr(SMTPStatus, name):
            problems.append(f"aiosmtplib.SMTPStatus.{name} is gone")
    if SMTPResponse(250, "OK")[:2] != (250, "OK") or SMTPResponse._fields[:2] != ("code", "message"):
        problems.append("aiosmtplib.SMTPResponse is no longer (code, message)")
    error = aiosmtplib.SMTPResponseException(550, "no")
    if (error.code, error.message) != (550, "no"):
        problems.append("aiosmtplib.SMTPResponseException(code, message) changed")
    for name in ("protocol", "transport"):
        if not hasattr(aiosmtplib.SMTP(), name):
            problems.append(f"aiosmtplib.SMTP has no {name} attribute")

    async def connected() -> None:
        client = aiosmtplib.SMTP(hostname=smtpd.host, port=smtpd.port, timeout=10)
        await client.connect()
        try:
            protocol, transport = client.protocol, client.transport
            if not isinstance(protocol, asyncio.Protocol):
                problems.append(f"client.protocol is {type(protocol)!r}, not an asyncio.Protocol")
            for name in ("connection_lost", "eof_received", "pause_writing", "resume_writing"):
                if not callable(getattr(protocol, name, None)):
                    problems.append(f"client.protocol.{name} is gone")
            if transport is None or transport.get_protocol() is not protocol:  # type: ignore[attr-defined]
                problems.append("client.transport does not feed client.protocol")
            pipeline = smtp_pipelining.attach(client)
            if pipeline is None:
                problems.append("attach() refused a connected client")
                return
            replies, exchange_error = await pipeline.exchange(b"NOOP\r\nNOOP\r\n", (10, 10))
            if [r.code for r in replies] != [250, 250] or exchange_error is not None:
                problems.append(f"a pipelined NOOP NOOP read {replies}, {exchange_error}")
            if transport.get_protocol() is not protocol:  # type: ignore[union-attr]
                problems.append("the transport was not handed back to aiosmtplib's protocol")
            if (await client.noop()).code != 250:
                problems.append("aiosmtplib's own command after an exchange failed")
        finally:
            await client.quit()

    asyncio.run(connected())
    assert not problems, f"aiosmtplib {aiosmtplib.__version__} changed: {'; '.join(problems)}. {RECHECK}"


def test_pipelined_content_is_byte_for_byte_what_aiosmtplib_data_writes() -> None:
    """The pipelined path's DATA form (line ends, dot-stuffing, final dot; checked fast first)
    equals what aiosmtplib's DATA puts on the wire for the same message."""
    def aiosmtplib_data_form(message: bytes) -> bytes:  # aiosmtplib 5.1's execute_data_command
        message = aiosmtplib.protocol.normalize_message_line_endings(message)
        return aiosmtplib.protocol.PERIOD_REGEX.sub(b"..", message) + b".\r\n"

    samples = [b"a\r\nb\r\n", b"a\nb", b"a\rb\r\n", b".start\r\n", b"x\r\n.y\r\n..z\r\n", b"no end",
               b"", b"\r\n", b"caf\xc3\xa9\r\n\r\n.\r\n", b"a\r\r\nb\n\r\n", b"\n.\r.", AWKWARD]
    for sample in samples:
        assert _data_form(sample) == aiosmtplib_data_form(sample), f"{sample!r}: {RECHECK}"


def test_an_aiosmtplib_without_that_shape_falls_back_with_one_warning() -> None:
    """When the client does not look as expected (here: not connected, no transport), attach
    gives no pipeline, so the caller uses aiosmtplib's public path; the warning comes once per
    process (a fresh one here), not once per connection."""
    script = """
import asyncio, logging, aiosmtplib
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
from service.delivery import smtp_pipelining
async def main():
    return [smtp_pipelining.attach(aiosmtplib.SMTP(hostname="127.0.0.1", port=1)) for _ in range(3)]
print(asyncio.run(main()))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[None, None, None]"
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "one command at a time" in warnings[0], result.stderr


# ---- other aiosmtplib users stay stock ----------------------------------------------------------

def test_importing_and_sending_changes_nothing_in_aiosmtplib(smtpd: SmtpServer, smtp_settings) -> None:  # type: ignore[no-untyped-def]
    """In a fresh process, aiosmtplib's modules and its protocol class hold the same objects
    before our modules are imported and after our pooled connections have sent pipelined."""
    smtpd.handler.pipelining = True
    script = f"""
import asyncio, dataclasses, json
import aiosmtplib, aiosmtplib.protocol, aiosmtplib.smtp

def snapshot():
    return {{name: {{key: id(value) for key, value in vars(owner).items()}} for name, owner in (
        ("protocol", aiosmtplib.protocol), ("smtp", aiosmtplib.smtp),
        ("SMTPProtocol", aiosmtplib.protocol.SMTPProtocol), ("SMTP", aiosmtplib.SMTP))}}

before = snapshot()
from service.config import Settings
from service.delivery.smtp import SmtpConnection, _data_form
imported = snapshot()

async def main():
    connection = SmtpConnection(Settings(smtp_host="127.0.0.1", smtp_port={smtpd.port}))
    try:
        return [str((await connection.send("presse@example.org", f"r{{i}}@example.net",
                                           b"Subject: x\\r\\n\\r\\n.dot\\r\\n")).outcome) for i in range(3)]
    finally:
        await connection.close(polite=True)

outcomes = asyncio.run(main())
print(json.dumps({{"outcomes": outcomes, "imported": imported == before, "sent": snapshot() == before}}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"outcomes": ["sent"] * 3, "imported": True, "sent": True}, result.stderr
    assert smtpd.handler.pipelined_count == 3, "our connections did pipeline"


def test_stock_aiosmtplib_beside_our_connections_behaves_as_stock(smtpd: SmtpServer, smtp_settings) -> None:  # type: ignore[no-untyped-def]
    """After our connections have sent pipelined in this process, a plain aiosmtplib.send and a
    plain aiosmtplib.SMTP use aiosmtplib's own protocol and DATA: one command at a time, the
    message's lines ended with CRLF and dot-stuffed (the server reads back the original)."""
    smtpd.handler.pipelining = True
    assert [outcome for outcome, _code, _reply in _send(smtp_settings, [
        ("ours@example.net", b"Subject: ours\r\n\r\n.dot\r\n")] * 2)] == ["sent", "sent"]
    assert smtpd.handler.pipelined_count == 2

    assert aiosmtplib.smtp.SMTPProtocol is aiosmtplib.protocol.SMTPProtocol
    assert aiosmtplib.protocol.SMTPProtocol.__module__ == "aiosmtplib.protocol"
    assert isinstance(aiosmtplib.protocol.PERIOD_REGEX, re.Pattern)
    assert aiosmtplib.protocol.PERIOD_REGEX.pattern == rb"(?m)^\."
    normalize = aiosmtplib.protocol.normalize_message_line_endings
    assert normalize.__module__ == "aiosmtplib.protocol"
    assert normalize is aiosmtplib.smtp.normalize_message_line_endings
    assert normalize(b"a\nb") == b"a\r\nb\r\n"

    async def stock() -> type:
        await aiosmtplib.send(AWKWARD, sender="stock@example.org", recipients=["stock1@example.net"],
                              hostname=smtpd.host, port=smtpd.port, timeout=10)
        client = aiosmtplib.SMTP(hostname=smtpd.host, port=smtpd.port, timeout=10)
        async with client:
            await client.sendmail("stock@example.org", ["stock2@example.net"], AWKWARD)
            return type(client.protocol)

    assert asyncio.run(stock()) is aiosmtplib.protocol.SMTPProtocol
    for address in ("stock1@example.net", "stock2@example.net"):
        assert smtpd.handler.received_by(address)[0].data == AWKWARD_RECEIVED
    assert smtpd.handler.pipelined_count == 2, "stock aiosmtplib does not pipeline"


# ---- COMMUNIQUE_SMTP_PIPELINING -----------------------------------------------------------------

def test_pipelining_off_sends_everything_over_the_public_path(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """With COMMUNIQUE_SMTP_PIPELINING=off, a relay that offers PIPELINING still gets one command at
    a time, and every message arrives whole, once, with the same bytes the pipelined path sends."""
    smtpd.handler.pipelining = True
    settings = dataclasses.replace(smtp_settings, smtp_pipelining="off", smtp_connections=2)
    blast = start(db, settings, 12)
    run_worker(settings, until_idle=True, include_due=False)
    assert ledger(db, blast.id)["sent"] == 12
    assert sorted(smtpd.handler.recipient_counts().values()) == [1] * 12
    assert smtpd.handler.pipelined_count == 0 and smtpd.handler.chained_count == 0

    off = _send(settings, [("off@example.net", AWKWARD)])
    on = _send(smtp_settings, [("on@example.net", AWKWARD)])
    assert off == on == [("sent", 250, "Message accepted")]
    assert smtpd.handler.pipelined_count == 1, "only the auto connection pipelined"
    assert (smtpd.handler.received_by("off@example.net")[0].data
            == smtpd.handler.received_by("on@example.net")[0].data == AWKWARD_RECEIVED)


def test_pipelining_auto_without_pipelining_offered_uses_the_public_path(smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """With auto and a relay that does not advertise PIPELINING, no envelope is chained and no
    command is written ahead of its reply."""
    assert smtp_settings.smtp_pipelining == "auto" and not smtpd.handler.pipelining

    async def scenario() -> bool:
        connection = SmtpConnection(smtp_settings)
        try:
            await connection.send("presse@example.org", "a@example.net", b"Subject: a\r\n\r\nA\r\n")
            return connection.can_chain("presse@example.org", "b@example.net")
        finally:
            await connection.close(polite=True)

    assert asyncio.run(scenario()) is False
    assert smtpd.handler.pipelined_count == 0 and len(smtpd.messages) == 1


class _MultilineRefusals(RecordingHandler):
    async def handle_RCPT(self, server: ServerSession, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address.startswith("multi"):
            return "550-5.1.1 No such user here\r\n550-\r\n550 5.1.1 See https://example.org/why"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_multiline_refusal_reads_alike_on_both_paths(smtp_settings, mode) -> None:  # type: ignore[no-untyped-def]
    """A multi-line 550 reply is reported with the same code and text whether it was read by the
    pipeline or by aiosmtplib, and the connection goes on."""
    handler = _MultilineRefusals()
    handler.pipelining = True
    server = start_smtp_server(handler)
    try:
        settings = dataclasses.replace(smtp_settings, smtp_host=server.host, smtp_port=server.port,
                                       smtp_pipelining=mode)
        results = _send(settings, [("multi@example.net", b"Subject: m\r\n\r\nm\r\n"),
                                   ("fine@example.net", b"Subject: f\r\n\r\nf\r\n")])
    finally:
        server.stop()
    assert results == [("bounced", 550, "5.1.1 No such user here\n\n5.1.1 See https://example.org/why"),
                       ("sent", 250, "Message accepted")]
    # (the handler counts pipelined RCPTs it accepted: the second one here)
    assert handler.connections == 1 and handler.pipelined_count == (1 if mode == "auto" else 0)
