"""End to end: sample list + sample release -> blast due -> worker runs -> N messages received,
N `sent` log rows, none twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conftest import ROOT, SAMPLES
from sqlalchemy import func, select

from service.contacts.importing import import_contacts
from service.delivery import blasts
from service.delivery.worker import run_worker
from service.models import Blast, BlastStatus, Contact, DeliveryLog, QueuedMessage
from service.releases.store import create_release


def test_sample_list_and_release_reach_every_journalist_once(db, smtp_settings, smtpd,  # type: ignore[no-untyped-def]
                                                             session_factory) -> None:
    """The national press sample list gets the task-force release: one personal multipart message per
    journalist at the scheduled time, each logged once as sent, with its ledger Message-ID."""
    now = datetime.now(UTC)
    import_contacts(db, (ROOT / "contacts" / "presse-nationale.csv").read_bytes(), list_name="presse",
                    now=now)
    release = create_release(db, smtp_settings,
                             body=(SAMPLES / "onmt-task-force-2022-07-06.md").read_text(encoding="utf-8"),
                             now=now)
    db.commit()
    blast = blasts.create_blast(db, smtp_settings, release_id=release.id, list_names=["presse"],
                                send_at=now + timedelta(seconds=1), now=now)
    db.commit()
    audience = blast.recipient_count
    assert audience > 30 and blast.status == BlastStatus.scheduled
    assert blasts.run_due_blasts(session_factory, smtp_settings, now=now) == []
    assert blasts.run_due_blasts(session_factory, smtp_settings, now=now + timedelta(seconds=1)) == [blast.id]

    run_worker(smtp_settings, until_idle=True, include_due=False)

    received = smtpd.handler.recipient_counts()
    assert len(received) == audience and set(received.values()) == {1}
    sent_logs = db.scalar(select(func.count()).select_from(DeliveryLog).where(DeliveryLog.outcome == "sent"))
    assert sent_logs == audience
    row = db.scalars(select(QueuedMessage).order_by(QueuedMessage.id)).first()
    assert row is not None
    contact = db.get(Contact, row.contact_id)
    message = smtpd.handler.received_by(row.email)[0].message()
    assert message["Message-ID"] == row.message_id
    assert "task force" in message["Subject"].lower()
    assert contact is not None and contact.email in message["To"]
    assert message.get_body(("plain",)) is not None and message.get_body(("html",)) is not None
    db.expire_all()
    assert db.scalar(select(Blast.status).where(Blast.id == blast.id)) == BlastStatus.finished
