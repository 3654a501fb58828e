"""Opt-in engagement tracking: pixel and signed redirects in tracked messages only, recorded per
ledger row through the real public routes, machines told apart, do-not-track respected."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import select, update

from service.contacts.importing import import_contacts
from service.delivery import blasts
from service.delivery.worker import run_worker
from service.models import Contact, Engagement, QueuedMessage
from service.releases.store import create_release
from service.rendering.tracking import verify_link_token

CSV = (b"email,first_name,last_name,outlet,do not track\n"
       b"amina@lematin.example.ma,Amina,Benali,Le Matin,\n"
       b"karim@medias24.example.ma,Karim,Tazi,Medias24,non\n"
       b"sara@tel.example.ma,Sara,Idrissi,TelQuel,oui\n")
BODY = ("# Marrakech accueille 2 millions de visiteurs\n\n"
        "Le bilan complet est [en ligne](https://onmt.example.org/bilan?annee=2026&m=7). "
        "Photos : [médiathèque](https://media.example.org/photos).\n")
PERSON = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Thunderbird/128.0"


def _send(db, settings, *, track: bool) -> int:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    import_contacts(db, CSV, list_name="presse", now=now)
    release = create_release(db, settings, body=BODY, now=now)
    db.commit()
    blast = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"],
                                now=now, track=track)
    db.commit()
    run_worker(settings, until_idle=True, include_due=False)
    return blast.id


def _html(smtpd, address: str) -> str:  # type: ignore[no-untyped-def]
    [received] = smtpd.handler.received_by(address)
    part = received.message().get_body(("html",))
    assert part is not None
    return str(part.get_content())


def _paths(html: str, kind: str) -> list[str]:
    return [urlsplit(url).path for url in
            re.findall(rf'(?:href|src)="(https://press\.example\.org/{kind}/[^"]+)"', html)]


def test_tracked_blast_opens_and_clicks_recorded_machines_apart(db, smtp_settings, smtpd,  # type: ignore[no-untyped-def]
                                                                 client) -> None:
    """With tracking on, each message has a pixel and signed links to the release's exact URLs;
    fetching them records opens and clicks on the ledger row; a scanner's burst right after
    delivery and Apple's proxy are machines; a forged link is 404; a do-not-track contact's
    message has neither pixel nor tracked link."""
    blast_id = _send(db, smtp_settings, track=True)
    html = _html(smtpd, "karim@medias24.example.ma")
    [pixel] = _paths(html, "o")
    clicks = _paths(html, "c")
    assert len(clicks) >= 3  # the two body links and the web copy
    assert "mesure son ouverture" in html
    assert "https://onmt.example.org/bilan" not in html  # rewritten
    # A scanner fetches everything as the message arrives.
    for path in clicks:
        assert client.get(path, headers={"User-Agent": PERSON}).status_code == 302
    # Later, the journalist opens the message and clicks.
    db.execute(update(QueuedMessage).where(QueuedMessage.email == "karim@medias24.example.ma")
               .values(sent_at=datetime.now(UTC) - timedelta(hours=1)))
    db.commit()
    assert client.get(pixel, headers={"User-Agent": PERSON}).status_code == 200
    assert client.get(pixel, headers={"User-Agent": PERSON}).status_code == 200
    [bilan] = [path for path in clicks
               if (verify_link_token(smtp_settings, path.split("/")[3]) or (0, ""))[1].startswith(
                   "https://onmt.example.org/bilan")]
    response = client.get(bilan, headers={"User-Agent": PERSON})
    assert response.status_code == 302
    assert response.headers["Location"] == "https://onmt.example.org/bilan?annee=2026&m=7"
    mpp = client.get(pixel, headers={"User-Agent": "Mozilla/5.0"},
                     environ_base={"REMOTE_ADDR": "17.58.100.7"})
    assert mpp.status_code == 200 and mpp.mimetype == "image/gif"

    row = db.scalar(select(QueuedMessage).where(QueuedMessage.email == "karim@medias24.example.ma"))
    assert row is not None
    rows = db.scalars(select(Engagement).where(Engagement.queued_message_id == row.id)).all()
    people_opens = [e for e in rows if e.kind == "open" and not e.is_machine]
    assert [e.count for e in people_opens] == [2] and people_opens[0].first_at <= people_opens[0].last_at
    [apple] = [e for e in rows if e.kind == "open" and e.is_machine]
    assert apple.machine_reason == "apple-mpp"
    machine_clicks = [e for e in rows if e.kind == "click" and e.is_machine]
    assert len(machine_clicks) == len(set(clicks)) and {e.machine_reason for e in machine_clicks} == {
        "soon-after-delivery"}
    [person_click] = [e for e in rows if e.kind == "click" and not e.is_machine]
    assert person_click.url == "https://onmt.example.org/bilan?annee=2026&m=7"
    assert all(e.blast_id == blast_id for e in rows)

    # Forged: one character changed in either part, or a token of our own with a foreign URL.
    token, link = clicks[0].split("/")[2:4]
    forged_link = link[:-1] + ("0" if link[-1] != "0" else "1")
    assert client.get(f"/c/{token}/{forged_link}").status_code == 404
    forged_token = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert client.get(f"/c/{forged_token}/{link}").status_code == 404
    assert client.get(f"/c/{token}/1.aHR0cHM6Ly9ldmlsLmV4YW1wbGU.0123456789abcdef0123").status_code == 404
    assert client.get("/o/not-a-token.gif").status_code == 404
    assert client.get("/c/%00/%ff").status_code == 404

    # Sara asked not to be tracked: no pixel, no tracked link, no statement.
    sara = _html(smtpd, "sara@tel.example.ma")
    assert not _paths(sara, "o") and not _paths(sara, "c")
    assert "https://onmt.example.org/bilan?annee=2026&amp;m=7" in sara


def test_untracked_blast_has_no_pixel_and_no_rewritten_link(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """Tracking off (the default): the message links straight to the release's URLs."""
    _send(db, smtp_settings, track=False)
    html = _html(smtpd, "amina@lematin.example.ma")
    assert not _paths(html, "o") and not _paths(html, "c")
    assert "/o/" not in html and "mesure son ouverture" not in html
    assert "https://onmt.example.org/bilan?annee=2026&amp;m=7" in html


def test_contact_opts_out_of_tracking_on_the_unsubscribe_page(db, smtp_settings, smtpd,  # type: ignore[no-untyped-def]
                                                              client, app) -> None:
    """The unsubscribe page offers "do not track me": the contact stays subscribed, flagged, and
    later opens of earlier messages are not recorded."""
    _send(db, smtp_settings, track=True)
    html = _html(smtpd, "amina@lematin.example.ma")
    [pixel] = _paths(html, "o")
    unsubscribe = re.search(r'href="https://press\.example\.org(/u/[^"]+)"', html)
    assert unsubscribe is not None
    app.config["WTF_CSRF_ENABLED"] = False
    page = client.get(unsubscribe.group(1))
    assert "Ne plus me suivre" in page.get_data(as_text=True)
    assert client.post(unsubscribe.group(1) + "/do-not-track").status_code == 200
    db.expire_all()
    contact = db.scalar(select(Contact).where(Contact.email == "amina@lematin.example.ma"))
    assert contact is not None and contact.do_not_track is True and contact.status == "active"
    db.rollback()  # end the read: SQLite lets one writer in at a time
    assert client.get(pixel, headers={"User-Agent": PERSON}).status_code == 200
    assert db.scalar(select(Engagement.id)) is None


def test_spliced_token_lines_decode_to_the_text_with_the_token() -> None:
    """A line holding only the tracking token is encoded once with soft breaks around it: decoded,
    it is the line with the token in place, whatever its length and its escapes; each encoded line
    stays within 76 characters."""
    import binascii

    from service.rendering import mime

    for prefix in ("", "é" * 40, "x" * 74, "x" * 75 + "=", 'href="https://press.example.org/c/',
                   "a" * 73 + "é" + "b" * 200, " " * 80):
        for token in ("1-2-0123456789abcdef0123", "123456789012345678-9-aa"):
            line = f"{prefix}{mime.marker('track')}/1.{'Q' * 90}.sig é"
            [piece] = mime.compile_body(line)
            assert isinstance(piece, mime.Splice)
            encoded = token.encode().join(piece.parts)
            assert all(len(row) <= 76 for row in encoded.split(b"\r\n"))
            decoded = binascii.a2b_qp(encoded.replace(b"\r\n", b"\n")).decode()
            assert decoded == line.replace(mime.marker("track"), token) + "\n"
