"""Replies through the service: with COMMUNIQUE_REPLY_ADDRESS each message's Reply-To names its
ledger row; a reply that comes back through the real listener is stored and forwarded through
the real relay (the smtpd fixture); out-of-office replies are stored apart, never forwarded."""

from __future__ import annotations

import dataclasses
import json
import re
import smtplib
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_blasts import add_list, add_release
from test_inbound import BOUNCES, Listener, contact, inbound, ledger_row, now, sample
from webutil import make_user, sign_in

from service.accounts.api_keys import create_api_key
from service.cli import main
from service.config import Settings
from service.delivery import blasts
from service.delivery.worker import run_worker
from service.errors import ConfigError
from service.models import Blast, ContactStatus, InboundKind, Release
from service.rendering.verp import verify_address

REPLIES = "replies@press.example.org"
OFFICE = "attache@onmt.example.org"


@pytest.fixture
def reply_settings(smtp_settings: Settings) -> Settings:
    return dataclasses.replace(smtp_settings, bounce_address=BOUNCES, reply_address=REPLIES)


@pytest.fixture
def listener(reply_settings: Settings) -> Iterator[Listener]:
    running = Listener(reply_settings)
    yield running
    running.close()


def send_blast(session: Session, settings: Settings, count: int, *,
               reply_to: str | None = OFFICE) -> Blast:
    add_list(session, "presse", count)
    release = add_release(session)
    release.reply_to = reply_to
    session.commit()
    blast = blasts.create_blast(session, settings, release_id=release.id, list_names=["presse"],
                                now=now())
    session.commit()
    run_worker(settings, until_idle=True, include_due=False)
    return blast


def reply_to_of(smtpd, email: str) -> str:  # type: ignore[no-untyped-def]
    """The Reply-To of the message the worker sent to `email` (where the journalist answers)."""
    (received,) = [m for m in smtpd.handler.messages if m.rcpt_tos == [email]]
    return str(received.message()["Reply-To"])


def forwarded(smtpd) -> list:  # type: ignore[no-untyped-def,type-arg]
    return [m for m in smtpd.handler.messages if m.message()["Resent-From"] is not None]


def test_each_message_has_its_own_reply_to_naming_its_ledger_row(  # type: ignore[no-untyped-def]
        db, reply_settings, smtpd) -> None:
    """With COMMUNIQUE_REPLY_ADDRESS, each message's Reply-To is <local>+<token>@<domain> naming
    its blast and contact; the envelope stays the bounce address's VERP."""
    blast = send_blast(db, reply_settings, 4)
    seen = set()
    for received in smtpd.handler.messages:
        (to,) = received.rcpt_tos
        reply_to = str(received.message()["Reply-To"])
        assert reply_to.startswith("replies+") and reply_to.endswith("@press.example.org")
        assert received.data.count(b"\r\nReply-To:") == 1
        token = verify_address(reply_settings, reply_to)
        row = ledger_row(db, to)
        assert token is not None and (token.blast_id, token.contact_id) == (blast.id, row.contact_id)
        assert received.mail_from.startswith("bounces+")
        seen.add(reply_to)
    assert len(seen) == 4


def test_without_a_reply_address_reply_to_stays_as_the_release_says(  # type: ignore[no-untyped-def]
        db, smtp_settings, smtpd) -> None:
    """Without the setting, Reply-To is the release's own (and absent when it has none)."""
    send_blast(db, dataclasses.replace(smtp_settings, bounce_address=BOUNCES), 2)
    assert {str(m.message()["Reply-To"]) for m in smtpd.handler.messages} == {OFFICE}


def test_a_reply_is_stored_and_forwarded_to_the_release_reply_to(  # type: ignore[no-untyped-def]
        db, reply_settings, smtpd, listener) -> None:
    """A journalist's reply to the Reply-To arrives through the listener, is stored with its blast
    and contact, and reaches the release's reply-to through the relay, unchanged under Resent-*."""
    blast = send_blast(db, reply_settings, 2)
    reply_to = reply_to_of(smtpd, "j1@example.net")
    raw = sample("reply_fr.eml", verp=reply_to, rcpt="j1@example.net")
    listener.send(raw, reply_to, mail_from="j1@example.net")
    (stored,) = inbound(db)
    assert (stored.kind, stored.blast_id) == (InboundKind.reply, blast.id)
    assert stored.contact_id == ledger_row(db, "j1@example.net").contact_id
    assert stored.action == f"stored, forwarded to {OFFICE}"
    (sent,) = forwarded(smtpd)
    assert sent.rcpt_tos == [OFFICE] and sent.mail_from == REPLIES
    message = sent.message()
    assert message["Resent-To"] == OFFICE and message["From"].addresses[0].addr_spec == "j1@example.net"
    assert message["Subject"] == "Re: L'ONMT met en ordre de bataille sa task force"
    assert "interview\r\navec le directeur général" in message.get_body().get_content()
    assert sent.data.endswith(raw.split(b"\r\n\r\n", 1)[1])  # the body as it came
    assert contact(db, "j1@example.net").status == ContactStatus.active


@pytest.mark.parametrize("forward_to,release_reply_to,expected", [
    ("desk@onmt.example.org", OFFICE, "desk@onmt.example.org"),
    ("", None, "presse@onmt.example.org")])
def test_replies_go_to_the_forward_setting_else_the_sender(  # type: ignore[no-untyped-def]
        db, reply_settings, smtpd, forward_to, release_reply_to, expected) -> None:
    """COMMUNIQUE_REPLIES_FORWARD_TO wins; a release without reply-to forwards to its sender."""
    settings = dataclasses.replace(reply_settings, replies_forward_to=forward_to)
    send_blast(db, settings, 1, reply_to=release_reply_to)
    reply_to = reply_to_of(smtpd, "j0@example.net")
    running = Listener(settings)
    try:
        running.send(sample("reply_ar.eml", verp=reply_to, rcpt="j0@example.net"), reply_to)
    finally:
        running.close()
    (sent,) = forwarded(smtpd)
    assert sent.rcpt_tos == [expected]
    assert inbound(db)[0].action == f"stored, forwarded to {expected}"


def test_an_out_of_office_is_stored_apart_and_never_forwarded(  # type: ignore[no-untyped-def]
        db, reply_settings, smtpd, listener) -> None:
    """An automatic answer to the Reply-To is kept as an auto-reply; nothing is forwarded and the
    contact's status does not change."""
    send_blast(db, reply_settings, 1)
    reply_to = reply_to_of(smtpd, "j0@example.net")
    listener.send(sample("out_of_office.eml", verp=reply_to, rcpt="j0@example.net"), reply_to)
    (stored,) = inbound(db)
    assert (stored.kind, stored.action) == (InboundKind.auto_reply, "stored")
    assert forwarded(smtpd) == []
    assert contact(db, "j0@example.net").status == ContactStatus.active


def test_a_reply_to_the_bare_address_is_stored_not_forwarded(  # type: ignore[no-untyped-def]
        db, reply_settings, smtpd, listener) -> None:
    """Without a verified token anyone could have written: the message is kept, nothing is sent."""
    send_blast(db, reply_settings, 1)
    listener.send(sample("reply_fr.eml", verp=REPLIES, rcpt="j0@example.net"), REPLIES)
    (stored,) = inbound(db)
    assert (stored.kind, stored.blast_id, stored.action) == (
        InboundKind.reply, None, "none: no valid token")
    assert forwarded(smtpd) == []


def test_a_relay_that_cannot_take_the_reply_now_makes_the_mta_retry(  # type: ignore[no-untyped-def]
        db, reply_settings, smtpd, listener) -> None:
    """A temporary refusal of the forward answers 451 and stores nothing (the MTA retries, so the
    reply is neither lost nor stored twice); a permanent one is stored with the refusal."""
    send_blast(db, reply_settings, 2)
    reply_to = reply_to_of(smtpd, "j1@example.net")
    raw = sample("reply_fr.eml", verp=reply_to, rcpt="j1@example.net")
    smtpd.handler.fail(OFFICE, 450, "4.2.1 mailbox busy", times=1)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        listener.send(raw, reply_to)
    assert refused.value.smtp_code == 451
    assert inbound(db) == []
    listener.send(raw, reply_to)  # the MTA's retry
    assert inbound(db)[0].action == f"stored, forwarded to {OFFICE}"
    assert len(forwarded(smtpd)) == 1
    smtpd.handler.fail(OFFICE, 550, "5.1.1 no such user")
    listener.send(raw, reply_to)
    assert inbound(db)[1].action == f"stored, forwarding to {OFFICE} refused: 550 5.1.1 no such user"
    assert len(forwarded(smtpd)) == 1


def test_a_release_whose_reply_to_is_the_reply_address_is_not_forwarded_to_itself(  # type: ignore[no-untyped-def]
        db, reply_settings, smtpd, listener) -> None:
    """A reply-to naming our own reply address would loop: the reply is stored only."""
    send_blast(db, reply_settings, 1, reply_to=REPLIES)
    reply_to = reply_to_of(smtpd, "j0@example.net")
    listener.send(sample("reply_fr.eml", verp=reply_to, rcpt="j0@example.net"), reply_to)
    assert inbound(db)[0].action == "stored" and forwarded(smtpd) == []
    assert db.scalar(select(Release.reply_to)) == REPLIES


def test_reply_settings_are_checked() -> None:
    """A reply address with '+' or a forward address that is not one stops start-up by name."""
    with pytest.raises(ConfigError, match="COMMUNIQUE_REPLY_ADDRESS"):
        Settings.from_env({"COMMUNIQUE_REPLY_ADDRESS": "replies+x@press.example.org"}, dotenv=False)
    with pytest.raises(ConfigError, match="COMMUNIQUE_REPLIES_FORWARD_TO"):
        Settings.from_env({"COMMUNIQUE_REPLIES_FORWARD_TO": "not an address"}, dotenv=False)
    settings = Settings.from_env({"COMMUNIQUE_REPLY_ADDRESS": REPLIES,
                                  "COMMUNIQUE_REPLIES_FORWARD_TO": "desk+press@onmt.example.org"},
                                 dotenv=False)
    assert (settings.reply_address, settings.replies_forward_to) == (
        REPLIES, "desk+press@onmt.example.org")


# ---- visible: blast page, dashboard, contact page, API, CLI, /metrics ------------------------

@pytest.fixture
def came_back(db, reply_settings, smtpd, listener) -> int:  # type: ignore[no-untyped-def]
    """A blast to four journalists: j0 is out of office, j1 replies, j2's address bounces later
    (a DSN), j3 unsubscribes by mail; all through the real listener."""
    blast = send_blast(db, reply_settings, 4)
    for email, name in (("j0@example.net", "out_of_office.eml"), ("j1@example.net", "reply_fr.eml")):
        reply_to = reply_to_of(smtpd, email)
        listener.send(sample(name, verp=reply_to, rcpt=email), reply_to)
    for email, name in (("j2@example.net", "postfix_hard.eml"), ("j3@example.net", "unsubscribe.eml")):
        verp = [m.mail_from for m in smtpd.handler.messages if m.rcpt_tos == [email]][0]
        listener.send(sample(name, verp=verp, rcpt=email), verp)
    assert [m.kind for m in inbound(db)] == ["auto_reply", "reply", "hard_bounce", "unsubscribe"]
    blast_id = blast.id
    db.commit()  # end the read: on SQLite every transaction holds the write lock
    return blast_id


def test_the_blast_page_shows_replies_apart_and_what_came_back_per_recipient(  # type: ignore[no-untyped-def]
        db, client, came_back) -> None:
    """The blast page has a Replies section (human replies, then out-of-office ones apart, with
    from, subject, time and excerpt) and each recipient's row shows its bounce or unsubscribe."""
    sign_in(client, make_user(db, "admin@onmt.example.org"))
    page = client.get(f"/blasts/{came_back}").get_data(as_text=True)
    replies = page.split('data-testid="human-replies"')[1].split("</table>")[0]
    assert "j1@example.net" in replies and "Re: L&#39;ONMT met en ordre" in replies
    assert "Serait-il possible d&#39;obtenir une interview avec le directeur général" in replies
    assert "j0@example.net" not in replies
    automatic = page.split('data-testid="auto-replies"')[1].split("</table>")[0]
    assert "j0@example.net" in automatic and "absente du bureau" in automatic
    assert "Réponses (1)" in page and "Réponses d’absence (1)" in page
    rows = {row.split("<td>")[1].split("</td>")[0]: row for row in page.split("<tr>")[1:]
            if row.startswith("<td>j")}
    assert "rejet (DSN)" in rows["j2@example.net"] and "rejeté" in rows["j2@example.net"]
    assert "désinscription par e-mail" in rows["j3@example.net"]
    assert "rejet" not in rows["j1@example.net"]
    assert re.search(r'data-testid="inbound-hard_bounce">1<', page)


def test_the_dashboard_counts_replies_and_the_contact_page_lists_its_mail(  # type: ignore[no-untyped-def]
        db, client, came_back) -> None:
    """The dashboard shows how many journalists replied; a contact's page lists what came back
    from them."""
    sign_in(client, make_user(db, "admin@onmt.example.org"))
    dashboard = client.get("/").get_data(as_text=True)
    assert re.search(r"Réponses des journalistes : <strong>1</strong>", dashboard)
    j1, j2 = contact(db, "j1@example.net").id, contact(db, "j2@example.net").id
    page = client.get(f"/contacts/{j1}").get_data(as_text=True)
    table = page.split('data-testid="contact-inbound"')[1].split("</table>")[0]
    assert "réponse" in table and f"#{came_back}" in table and "interview" in table
    assert "forwarded to attache@onmt.example.org" in table
    assert "5.1.1" in client.get(f"/contacts/{j2}").get_data(as_text=True)


def test_the_api_lists_a_blasts_replies_with_the_read_scope(  # type: ignore[no-untyped-def]
        db, client, came_back) -> None:
    """GET /api/v1/blasts/<id>/replies needs `read`; it lists replies newest first, by kind."""
    _key, token = create_api_key(db, "reader", now=now(), scopes=["read"])
    _key, writer = create_api_key(db, "writer", now=now(), scopes=["write"])
    db.commit()
    path = f"/api/v1/blasts/{came_back}/replies"
    response = client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["total"] == 2 and [r["kind"] for r in body["items"]] == ["reply", "auto_reply"]
    assert body["items"][0]["from"] == "j1@example.net" and "interview" in body["items"][0]["text"]
    only = client.get(path + "?kind=auto_reply", headers={"Authorization": f"Bearer {token}"})
    assert [r["from"] for r in only.get_json()["items"]] == ["j0@example.net"]
    assert client.get(path, headers={"Authorization": f"Bearer {writer}"}).status_code == 403
    missing = client.get("/api/v1/blasts/999999/replies", headers={"Authorization": f"Bearer {token}"})
    assert missing.status_code == 404
    progress = client.get(f"/api/v1/blasts/{came_back}/progress",
                          headers={"Authorization": f"Bearer {token}"}).get_json()
    assert progress["counts"]["bounced"] == 1 and progress["inbound"]["hard_bounce"] == 1


def test_blasts_show_and_metrics_count_what_came_back(  # type: ignore[no-untyped-def]
        db, client, runner, came_back) -> None:
    """`blasts show --json` counts the async bounce and what came back by kind; /metrics counts
    inbound messages by kind."""
    shown = json.loads(runner.invoke(main, ["blasts", "show", str(came_back), "--json"]).output)
    assert shown["counts"]["bounced"] == 1 and shown["counts"]["sent"] == 3
    assert {k: v for k, v in shown["inbound"].items() if v} == {
        "auto_reply": 1, "reply": 1, "hard_bounce": 1, "unsubscribe": 1}
    text = runner.invoke(main, ["blasts", "show", str(came_back)]).output
    assert "came back: hard_bounce 1, unsubscribe 1, auto_reply 1, reply 1" in text
    metrics = client.get("/metrics").get_data(as_text=True)
    for kind, count in (("reply", 1), ("auto_reply", 1), ("hard_bounce", 1), ("complaint", 0)):
        assert f'communique_inbound_messages_total{{kind="{kind}"}} {count}.0' in metrics
