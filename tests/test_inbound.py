"""Mail that comes back: VERP envelope senders, then bounces, complaints, unsubscribes by mail and
replies fed through the real `communique inbound` listener over SMTP/LMTP on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import settings_environ
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from test_blasts import add_list, add_release

from service.config import Settings
from service.delivery import blasts
from service.delivery.worker import run_worker
from service.inbound.listener import run_listener
from service.models import (
    Blast,
    Contact,
    ContactStatus,
    DeliveryLog,
    InboundKind,
    InboundMessage,
    MessageStatus,
    QueuedMessage,
    Suppression,
)
from service.rendering.verp import VerpMaker, verify_address

BOUNCES = "bounces@press.example.org"
SAMPLES = Path(__file__).parent / "data" / "inbound"


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def verp_settings(smtp_settings: Settings) -> Settings:
    return dataclasses.replace(smtp_settings, bounce_address=BOUNCES)


def send_blast(session: Session, settings: Settings, count: int) -> Blast:
    add_list(session, "presse", count)
    release = add_release(session)
    blast = blasts.create_blast(session, settings, release_id=release.id, list_names=["presse"],
                                now=now())
    session.commit()
    run_worker(settings, until_idle=True, include_due=False)
    return blast


def ledger_row(session: Session, email: str) -> QueuedMessage:
    session.expire_all()
    found = session.scalar(select(QueuedMessage).where(QueuedMessage.email == email))
    session.commit()
    assert found is not None
    return found


# ---- VERP -----------------------------------------------------------------------------------

def test_verp_address_round_trips_and_a_changed_one_names_nothing() -> None:
    """The VERP address names its blast and contact; any other digit, signature or domain fails."""
    settings = Settings(secret_key="k" * 40, bounce_address=BOUNCES)
    address = VerpMaker(settings).envelope(12, 345)
    local, domain = address.split("@")
    assert domain == "press.example.org" and local.startswith("bounces+12-345-")
    assert address.islower() and len(local) < 64
    found = verify_address(settings, address)
    assert found is not None and (found.blast_id, found.contact_id) == (12, 345)
    assert verify_address(settings, address.upper()) == found  # an MTA that upper-cases
    assert verify_address(settings, address.replace("+12-", "+13-")) is None
    assert verify_address(settings, address.replace("press.example.org", "evil.example")) is None
    assert verify_address(settings, "bounces@press.example.org") is None
    assert verify_address(dataclasses.replace(settings, secret_key="o" * 40), address) is None
    assert verify_address(dataclasses.replace(settings, bounce_address=""), address) is None


def test_each_message_of_a_blast_has_its_own_verp_sender_and_unsubscribe_mailto(  # type: ignore[no-untyped-def]
        db, verp_settings, smtpd) -> None:
    """With COMMUNIQUE_BOUNCE_ADDRESS, every message's MAIL FROM names its ledger row and the
    List-Unsubscribe mailto is that same address."""
    blast = send_blast(db, verp_settings, 5)
    seen = set()
    for received in smtpd.handler.messages:
        (to,) = received.rcpt_tos
        row = ledger_row(db, to)
        token = verify_address(verp_settings, received.mail_from)
        assert token is not None and (token.blast_id, token.contact_id) == (blast.id, row.contact_id)
        unsubscribe = received.message()["List-Unsubscribe"]
        assert f"<mailto:{received.mail_from}?subject=unsubscribe>" in " ".join(unsubscribe.split())
        seen.add(received.mail_from)
    assert len(seen) == 5


def test_without_a_bounce_address_the_envelope_sender_is_the_from_address(  # type: ignore[no-untyped-def]
        db, smtp_settings, smtpd) -> None:
    """Without the setting nothing changes: MAIL FROM and the mailto are the release's From."""
    send_blast(db, smtp_settings, 2)
    for received in smtpd.handler.messages:
        assert received.mail_from == "presse@onmt.example.org"
        assert "<mailto:presse@onmt.example.org?subject=unsubscribe>" in " ".join(
            received.message()["List-Unsubscribe"].split())


# ---- the listener ---------------------------------------------------------------------------

class Listener:
    def __init__(self, settings: Settings, *, lmtp: bool = False) -> None:
        self.stop = threading.Event()
        started = threading.Event()
        self.port = 0

        def on_started(port: int) -> None:
            self.port = port
            started.set()

        self.thread = threading.Thread(target=run_listener, args=(settings,), kwargs={
            "host": "127.0.0.1", "port": 0, "lmtp": lmtp, "stop": self.stop,
            "on_started": on_started}, daemon=True)
        self.thread.start()
        assert started.wait(10), "the inbound listener did not start"

    def send(self, raw: bytes, to: str, *, mail_from: str = "", lmtp: bool = False) -> None:
        client = smtplib.LMTP("127.0.0.1", self.port) if lmtp else smtplib.SMTP(
            "127.0.0.1", self.port, timeout=10)
        with client:
            client.sendmail(mail_from, [to], raw)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def listener(verp_settings: Settings) -> Iterator[Listener]:
    running = Listener(verp_settings)
    yield running
    running.close()


def sample(name: str, *, verp: str, rcpt: str, message_id: str = "<m@onmt.example.org>") -> bytes:
    return ((SAMPLES / name).read_bytes().replace(b"{{VERP}}", verp.encode())
            .replace(b"{{RCPT}}", rcpt.encode()).replace(b"{{MESSAGE_ID}}", message_id.encode())
            .replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))  # on the wire, lines end CRLF


def verp_of(smtpd, email: str) -> str:  # type: ignore[no-untyped-def]
    """The envelope sender the worker used for the message to `email` (what a DSN goes back to)."""
    return [m.mail_from for m in smtpd.handler.messages if m.rcpt_tos == [email]][-1]


def contact(session: Session, email: str) -> Contact:
    session.expire_all()
    found = session.scalar(select(Contact).where(Contact.email == email))
    session.commit()
    assert found is not None
    return found


def inbound(session: Session) -> list[InboundMessage]:
    session.expire_all()
    rows = list(session.scalars(select(InboundMessage).order_by(InboundMessage.id)))
    session.commit()
    return rows


@pytest.mark.parametrize("name,status", [
    ("postfix_hard.eml", "5.1.1"), ("exim.eml", "5.1.1"), ("gmail.eml", "5.1.1"),
    ("exchange.eml", "5.1.10"), ("yahoo.eml", None)])
def test_a_dsn_for_one_message_bounces_exactly_that_ledger_row_and_contact(  # type: ignore[no-untyped-def]
        db, verp_settings, smtpd, listener, name, status) -> None:
    """A blast goes out with VERP senders; a real-world DSN for one message, sent back to its
    envelope sender through the listener, marks that ledger row and contact bounced (with a
    DeliveryLog row naming the DSN) and nothing else."""
    blast = send_blast(db, verp_settings, 3)
    verp = verp_of(smtpd, "j1@example.net")
    listener.send(sample(name, verp=verp, rcpt="j1@example.net"), verp)
    row = ledger_row(db, "j1@example.net")
    assert row.status == MessageStatus.bounced and row.attempts == 1
    if status:
        assert (row.last_smtp_reply or "").startswith(status)
    assert contact(db, "j1@example.net").status == ContactStatus.bounced
    last = db.scalars(select(DeliveryLog).where(DeliveryLog.queued_message_id == row.id)
                      .order_by(DeliveryLog.id)).all()
    assert [entry.outcome for entry in last] == ["sent", "bounced"]
    assert (last[-1].error_type or "").startswith("DSN")
    for other in ("j0@example.net", "j2@example.net"):
        assert ledger_row(db, other).status == MessageStatus.sent
        assert contact(db, other).status == ContactStatus.active
    (stored,) = inbound(db)
    assert (stored.kind, stored.blast_id, stored.contact_id) == (
        InboundKind.hard_bounce, blast.id, row.contact_id)
    assert stored.action == "ledger row and contact bounced" and stored.dsn_status == status


def test_a_forged_dsn_changes_nothing(db, verp_settings, smtpd, listener) -> None:  # type: ignore[no-untyped-def]
    """A DSN whose VERP token does not verify (another contact's id, or no token) is stored and
    acted on never."""
    send_blast(db, verp_settings, 2)
    verp = verp_of(smtpd, "j1@example.net")
    row = ledger_row(db, "j0@example.net")
    local, domain = verp.split("@")
    signature = local.rsplit("-", 1)[1]
    forged = f"bounces+{row.blast_id}-{row.contact_id}-{signature}@{domain}"
    listener.send(sample("postfix_hard.eml", verp=forged, rcpt="j0@example.net"), forged)
    listener.send(sample("postfix_hard.eml", verp=BOUNCES, rcpt="j0@example.net"), BOUNCES)
    assert ledger_row(db, "j0@example.net").status == MessageStatus.sent
    assert ledger_row(db, "j1@example.net").status == MessageStatus.sent
    assert contact(db, "j0@example.net").status == ContactStatus.active
    stored = inbound(db)
    assert [(s.kind, s.contact_id, s.action) for s in stored] == [
        (InboundKind.hard_bounce, None, "none: no valid token")] * 2


def test_soft_bounces_on_three_separate_blasts_bounce_the_contact(  # type: ignore[no-untyped-def]
        db, verp_settings, smtpd, listener) -> None:
    """A delayed-delivery DSN counts once per blast; the third blast's makes the contact bounced,
    the ledger rows stay sent."""
    add_list(db, "presse", 2)
    verps = []
    for _ in range(3):
        release = add_release(db)
        blasts.create_blast(db, verp_settings, release_id=release.id, list_names=["presse"], now=now())
        db.commit()
        run_worker(verp_settings, until_idle=True, include_due=False)
        verps.append(verp_of(smtpd, "j1@example.net"))
    assert len(set(verps)) == 3
    for verp in (verps[0], verps[1], verps[1]):  # the same blast twice counts once
        listener.send(sample("postfix_delayed.eml", verp=verp, rcpt="j1@example.net"), verp)
    assert contact(db, "j1@example.net").status == ContactStatus.active
    assert inbound(db)[-1].action == "soft bounce 2 of 3 counted"
    listener.send(sample("postfix_delayed.eml", verp=verps[2], rcpt="j1@example.net"), verps[2])
    assert contact(db, "j1@example.net").status == ContactStatus.bounced
    assert inbound(db)[-1].action == "soft bounce 3 of 3: contact bounced"
    assert {r.status for r in db.scalars(select(QueuedMessage))} == {MessageStatus.sent}
    assert contact(db, "j0@example.net").status == ContactStatus.active


def test_an_arf_complaint_suppresses_the_contact_and_keeps_the_evidence(  # type: ignore[no-untyped-def]
        db, verp_settings, smtpd, listener) -> None:
    """An RFC 5965 feedback report puts the address on the organisation-wide suppression list."""
    send_blast(db, verp_settings, 2)
    verp = verp_of(smtpd, "j0@example.net")
    raw = sample("arf.eml", verp=verp, rcpt="j0@example.net")
    listener.send(raw, verp)
    assert contact(db, "j0@example.net").status == ContactStatus.suppressed
    assert db.scalar(select(Suppression.email_key)) == "j0@example.net"
    (stored,) = inbound(db)
    assert stored.kind == InboundKind.complaint and stored.action == "contact suppressed"
    assert b"Feedback-Type: abuse" in stored.raw and stored.raw_size == len(stored.raw)
    assert stored.diagnostic == "feedback-type: abuse"
    assert contact(db, "j1@example.net").status == ContactStatus.active


def test_mail_to_the_unsubscribe_mailto_unsubscribes(db, verp_settings, smtpd, listener) -> None:  # type: ignore[no-untyped-def]
    """A message with subject "unsubscribe" to the List-Unsubscribe mailto unsubscribes the contact."""
    send_blast(db, verp_settings, 2)
    received = smtpd.handler.received_by("j1@example.net")[0]
    mailto = " ".join(received.message()["List-Unsubscribe"].split()).split("<mailto:")[1]
    address = mailto.split("?")[0]
    listener.send(sample("unsubscribe.eml", verp=address, rcpt="j1@example.net"), address,
                  mail_from="j1@example.net")
    assert contact(db, "j1@example.net").status == ContactStatus.unsubscribed
    assert inbound(db)[0].action == "contact unsubscribed"


@pytest.mark.parametrize("name,kind,words,lmtp", [
    ("out_of_office.eml", InboundKind.auto_reply, "absente du bureau", False),
    ("reply_fr.eml", InboundKind.reply, "interview\navec le directeur général", False),
    ("reply_ar.eml", InboundKind.reply, "شكراً على هذا البلاغ الصحفي", True)])
def test_replies_are_stored_with_blast_and_contact_and_change_nothing(  # type: ignore[no-untyped-def]
        db, verp_settings, smtpd, name, kind, words, lmtp) -> None:
    """An out-of-office is kept apart from human replies (French, Arabic); both are stored with
    their blast and contact, decoded, and the contact stays active (SMTP and LMTP alike). A human
    reply is forwarded to the release's sender (tests/test_inbound_replies.py has the rest)."""
    blast = send_blast(db, verp_settings, 2)
    verp = verp_of(smtpd, "j1@example.net")
    running = Listener(verp_settings, lmtp=lmtp)
    try:
        running.send(sample(name, verp=verp, rcpt="j1@example.net"), verp, lmtp=lmtp)
    finally:
        running.close()
    (stored,) = inbound(db)
    action = "stored" if kind == InboundKind.auto_reply else "stored, forwarded to presse@onmt.example.org"
    assert (stored.kind, stored.blast_id, stored.action) == (kind, blast.id, action)
    assert stored.from_address == "j1@example.net" and words in (stored.text or "")
    assert stored.subject and stored.raw_size > 0
    if name == "reply_ar.eml":
        assert stored.subject.startswith("رد:")
    assert contact(db, "j1@example.net").status == ContactStatus.active


def test_what_is_not_understood_is_kept_raw_and_not_acted_on(  # type: ignore[no-untyped-def]
        db, verp_settings, smtpd, listener) -> None:
    """A message nothing can read is stored raw with its token's row, and nothing changes."""
    send_blast(db, verp_settings, 1)
    verp = verp_of(smtpd, "j0@example.net")
    raw = sample("not_understood.eml", verp=verp, rcpt="j0@example.net")
    listener.send(raw, verp)
    (stored,) = inbound(db)
    assert stored.kind == InboundKind.not_understood and stored.action == "none: not understood"
    assert b"nothing here" in stored.raw
    assert contact(db, "j0@example.net").status == ContactStatus.active


def test_the_listener_refuses_other_domains_and_oversized_messages(db, verp_settings) -> None:  # type: ignore[no-untyped-def]
    """Only the bounce domain is accepted (550 5.1.2); a message over the size limit gets 552."""
    running = Listener(dataclasses.replace(verp_settings, inbound_max_bytes=4096))
    try:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            running.send(b"Subject: hi\r\n\r\nhello\r\n", "someone@elsewhere.example")
        assert refused.value.recipients["someone@elsewhere.example"][0] == 550
        with pytest.raises((smtplib.SMTPDataError, smtplib.SMTPSenderRefused)) as too_big:
            running.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 100, BOUNCES)
        assert too_big.value.smtp_code == 552
    finally:
        running.close()
    assert db.scalar(select(func.count()).select_from(InboundMessage)) == 0


def test_communique_inbound_serves_and_stops_on_sigterm(verp_settings, engine) -> None:  # type: ignore[no-untyped-def]
    """`communique inbound --port 0` listens, and SIGTERM stops it cleanly (exit status 0)."""
    env = {**os.environ, **settings_environ(verp_settings)}
    command = [sys.executable, "-c", "from service.cli import main; main()", "inbound", "--port", "0"]
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stderr is not None
            line = process.stderr.readline()
            found = re.search(r"127\.0\.0\.1:(\d+)", line)
            assert found is not None, line
            with smtplib.SMTP("127.0.0.1", int(found.group(1)), timeout=10) as client:
                assert client.noop()[0] == 250
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
            assert "inbound stopped: 0 messages processed" in process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(5)
