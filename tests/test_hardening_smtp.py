"""Issue 14, the SMTP side, against the real test SMTP server: no AUTH in clear, one-click
unsubscribe only over https, the final dot's own long timeout, 552 by stage, IDN envelopes,
folded headers, one back-off per outage, the relay's per-connection limit, DKIM per From domain
and opaque Message-IDs."""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import logging
import re
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.header import decode_header, make_header
from pathlib import Path

import dkim
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_blasts import add_list, add_release, ledger

from service.config import Settings
from service.contacts.fields import FIELDS
from service.delivery import blasts
from service.delivery.worker import run_worker
from service.errors import ConfigError
from service.models import Blast, BlastStatus, DeliveryLog, QueuedMessage, Release
from service.releases.checks import check_message
from service.rendering.prepare import Recipient, prepare_release


def now() -> datetime:
    return datetime.now(UTC)


def start(session: Session, settings: Settings, count: int, release: Release | None = None,
          **list_fields: object) -> Blast:
    add_list(session, "presse", count, **list_fields)
    release = release or add_release(session)
    blast = blasts.create_blast(session, settings, release_id=release.id, list_names=["presse"], now=now())
    session.commit()
    return blast


def run_until(settings: Settings, done: Callable[[], bool], seconds: float) -> float:
    """Run the worker in a thread until `done()` or `seconds` pass; returns the time taken."""
    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(settings,), kwargs={"stop_event": stop,
                                                                          "include_due": False})
    started = time.monotonic()
    thread.start()
    try:
        while time.monotonic() - started < seconds and not done():
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
    return time.monotonic() - started


def attempts(session: Session) -> list[tuple[str, str, int | None, str | None]]:
    """(address, outcome, code, reply) of every attempt, in order."""
    session.expire_all()
    rows = session.execute(select(QueuedMessage.email, DeliveryLog.outcome, DeliveryLog.smtp_code,
                                  DeliveryLog.smtp_reply)
                           .join(QueuedMessage, QueuedMessage.id == DeliveryLog.queued_message_id)
                           .order_by(DeliveryLog.id)).all()
    session.commit()
    return [(r[0], str(r[1]), r[2], r[3]) for r in rows]


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


# ---- AUTH in clear -------------------------------------------------------------------------------

def test_smtp_password_in_clear_to_a_remote_relay_is_refused_at_startup(tmp_path: Path) -> None:
    """TLS none with a username and password stops start-up, unless the relay is on loopback or
    plaintext AUTH is allowed explicitly."""
    base = {"COMMUNIQUE_INSTANCE_PATH": str(tmp_path), "COMMUNIQUE_SMTP_TLS": "none",
            "COMMUNIQUE_SMTP_USERNAME": "press", "COMMUNIQUE_SMTP_PASSWORD": "s3cret"}
    with pytest.raises(ConfigError, match="COMMUNIQUE_SMTP_TLS.*in clear.*ALLOW_PLAINTEXT_AUTH"):
        Settings.from_env({**base, "COMMUNIQUE_SMTP_HOST": "smtp.relay.example"}, dotenv=False)
    for host in ("127.0.0.1", "localhost", "::1"):
        assert Settings.from_env({**base, "COMMUNIQUE_SMTP_HOST": host}, dotenv=False).smtp_host == host
    allowed = Settings.from_env({**base, "COMMUNIQUE_SMTP_HOST": "smtp.relay.example",
                                 "COMMUNIQUE_SMTP_ALLOW_PLAINTEXT_AUTH": "true"}, dotenv=False)
    assert allowed.smtp_allow_plaintext_auth
    for tls in ("starttls", "implicit"):
        Settings.from_env({**base, "COMMUNIQUE_SMTP_HOST": "smtp.relay.example",
                           "COMMUNIQUE_SMTP_TLS": tls}, dotenv=False)


# ---- List-Unsubscribe-Post -----------------------------------------------------------------------

@pytest.mark.parametrize("base_url", ["http://press.example.org", "https://press.example.org"])
def test_one_click_unsubscribe_header_only_with_an_https_base_url(db, smtp_settings, smtpd, base_url) -> None:  # type: ignore[no-untyped-def]
    """RFC 8058: List-Unsubscribe-Post goes out only when the unsubscribe link is https."""
    settings = dataclasses.replace(smtp_settings, base_url=base_url)
    blast = start(db, settings, 2)
    run_until(settings, lambda: ledger(db, blast.id)["sent"] == 2, 20)
    message = smtpd.handler.received_by("j0@example.net")[0].message()
    assert message["List-Unsubscribe"].startswith(f"<{base_url}/u/")
    assert message["List-Unsubscribe"].endswith("?subject=unsubscribe>")
    if base_url.startswith("https"):
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    else:
        assert message["List-Unsubscribe-Post"] is None


def test_production_with_an_http_base_url_warns_at_worker_start(db, settings, smtpd, caplog) -> None:  # type: ignore[no-untyped-def]
    """In production an http base URL is said at start-up (no one-click unsubscribe)."""
    production = dataclasses.replace(settings, env="production", base_url="http://press.example.org",
                                     smtp_host=smtpd.host, smtp_port=smtpd.port)
    caplog.set_level(logging.WARNING, logger="service.delivery.worker")
    run_worker(production, until_idle=True, include_due=False)
    assert any("BASE_URL is not https" in r.getMessage() for r in caplog.records)
    assert dataclasses.replace(production, base_url="https://press.example.org").startup_warnings() == []


# ---- the final dot's timeout ---------------------------------------------------------------------

@pytest.mark.parametrize("pipelining", [True, False])
def test_a_slow_final_dot_reply_is_waited_for_and_recorded_sent_once(db, smtp_settings, smtpd,  # type: ignore[no-untyped-def]
                                                                    pipelining) -> None:
    """A relay that acknowledges the final dot after 2.5 s, with a 1 s command timeout: every
    message is recorded sent on its first attempt, received once, the blast finishes (nothing
    paused by the brake, nothing to send again after a restart)."""
    smtpd.handler.pipelining = pipelining
    smtpd.handler.delay_seconds = 2.5
    settings = dataclasses.replace(smtp_settings, smtp_timeout_seconds=1.0, smtp_connections=3)
    blast = start(db, settings, 6)
    run_until(settings, lambda: ledger(db, blast.id)["sent"] == 6, 30)
    assert {(outcome, code) for _, outcome, code, _ in attempts(db)} == {("sent", 250)}
    assert len(attempts(db)) == 6
    assert sorted(smtpd.handler.recipient_counts().values()) == [1] * 6
    smtpd.handler.delay_seconds = 0
    db.commit()
    run_worker(settings, until_idle=True, include_due=False)  # a restart sends nothing again
    assert sorted(smtpd.handler.recipient_counts().values()) == [1] * 6
    db.expire_all()  # the run above housekept: the blast is finished, nothing was paused
    assert db.get(Blast, blast.id).status == BlastStatus.finished  # type: ignore[union-attr]
    db.commit()


def test_a_command_reply_still_times_out_at_the_command_timeout(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """The long final-dot limit is for the final dot only: with the data timeout short too, a
    slow final dot is deferred (444), then sent once the relay is quick."""
    smtpd.handler.pipelining = True
    smtpd.handler.delay_seconds = 2.0
    settings = dataclasses.replace(smtp_settings, smtp_timeout_seconds=0.5, smtp_data_timeout_seconds=0.5,
                                   smtp_connections=1)
    blast = start(db, settings, 1)
    run_until(settings, lambda: bool(attempts(db)), 10)
    smtpd.handler.delay_seconds = 0
    run_until(settings, lambda: ledger(db, blast.id)["sent"] == 1, 15)
    first = attempts(db)[0]
    assert first[1:3] == ("deferred", 444)


# ---- 552 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("pipelining", [True, False])
def test_552_is_permanent_at_mail_and_after_data_temporary_only_at_rcpt(db, smtp_settings, smtpd,  # type: ignore[no-untyped-def]
                                                                       pipelining) -> None:
    """552 at MAIL or after the final dot fails the message at once, the reply saying its size;
    552 at RCPT (too many recipients) is deferred and the message then goes out."""
    smtpd.handler.pipelining = pipelining
    sender = "presse@onmt.example.org"
    smtpd.handler.fail(sender, 552, "5.3.4 Message size exceeds fixed maximum message size",
                       times=1, at="mail")  # the first message: j0
    smtpd.handler.fail("j1@example.net", 552, "5.3.4 Message size exceeds fixed maximum message size",
                       at="data")
    smtpd.handler.fail("j2@example.net", 552, "5.5.3 Too many recipients", times=1)
    settings = dataclasses.replace(smtp_settings, smtp_connections=1)
    blast = start(db, settings, 4)
    run_until(settings, lambda: ledger(db, blast.id)["sent"] == 2, 20)
    by_address: dict[str, list[tuple[str, int | None, str | None]]] = {}
    for address, outcome, code, reply in attempts(db):
        by_address.setdefault(address, []).append((outcome, code, reply))
    for address in ("j0@example.net", "j1@example.net"):
        [(outcome, code, reply)] = by_address[address]
        assert (outcome, code) == ("failed", 552)
        assert re.search(r"the message is \d+ bytes", reply or ""), reply
    assert [(o, c) for o, c, _ in by_address["j2@example.net"]] == [("deferred", 552), ("sent", 250)]
    counts = ledger(db, blast.id)
    assert (counts["failed"], counts["sent"]) == (2, 2)


# ---- IDN -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("pipelining", [True, False])
def test_an_idn_recipient_gets_the_a_label_envelope_from_a_relay_without_smtputf8(  # type: ignore[no-untyped-def]
        db, smtp_settings, smtpd, pipelining) -> None:
    """A relay without SMTPUTF8: an address on médias.example is sent to its punycode form, in
    the envelope as in the To header."""
    smtpd.handler.pipelining = pipelining
    smtpd.handler.smtputf8 = False
    blast = start(db, smtp_settings, 2, domain="médias.example")
    run_until(smtp_settings, lambda: ledger(db, blast.id)["sent"] == 2, 20)
    assert ledger(db, blast.id)["sent"] == 2, attempts(db)
    [received] = smtpd.handler.received_by("j0@xn--mdias-bsa.example")
    assert received.rcpt_tos == ["j0@xn--mdias-bsa.example"]
    assert "<j0@xn--mdias-bsa.example>" in str(received.message()["To"])


# ---- header folding ------------------------------------------------------------------------------

def test_headers_are_folded_within_limits_for_the_longest_names(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """Names of the longest length import accepts (200 + 200 Arabic letters) and a long Arabic
    title: every header line is at most 998 octets, and 78 but for the unbreakable unsubscribe
    URL; every encoded word at most 75 characters; the To display name and the subject read back
    whole (RFC 2047 decoding); List-Unsubscribe and Content-Type are folded."""
    lengths = {f.name: f.max_length for f in FIELDS}
    first, last = "ب" * int(lengths["first_name"] or 0), "ت" * int(lengths["last_name"] or 0)
    assert (len(first), len(last)) == (200, 200)
    title = ("بيان صحفي " * 30).strip()
    release = add_release(db, title=title)
    blast = start(db, smtp_settings, 1, release=release, first_name=first, last_name=last)
    run_until(smtp_settings, lambda: ledger(db, blast.id)["sent"] == 1, 20)
    [received] = smtpd.messages
    head = header_block(received.data)
    lines = head.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    long_lines = [line for line in lines if len(line) > 78]
    assert all(line.startswith(b"List-Unsubscribe: <https://") and line.endswith(b">,")
               for line in long_lines), long_lines
    words = re.findall(rb"=\?[^?]+\?[bBqQ]\?[^?]*\?=", head)
    assert words and max(len(w) for w in words) <= 75
    unfolded = email.message_from_bytes(received.data, policy=email.policy.compat32)
    to = str(make_header(decode_header(str(unfolded["To"]))))
    assert to == f"{first} {last} <j0@example.net>"
    assert str(make_header(decode_header(str(unfolded["Subject"])))) == title
    message = received.message()
    assert message["List-Unsubscribe"].endswith("?subject=unsubscribe>")
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert first in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


# ---- relay back-off ------------------------------------------------------------------------------

def test_an_outage_counts_once_however_many_connections_fail_at_once(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """A short 421 at the greeting refusing the whole pool (8 connections at the same moment)
    backs off once (0.5 s), not 8 doublings (a minute): the blast is done within seconds."""
    smtpd.handler.refuse_connections = 8
    settings = dataclasses.replace(smtp_settings, smtp_connections=8, retry_base_seconds=1)
    blast = start(db, settings, 24)
    took = run_until(settings, lambda: ledger(db, blast.id)["sent"] == 24, 40)
    assert smtpd.handler.refused_connections == 8
    assert ledger(db, blast.id)["sent"] == 24
    assert took < 15, took
    assert sorted(smtpd.handler.recipient_counts().values()) == [1] * 24


# ---- per-connection message limit ----------------------------------------------------------------

@pytest.mark.parametrize("pipelining", [True, False])
def test_a_relays_per_connection_limit_reconnects_at_once(db, smtp_settings, smtpd, pipelining) -> None:  # type: ignore[no-untyped-def]
    """A relay that answers 421 at MAIL after 3 messages on a connection: the message goes at
    once on a new connection; no attempt is deferred to the retry schedule."""
    smtpd.handler.pipelining = pipelining
    smtpd.handler.messages_per_connection = 3
    settings = dataclasses.replace(smtp_settings, smtp_connections=1, retry_base_seconds=120)
    blast = start(db, settings, 10)
    took = run_until(settings, lambda: ledger(db, blast.id)["sent"] == 10, 20)
    assert ledger(db, blast.id)["sent"] == 10, attempts(db)
    assert {(outcome, code) for _, outcome, code, _ in attempts(db)} == {("sent", 250)}
    assert smtpd.handler.connections >= 4 and took < 15
    assert sorted(smtpd.handler.recipient_counts().values()) == [1] * 10


# ---- DKIM per From domain ------------------------------------------------------------------------

def _key(tmp_path: Path, name: str) -> tuple[Path, bytes]:
    path = tmp_path / f"{name}.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(path), "1024"], check=True, timeout=60,
                   capture_output=True)
    public = subprocess.run(["openssl", "rsa", "-in", str(path), "-pubout", "-outform", "DER"],
                            check=True, timeout=60, capture_output=True).stdout
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def test_dkim_signs_with_the_from_domains_key_and_warns_without_one(db, smtp_settings, smtpd, tmp_path,  # type: ignore[no-untyped-def]
                                                                   caplog) -> None:
    """With keys per domain, a release from another domain is signed d=<its domain> with that
    domain's key (the signature verifies); a release from a domain without a key is flagged in
    the release checks and when its blast is scheduled."""
    onmt_key, _ = _key(tmp_path, "onmt")
    visit_key, visit_record = _key(tmp_path, "visit")
    settings = dataclasses.replace(
        smtp_settings, dkim_keys=f"onmt.example.org=press:{onmt_key}, visit.example=news:{visit_key}")
    release = add_release(db)
    release.from_email = "presse@visit.example"
    db.commit()
    blast = start(db, settings, 1, release=release)
    run_until(settings, lambda: ledger(db, blast.id)["sent"] == 1, 20)
    [received] = smtpd.messages
    signature = header_block(received.data).split(b"\r\n\r\n")[0]
    assert b"d=visit.example" in signature and b"s=news" in signature

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return visit_record if name == b"news._domainkey.visit.example." else b""

    assert dkim.verify(received.data, dnsfunc=dns)

    unsigned = add_release(db, title="Autre")
    unsigned.from_email = "presse@autre.example"
    db.commit()
    message = prepare_release(db, unsigned.id, settings).render(
        Recipient("a@example.net"), message_id="<x@onmt.example.org>", now=now())
    [dkim_check] = [c for c in check_message(message) if "DKIM" in c.message]
    assert not dkim_check.ok and "autre.example" in dkim_check.detail
    assert b"DKIM-Signature" not in message.raw
    caplog.set_level(logging.WARNING, logger="service.delivery.blasts")
    add_list(db, "autres", 1, start=50)
    blasts.create_blast(db, settings, release_id=unsigned.id, list_names=["autres"], now=now(),
                        send_at=now())
    db.commit()
    assert any("no DKIM key for autre.example" in r.getMessage() for r in caplog.records)
    aligned = prepare_release(db, release.id, settings).render(
        Recipient("a@example.net"), message_id="<y@onmt.example.org>", now=now())
    assert not [c for c in check_message(aligned) if "DKIM" in c.message]


# ---- opaque Message-IDs --------------------------------------------------------------------------

def test_message_ids_are_opaque_and_kept_by_the_ledger(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """A Message-ID carries no contact or blast id: 32 random hex digits per row, the same in
    the ledger and on the wire."""
    blast = start(db, smtp_settings, 5)
    run_until(smtp_settings, lambda: ledger(db, blast.id)["sent"] == 5, 20)
    rows = {row.email: row.message_id for row in db.scalars(select(QueuedMessage))}
    for address, message_id in rows.items():
        assert re.fullmatch(r"<[0-9a-f]{32}@onmt\.example\.org>", message_id), message_id
        assert smtpd.handler.received_by(address)[0].message()["Message-ID"] == message_id
    assert len(set(rows.values())) == 5


def test_production_with_an_http_base_url_warns_at_web_start(settings, caplog) -> None:  # type: ignore[no-untyped-def]
    """The web app says it too at start-up: in production an http base URL means no one-click
    unsubscribe (RFC 8058 needs https)."""
    from service import create_app

    production = dataclasses.replace(settings, env="production", base_url="http://press.example.org",
                                     metrics_token="t" * 32)
    caplog.set_level(logging.WARNING, logger="service")
    app = create_app(production)
    app.extensions["communique"].engine.dispose()
    assert any("BASE_URL is not https" in r.getMessage() for r in caplog.records if r.name == "service")
