"""SMTP pipelining (RFC 2920): against a server that advertises PIPELINING, MAIL, RCPT and DATA go
out in one write; every delivery fault test and the crash tests hold on that path too."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import pytest
from aiosmtplib.email import quote_address
from smtp_server import SmtpServer, start_smtp_server
from test_delivery import ledger, logs, row, start
from test_delivery import (
    test_connection_dropped_during_data_is_deferred_then_sent as test_connection_dropped_during_data_is_deferred_then_sent,  # noqa: E501
)
from test_delivery import (
    test_every_recipient_gets_one_message_over_reused_connections as test_every_recipient_gets_one_message_over_reused_connections,  # noqa: E501
)
from test_delivery import (
    test_permanent_refusal_fails_and_no_such_user_bounces_the_contact as test_permanent_refusal_fails_and_no_such_user_bounces_the_contact,  # noqa: E501
)
from test_delivery import (
    test_slow_server_times_out_then_succeeds as test_slow_server_times_out_then_succeeds,
)
from test_delivery import (
    test_temporary_replies_are_retried_until_accepted as test_temporary_replies_are_retried_until_accepted,  # noqa: E501
)
from test_delivery import (
    test_test_send_goes_outside_the_ledger_with_a_marked_subject as test_test_send_goes_outside_the_ledger_with_a_marked_subject,  # noqa: E501
)
from test_worker_crash import (
    test_sigkill_mid_blast_loses_nothing_and_duplicates_at_most_one_per_connection as test_sigkill_mid_blast_loses_nothing_and_duplicates_at_most_one_per_connection,  # noqa: E501
)
from test_worker_crash import (
    test_sigterm_drains_in_flight_sends_and_exits_cleanly as test_sigterm_drains_in_flight_sends_and_exits_cleanly,  # noqa: E501
)

from service.delivery.smtp import _SIMPLE_ADDRESS, SmtpConnection
from service.delivery.worker import run_worker
from service.models import MessageStatus
from service.rendering.prepare import Recipient

NOW = datetime(2022, 7, 5, 8, 0, tzinfo=UTC)
IMPORTED = [  # collected here again, with the pipelining server below
    test_connection_dropped_during_data_is_deferred_then_sent,
    test_every_recipient_gets_one_message_over_reused_connections,
    test_permanent_refusal_fails_and_no_such_user_bounces_the_contact,
    test_slow_server_times_out_then_succeeds,
    test_temporary_replies_are_retried_until_accepted,
    test_test_send_goes_outside_the_ledger_with_a_marked_subject,
    test_sigkill_mid_blast_loses_nothing_and_duplicates_at_most_one_per_connection,
    test_sigterm_drains_in_flight_sends_and_exits_cleanly,
]


@pytest.fixture
def smtpd() -> Iterator[SmtpServer]:
    """The recording server, advertising PIPELINING."""
    server = start_smtp_server()
    server.handler.pipelining = True
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _messages_went_pipelined(smtpd: SmtpServer) -> Iterator[None]:
    """After each test here: every message the server accepted came over the pipelined path."""
    yield
    if smtpd.handler.pipelining:
        assert smtpd.handler.pipelined_count >= len(smtpd.messages)


def test_pipelining_server_gets_mail_rcpt_and_data_together(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """Every RCPT arrives with DATA already written behind it, and each message arrives once with
    its ledger Message-ID."""
    settings = dataclasses.replace(smtp_settings, smtp_connections=3, batch_size=5)
    blast = start(db, settings, 20)
    worker = run_worker(settings, until_idle=True, include_due=False)
    assert worker.sent_count == 20 and ledger(db, blast.id)["sent"] == 20
    assert smtpd.handler.pipelined_count == 20
    assert sorted(smtpd.handler.recipient_counts().values()) == [1] * 20
    message = smtpd.handler.received_by("j3@example.net")[0].message()
    assert message["Message-ID"] == row(db, "j3@example.net").message_id
    assert message.get_body(("plain",)) is not None and message.get_body(("html",)) is not None


def test_server_without_pipelining_gets_one_command_at_a_time(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """A server that does not advertise PIPELINING never sees a command written ahead of its reply."""
    smtpd.handler.pipelining = False
    blast = start(db, smtp_settings, 5)
    run_worker(smtp_settings, until_idle=True, include_due=False)
    assert ledger(db, blast.id)["sent"] == 5 and smtpd.handler.pipelined_count == 0


def test_refused_recipient_leaves_the_pipelined_connection_usable(smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """A 550 at RCPT (DATA then refused by the server) and a 451 at DATA are reported with their
    codes, and the same connection sends the next message."""
    smtpd.handler.fail("gone@example.net", 550, "5.1.1 No such user")
    smtpd.handler.fail("later@example.net", 451, "4.3.0 Try later", at="data")
    data = b"Subject: x\r\n\r\n.leading dot\r\nbody\r\n"

    async def scenario() -> list[tuple[str, int | None]]:
        connection = SmtpConnection(smtp_settings)
        try:
            results = [await connection.send("presse@example.org", address, data)
                       for address in ("ok1@example.net", "gone@example.net", "later@example.net",
                                       "ok2@example.net")]
        finally:
            await connection.close(polite=True)
        return [(str(r.outcome), r.smtp_code) for r in results]

    assert asyncio.run(scenario()) == [("sent", 250), ("bounced", 550), ("deferred", 451),
                                       ("sent", 250)]
    assert smtpd.handler.connections == 1 and smtpd.handler.pipelined_count == 4
    assert [m.rcpt_tos for m in smtpd.messages] == [["ok1@example.net"], ["ok2@example.net"]]
    assert smtpd.messages[0].data.endswith(b".leading dot\r\nbody\r\n")  # dot-stuffed, unstuffed


def test_simple_addresses_are_quoted_exactly_as_aiosmtplib_does() -> None:
    """An address the pipelined path accepts is put on the wire as aiosmtplib would write it;
    anything unusual is left to aiosmtplib."""
    simple = ["a@b.c", "jean.dupont@redaction.example", "o'brien+press@x-y.example", "x_y=z@a1.b2"]
    unusual = ["Name <a@b.c>", '"quoted"@b.c', "a b@c.d", "a..b@c.d", ".a@b.c", "a@b..c", "a@[127.0.0.1]",
               "a@b.c\r\nRSET", "no-at-sign", "a@b.c>", "é@b.c"]
    for address in simple:
        assert _SIMPLE_ADDRESS.match(address) and quote_address(address) == f"<{address}>"
    for address in unusual:
        assert not _SIMPLE_ADDRESS.match(address), address


def test_refused_rows_are_recorded_on_the_pipelined_path(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """A worker over pipelining records a refusal per row and sends the others."""
    smtpd.handler.fail("j2@example.net", 554, "5.7.1 Rejected")
    blast = start(db, smtp_settings, 6)
    run_worker(smtp_settings, until_idle=True, include_due=False)
    assert row(db, "j2@example.net").status == MessageStatus.failed
    assert ledger(db, blast.id)["sent"] == 5


@pytest.mark.parametrize("sample", ["onmt-task-force-2022-07-06.md", "onmt-tournee-regionale-2020-12.md"])
def test_rendered_messages_end_every_line_with_crlf(db, settings, sample) -> None:  # type: ignore[no-untyped-def]
    """render_bytes writes CRLF line ends only, whatever the personal values hold, which is why the
    worker sends its bytes without re-checking them (send(..., wire=True))."""
    from conftest import SAMPLES

    from service.releases import store as releases
    from service.rendering.prepare import Recipient, prepare_release

    release = releases.create_release(db, settings, body=(SAMPLES / sample).read_text(encoding="utf-8"),
                                      now=NOW)
    db.commit()
    prepared = prepare_release(db, release.id, settings)
    odd = Recipient(email="x.y@example.net", contact_id=5, civility="Mme", first_name="Zoé\x0b\x0c\x1c",
                    last_name="L\u2028\u2029\x85ast", outlet="Le\x00 Journal\t.", language="fr")
    plain = Recipient(email="a@example.net", contact_id=6, civility=None, first_name=None, last_name=None,
                      outlet=None, language="ar")
    for recipient in (odd, plain):
        raw = prepared.render_bytes(recipient, message_id="<m@x.org>", now=NOW, blast_id=1)
        crlf = raw.count(b"\r\n")
        assert raw.endswith(b"\r\n") and raw.count(b"\n") == crlf and raw.count(b"\r") == crlf


def test_next_envelope_rides_behind_the_content(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """One connection: after the first message, each MAIL arrives written behind the previous
    message's final dot, and every message still arrives whole, once, with its own Message-ID."""
    settings = dataclasses.replace(smtp_settings, smtp_connections=1, batch_size=30)
    blast = start(db, settings, 30)
    run_worker(settings, until_idle=True, include_due=False)
    assert ledger(db, blast.id)["sent"] == 30
    assert smtpd.handler.connections == 1 and smtpd.handler.chained_count >= 25
    assert sorted(smtpd.handler.recipient_counts().values()) == [1] * 30
    for number in (0, 13, 29):
        address = f"j{number}@example.net"
        message = smtpd.handler.received_by(address)[0].message()
        assert message["Message-ID"] == row(db, address).message_id and message["To"].endswith(f"<{address}>")
        assert b"MAIL FROM" not in smtpd.handler.received_by(address)[0].data


def test_refused_chained_envelopes_are_recorded_and_the_chain_goes_on(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """Refusals of an envelope written behind another message's content land on the right rows:
    550 5.1.1 bounces, 451 at RCPT and at DATA defer then send; nobody gets a second copy and the
    connection survives them all."""
    smtpd.handler.fail("j4@example.net", 550, "5.1.1 No such user")
    smtpd.handler.fail("j8@example.net", 451, "4.3.0 Try later", times=1)
    smtpd.handler.fail("j11@example.net", 451, "4.3.0 Queue full", times=1, at="data")
    settings = dataclasses.replace(smtp_settings, smtp_connections=1, batch_size=20)
    blast = start(db, settings, 20)
    run_worker(settings, until_idle=True, include_due=False)
    assert {status: n for status, n in ledger(db, blast.id).items() if n} == {"sent": 19, "bounced": 1}
    assert row(db, "j4@example.net").last_smtp_code == 550
    for address in ("j8@example.net", "j11@example.net"):
        assert [(e.outcome, e.smtp_code) for e in logs(db, address)] == [("deferred", 451), ("sent", 250)]
    counts = smtpd.handler.recipient_counts()
    assert "j4@example.net" not in counts and sorted(counts.values()) == [1] * 19
    assert smtpd.handler.connections == 1 and smtpd.handler.chained_count >= 10


def test_connection_lost_behind_a_chained_envelope_sends_the_next_afresh(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """The relay drops the connection at one message's content: that message is deferred (no
    reply, maybe delivered), the one whose envelope rode behind it was never tried and goes out
    on a new connection; everyone ends with exactly one copy."""
    smtpd.handler.fail("j6@example.net", 421, "dropped", times=1, at="drop")
    settings = dataclasses.replace(smtp_settings, smtp_connections=1, batch_size=15)
    blast = start(db, settings, 15)
    run_worker(settings, until_idle=True, include_due=False)
    assert ledger(db, blast.id)["sent"] == 15
    assert [e.outcome for e in logs(db, "j6@example.net")] == ["deferred", "sent"]
    assert [e.outcome for e in logs(db, "j7@example.net")] == ["sent"]
    assert sorted(smtpd.handler.recipient_counts().values()) == [1] * 15
    assert smtpd.handler.connections == 2


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-command-at-a-time"])
def test_lines_starting_with_a_dot_arrive_as_written(db, smtp_settings, smtpd, pipelining) -> None:  # type: ignore[no-untyped-def]
    """The worker sends the DATA form built by the renderer (dot-stuffed once, ended with ".");
    the server reads back exactly the message the preview shows, with or without PIPELINING."""
    from sqlalchemy import select

    from service.models import Contact, Release
    from service.rendering.prepare import prepare_release

    smtpd.handler.pipelining = pipelining
    settings = dataclasses.replace(smtp_settings, smtp_connections=1)
    blast = start(db, settings, 3, last_name="Nom" + "." * 120)
    release = db.get(Release, blast.release_id)
    release.body = "Casablanca :\n\n.ma et .com en début de ligne.\n\n..deux points.\n"
    db.commit()
    run_worker(settings, until_idle=True, include_due=False)
    assert ledger(db, blast.id)["sent"] == 3
    prepared = prepare_release(db, blast.release_id, settings)
    for address in ("j0@example.net", "j2@example.net"):
        received = smtpd.handler.received_by(address)[0]
        message = received.message()
        contact = db.scalar(select(Contact).where(Contact.email == address))
        expected = prepared.render_bytes(Recipient.from_contact(contact), message_id=message["Message-ID"],
                                         now=parsedate_to_datetime(message["Date"]), blast_id=blast.id)
        boundary = re.compile(rb"===============_cq_[0-9a-f]+==")  # new at each preparation
        assert boundary.sub(b"B", received.data) == boundary.sub(b"B", expected)
    text = smtpd.handler.received_by("j1@example.net")[0].message().get_body(("plain",)).get_content()
    assert "\n.ma et .com en début de ligne." in text and "\n..deux points." in text
