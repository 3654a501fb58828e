"""Mail that comes back: VERP envelope senders, then bounces, complaints, unsubscribes by mail and
replies fed through the real `communique inbound` listener over SMTP/LMTP on 127.0.0.1."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_blasts import add_list, add_release

from service.config import Settings
from service.delivery import blasts
from service.delivery.worker import run_worker
from service.models import Blast, QueuedMessage
from service.rendering.verp import VerpMaker, verify_address

BOUNCES = "bounces@press.example.org"


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
