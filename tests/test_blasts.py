"""Blasts: audience, lifecycle with who/when, atomic start, expiry, progress, resend, test sends."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from service.config import Settings
from service.delivery import blasts
from service.errors import Conflict, ValidationError
from service.models import (
    Blast,
    BlastEvent,
    BlastStatus,
    Contact,
    ContactList,
    ContactStatus,
    MessageStatus,
    OutgoingEvent,
    QueuedMessage,
    Release,
    Role,
    Suppression,
    list_memberships,
)

NOW = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)


# ---- helpers shared by the delivery tests ---------------------------------------------------

def add_list(session: Session, name: str, count: int, *, start: int = 0, domain: str = "example.net",
             **fields: object) -> ContactList:
    """A list of `count` contacts j{start..}@domain, inserted in bulk."""
    contact_list = session.scalar(select(ContactList).where(ContactList.name == name))
    if contact_list is None:
        contact_list = ContactList(name=name)
        session.add(contact_list)
        session.flush()
    rows = []
    for i in range(start, start + count):
        email = f"j{i}@{domain}"
        rows.append({"email": email, "email_key": email.lower(), "first_name": f"Prénom{i}",
                     "last_name": f"Nom{i}", "tags": ",", "status": ContactStatus.active,
                     "created_at": NOW, "updated_at": NOW, **fields})
    existing = dict(session.execute(select(Contact.email_key, Contact.id).where(
        Contact.email_key.in_([r["email_key"] for r in rows]))).all())
    new_rows = [r for r in rows if r["email_key"] not in existing]
    if new_rows:
        session.execute(insert(Contact), new_rows)
    keys = [r["email_key"] for r in rows]
    ids = list(session.scalars(select(Contact.id).where(Contact.email_key.in_(keys))))
    session.execute(insert(list_memberships), [{"list_id": contact_list.id, "contact_id": i} for i in ids])
    session.commit()
    return contact_list


def add_release(session: Session, title: str = "L'ONMT met en ordre de bataille sa task force") -> Release:
    release = Release(slug=f"release-{session.scalar(select(func.count()).select_from(Release))}",
                      title=title, body="Casablanca, le 6 juillet 2022 : la Task Force de l'ONMT…",
                      language="fr")
    session.add(release)
    session.commit()
    return release


def ledger(session: Session, blast_id: int) -> dict[str, int]:
    session.expire_all()
    counts = blasts.blast_counts(session, blast_id)
    session.commit()  # end the read: on SQLite every transaction holds the write lock
    return counts


# ---- audience -------------------------------------------------------------------------------

def test_audience_counts_each_contact_once_minus_inactive_and_suppressed(db: Session) -> None:
    """A contact on two lists counts once; unsubscribed, bounced and suppressed contacts are left out."""
    add_list(db, "presse", 10)
    add_list(db, "agences", 5, start=5)  # j5..j9 are on both lists
    contacts = {c.email: c for c in db.scalars(select(Contact))}
    contacts["j1@example.net"].status = ContactStatus.unsubscribed
    contacts["j2@example.net"].status = ContactStatus.bounced
    db.add(Suppression(email_key="j3@example.net", reason="asked by phone"))
    db.commit()
    assert blasts.count_audience(db, ["presse", "agences"], None) == 7
    preview = blasts.preview_audience(db, ["presse", "agences"], None, limit=3)
    assert [c.email for c in preview] == ["j0@example.net", "j4@example.net", "j5@example.net"]


def test_audience_filters_by_language_country_media_type_and_tags(db: Session) -> None:
    """Filters narrow the audience: language (with regional variants), country, media type, any tag."""
    add_list(db, "presse", 4)
    contacts = list(db.scalars(select(Contact).order_by(Contact.id)))
    values = [("fr-MA", "MA", "print", ",economie,"), ("en", "FR", "tv", ",tourisme,"),
              ("fr", "ma", "print", ",tourisme,sport,"), ("ar", "MA", "radio", ",")]
    for contact, (language, country, media, tags) in zip(contacts, values, strict=True):
        contact.language, contact.country, contact.media_type, contact.tags = language, country, media, tags
    db.commit()
    assert blasts.count_audience(db, ["presse"], {"languages": ["fr"]}) == 2
    assert blasts.count_audience(db, ["presse"], {"countries": ["MA"], "media_types": ["print"]}) == 2
    assert blasts.count_audience(db, ["presse"], {"tags": ["tourisme", "economie"]}) == 3
    with pytest.raises(ValidationError):
        blasts.count_audience(db, ["presse"], {"colour": ["red"]})
    with pytest.raises(ValidationError):
        blasts.count_audience(db, ["nope"], None)


# ---- lifecycle ------------------------------------------------------------------------------

def test_blast_without_send_time_starts_now_with_one_ledger_row_per_contact(db: Session,
                                                                            settings: Settings) -> None:
    """Creating a blast without a send time starts it at once: running, one queued row per contact,
    each with its own Message-ID, and the start recorded as an event and an outgoing event."""
    add_list(db, "presse", 6)
    add_list(db, "radio", 3, start=4)
    release = add_release(db)
    blast = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse", "radio"],
                                actor="amal@onmt.example.org", now=NOW)
    db.commit()
    assert blast.status == BlastStatus.running and blast.recipient_count == 7
    rows = list(db.scalars(select(QueuedMessage).where(QueuedMessage.blast_id == blast.id)))
    assert len(rows) == 7 and {r.status for r in rows} == {MessageStatus.queued}
    assert len({r.message_id for r in rows}) == 7
    assert all(r.message_id.startswith("<") and r.message_id.endswith("@onmt.example.org>") for r in rows)
    actions = [(e.action, e.actor) for e in db.scalars(select(BlastEvent).order_by(BlastEvent.id))]
    assert actions[:2] == [("created", "amal@onmt.example.org"), ("scheduled", "amal@onmt.example.org")]
    assert actions[2][0] == "started"
    assert db.scalar(select(OutgoingEvent.event_type)) == "blast.started"


def test_starting_is_atomic_so_a_blast_never_starts_twice(db: Session, settings: Settings,
                                                          session_factory) -> None:  # type: ignore[no-untyped-def]
    """Two scheduler runs for the same due blast: the first starts it, the second finds nothing to do."""
    add_list(db, "presse", 5)
    release = add_release(db)
    blast = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"],
                                send_at=NOW + timedelta(minutes=1), now=NOW)
    db.commit()
    assert blast.status == BlastStatus.scheduled and blast.recipient_count == 5
    assert blasts.run_due_blasts(session_factory, settings, now=NOW) == []
    assert blasts.run_due_blasts(session_factory, settings, now=NOW + timedelta(minutes=1)) == [blast.id]
    assert blasts.run_due_blasts(session_factory, settings, now=NOW + timedelta(minutes=2)) == []
    with session_factory() as session:
        assert not blasts.start_blast(session, settings, blast.id, now=NOW + timedelta(minutes=3))
        assert session.scalar(select(func.count()).select_from(QueuedMessage)) == 5
        assert session.get(Blast, blast.id).status == BlastStatus.running  # type: ignore[union-attr]


def test_after_downtime_a_blast_past_its_start_limit_expires(db: Session, settings: Settings,
                                                             session_factory) -> None:  # type: ignore[no-untyped-def]
    """A due blast within its "do not start after" starts; one past it is marked expired, with no rows."""
    add_list(db, "presse", 3)
    release = add_release(db)
    late = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"],
                               send_at=NOW + timedelta(hours=1), start_before=NOW + timedelta(hours=2),
                               now=NOW)
    fine = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"],
                               send_at=NOW + timedelta(hours=1), start_before=NOW + timedelta(hours=5),
                               now=NOW)
    db.commit()
    assert blasts.run_due_blasts(session_factory, settings, now=NOW + timedelta(hours=3)) == [fine.id]
    db.expire_all()
    assert db.get(Blast, late.id).status == BlastStatus.expired  # type: ignore[union-attr]
    assert ledger(db, late.id)["queued"] == 0 and ledger(db, fine.id)["queued"] == 3
    assert db.scalar(select(BlastEvent.action).where(BlastEvent.blast_id == late.id)
                     .order_by(BlastEvent.id.desc())) == "expired"


def test_stop_after_fails_unsent_rows_and_expires_the_blast(db: Session, settings: Settings,
                                                            session_factory) -> None:  # type: ignore[no-untyped-def]
    """Past "stop sending after", rows still queued fail with a clear reply and the blast is expired."""
    add_list(db, "presse", 3)
    release = add_release(db)
    blast = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"], now=NOW,
                                stop_after=NOW + timedelta(hours=1))
    db.commit()
    blasts.run_due_blasts(session_factory, settings, now=NOW + timedelta(hours=2))
    db.expire_all()
    assert db.get(Blast, blast.id).status == BlastStatus.expired  # type: ignore[union-attr]
    rows = list(db.scalars(select(QueuedMessage).where(QueuedMessage.blast_id == blast.id)))
    assert {r.status for r in rows} == {MessageStatus.failed}
    assert "stop sending after" in (rows[0].last_smtp_reply or "")


def test_pause_resume_cancel_are_recorded_and_refused_when_the_state_does_not_allow(
        db: Session, settings: Settings) -> None:
    """Pause, resume and cancel change state with who/when; impossible transitions raise Conflict."""
    add_list(db, "presse", 2)
    release = add_release(db)
    blast = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"], now=NOW)
    with pytest.raises(Conflict):
        blasts.resume_blast(db, blast.id, actor="a", now=NOW)
    assert blasts.pause_blast(db, blast.id, actor="amal", now=NOW).status == BlastStatus.paused
    assert blasts.resume_blast(db, blast.id, actor="karim", now=NOW).status == BlastStatus.running
    assert blasts.cancel_blast(db, blast.id, actor="amal", now=NOW).status == BlastStatus.cancelled
    with pytest.raises(Conflict):
        blasts.pause_blast(db, blast.id, actor="amal", now=NOW)
    db.commit()
    events = [(e.action, e.actor) for e in db.scalars(select(BlastEvent).order_by(BlastEvent.id))][-3:]
    assert events == [("paused", "amal"), ("resumed", "karim"), ("cancelled", "amal")]


def test_editor_blast_needs_approval_when_required(db: Session, settings: Settings) -> None:
    """With approval required, an editor's blast stays a draft until a sender approves it."""
    import dataclasses

    strict = dataclasses.replace(settings, require_approval=True)
    add_list(db, "presse", 2)
    release = add_release(db)
    blast = blasts.create_blast(db, strict, release_id=release.id, list_names=["presse"], now=NOW,
                                actor="editor@x", actor_role=Role.editor, send_at=NOW + timedelta(hours=1))
    assert blast.status == BlastStatus.draft and blast.needs_approval
    with pytest.raises(Conflict):
        blasts.schedule_blast(db, blast.id, send_at=NOW + timedelta(hours=1), actor="editor@x", now=NOW)
    blasts.approve_blast(db, blast.id, actor="sender@x", now=NOW, settings=strict)
    assert blast.status == BlastStatus.scheduled and blast.approved_by == "sender@x"
    blasts.reschedule_blast(db, blast.id, send_at=NOW, actor="sender@x", now=NOW, settings=strict)
    assert blast.status == BlastStatus.running and ledger(db, blast.id)["queued"] == 2


def test_progress_and_csv_export_read_the_ledger(db: Session, settings: Settings) -> None:
    """Progress counts every status, computes a rate from recent sends, and the CSV lists the rows."""
    add_list(db, "presse", 4)
    release = add_release(db)
    blast = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"], now=NOW)
    rows = list(db.scalars(select(QueuedMessage).order_by(QueuedMessage.id)))
    rows[0].status, rows[0].sent_at = MessageStatus.sent, NOW - timedelta(seconds=10)
    rows[1].status, rows[1].sent_at = MessageStatus.sent, NOW - timedelta(seconds=5)
    rows[2].status, rows[2].last_smtp_code = MessageStatus.failed, 550
    db.commit()
    progress = blasts.blast_progress(db, blast.id, now=NOW)
    assert progress["counts"] == {"queued": 1, "sending": 0, "sent": 2, "deferred": 0, "failed": 1,
                                  "bounced": 0, "cancelled": 0}
    assert progress["status"] == "running" and progress["rate"] == 0.2 and progress["eta"]
    out = io.StringIO()
    assert blasts.export_deliveries_csv(db, blast.id, out, status="failed") == 1
    assert out.getvalue().splitlines()[1].startswith("j2@example.net,")


def test_resend_to_unsent_targets_only_contacts_who_did_not_get_it(db: Session, settings: Settings) -> None:
    """Resend makes a new blast limited to the previous blast's rows that were not sent."""
    add_list(db, "presse", 4)
    release = add_release(db)
    blast = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"], now=NOW)
    rows = list(db.scalars(select(QueuedMessage).order_by(QueuedMessage.id)))
    rows[0].status = rows[1].status = MessageStatus.sent
    rows[2].status = MessageStatus.failed
    db.commit()
    with pytest.raises(Conflict):
        blasts.resend_to_unsent(db, settings, blast.id, actor="amal", now=NOW)
    blasts.cancel_blast(db, blast.id, actor="amal", now=NOW)
    again = blasts.resend_to_unsent(db, settings, blast.id, actor="amal", now=NOW)
    db.commit()
    assert again.resend_of_id == blast.id and again.status == BlastStatus.running
    emails = set(db.scalars(select(QueuedMessage.email).where(QueuedMessage.blast_id == again.id)))
    assert emails == {"j2@example.net", "j3@example.net"}



def test_resend_clicked_twice_sends_no_second_copy(db: Session, settings: Settings) -> None:
    """A second resend of the same blast (a double click, an API retry) queues nobody who got the
    release or is still pending in the first resend."""
    add_list(db, "presse", 3)
    release = add_release(db)
    blast = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"], now=NOW)
    first_row = db.scalars(select(QueuedMessage).order_by(QueuedMessage.id)).first()
    assert first_row is not None
    first_row.status = MessageStatus.sent
    db.commit()
    blasts.cancel_blast(db, blast.id, actor="amal", now=NOW)
    first = blasts.resend_to_unsent(db, settings, blast.id, actor="amal", now=NOW)
    db.commit()
    assert blasts.blast_counts(db, first.id)["queued"] == 2
    second = blasts.resend_to_unsent(db, settings, blast.id, actor="amal", now=NOW)
    db.commit()
    assert blasts.blast_counts(db, second.id)["queued"] == 0, "pending in the first resend"
    db.execute(update(QueuedMessage).where(QueuedMessage.blast_id == first.id)
               .values(status=MessageStatus.sent))
    db.commit()
    third = blasts.resend_to_unsent(db, settings, blast.id, actor="amal", now=NOW)
    db.commit()
    assert blasts.blast_counts(db, third.id)["queued"] == 0, "already sent by the first resend"


def test_delivery_log_export_neutralizes_formulas(db: Session, settings: Settings) -> None:
    """The delivery-log CSV never hands a spreadsheet a formula, even in a relay's reply."""
    import csv
    import io

    add_list(db, "presse", 1)
    release = add_release(db)
    blast = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"], now=NOW)
    row = db.scalars(select(QueuedMessage)).one()
    row.status, row.last_smtp_code = MessageStatus.failed, 550
    row.last_smtp_reply = '=HYPERLINK("http://evil.example","x")'
    db.commit()
    out = io.StringIO()
    blasts.export_deliveries_csv(db, blast.id, out)
    exported = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert exported[0]["last_smtp_reply"] == '\'=HYPERLINK("http://evil.example","x")'


def test_cli_creates_shows_pauses_and_exports_a_blast(db: Session, runner) -> None:  # type: ignore[no-untyped-def]
    """`blasts create --json` starts a blast now, `show --json` reports counts, pause/resume/cancel
    change its state, `deliveries --csv` lists the ledger, and `--at` schedules for later."""
    import json

    from service.cli import main

    add_list(db, "presse", 3)
    release = add_release(db)
    created = runner.invoke(main, ["blasts", "create", "--release", str(release.id), "--list", "presse",
                                   "--json"])
    assert created.exit_code == 0, created.output
    data = json.loads(created.output)
    assert data == {"id": data["id"], "status": "running", "recipients": 3, "already_sent": 0,
                    "attach_pdf": False, "track": False}
    shown = json.loads(runner.invoke(main, ["blasts", "show", str(data["id"]), "--json"]).output)
    assert shown["counts"]["queued"] == 3 and shown["status"] == "running" and "eta" in shown
    assert "paused" in runner.invoke(main, ["blasts", "pause", str(data["id"])]).output
    assert "running" in runner.invoke(main, ["blasts", "resume", str(data["id"])]).output
    assert "cancelled" in runner.invoke(main, ["blasts", "cancel", str(data["id"])]).output
    refused = runner.invoke(main, ["blasts", "pause", str(data["id"])])
    assert refused.exit_code == 1 and "cancelled" in refused.output
    exported = runner.invoke(main, ["blasts", "deliveries", str(data["id"]), "--status", "cancelled",
                                    "--csv"])
    assert exported.output.splitlines()[0].startswith("email,") and len(exported.output.splitlines()) == 4
    later = json.loads(runner.invoke(main, ["blasts", "create", "--release", str(release.id), "--list",
                                            "presse", "--at", "2999-01-01T09:00", "--json"]).output)
    assert later["status"] == "scheduled" and later["recipients"] == 3
    listed = json.loads(runner.invoke(main, ["blasts", "list", "--json"]).output)
    assert [b["id"] for b in listed] == [later["id"], data["id"]]
