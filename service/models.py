"""Every table in one file: the schema at a glance. Timestamps are aware and stored in UTC."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.db import Base, UTCDateTime, utcnow


class ContactStatus(StrEnum):
    active = "active"
    unsubscribed = "unsubscribed"
    bounced = "bounced"
    suppressed = "suppressed"


class MediaType(StrEnum):
    print = "print"
    online = "online"
    radio = "radio"
    tv = "tv"
    agency = "agency"
    freelance = "freelance"


class ReleaseStatus(StrEnum):
    draft = "draft"
    ready = "ready"


class BlastStatus(StrEnum):
    draft = "draft"
    scheduled = "scheduled"
    running = "running"
    paused = "paused"
    finished = "finished"
    cancelled = "cancelled"
    expired = "expired"


class MessageStatus(StrEnum):
    queued = "queued"
    sending = "sending"
    sent = "sent"
    deferred = "deferred"
    failed = "failed"
    bounced = "bounced"
    cancelled = "cancelled"  # its blast was cancelled before it was sent


class DeliveryOutcome(StrEnum):
    sent = "sent"
    deferred = "deferred"
    failed = "failed"
    bounced = "bounced"


class InboundKind(StrEnum):
    """What a message that came back is (service/inbound/classify.py)."""

    hard_bounce = "hard_bounce"
    soft_bounce = "soft_bounce"
    complaint = "complaint"
    unsubscribe = "unsubscribe"
    auto_reply = "auto_reply"
    reply = "reply"
    not_understood = "not_understood"


class Role(StrEnum):
    admin = "admin"
    editor = "editor"
    sender = "sender"


class ApiScope(StrEnum):
    """What an API key may do: read; write contacts, releases and draft blasts; send (start,
    schedule, pause, resume, cancel, resend); approve a blast waiting for a sender."""

    read = "read"
    write = "write"
    send = "send"
    approve = "approve"


def _created() -> Mapped[datetime]:
    return mapped_column(UTCDateTime, default=utcnow, nullable=False)


def _updated() -> Mapped[datetime]:
    return mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow, nullable=False)


list_memberships = Table(
    "list_memberships",
    Base.metadata,
    Column("list_id", ForeignKey("contact_lists.id", ondelete="CASCADE"), primary_key=True),
    Column("contact_id", ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True,
           index=True),
)

blast_lists = Table(
    "blast_lists",
    Base.metadata,
    Column("blast_id", ForeignKey("blasts.id", ondelete="CASCADE"), primary_key=True),
    Column("list_id", ForeignKey("contact_lists.id", ondelete="RESTRICT"), primary_key=True),
)


class Contact(Base):
    """One journalist. `email_key` (lower-cased address) makes the address unique case-insensitively;
    `tags` is stored as ",tag1,tag2," so a tag filter is one LIKE on both databases."""

    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    civility: Mapped[str | None] = mapped_column(String(40))
    first_name: Mapped[str | None] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200))
    outlet: Mapped[str | None] = mapped_column(String(300))
    role: Mapped[str | None] = mapped_column(String(300))
    media_type: Mapped[str | None] = mapped_column(String(20))
    language: Mapped[str | None] = mapped_column(String(35), index=True)
    country: Mapped[str | None] = mapped_column(String(2), index=True)
    city: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[str] = mapped_column(Text, default=",", nullable=False)
    status: Mapped[str] = mapped_column(String(20), default=ContactStatus.active, index=True)
    consent_source: Mapped[str | None] = mapped_column(String(300))
    do_not_track: Mapped[bool | None] = mapped_column(Boolean)  # None: not said (tracked if the blast is)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    bounced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    lists: Mapped[list[ContactList]] = relationship(
        secondary=list_memberships, back_populates="contacts")

    @property
    def tag_list(self) -> list[str]:
        return [t for t in self.tags.split(",") if t]


class ContactList(Base):
    __tablename__ = "contact_lists"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()

    contacts: Mapped[list[Contact]] = relationship(
        secondary=list_memberships, back_populates="lists")


class Suppression(Base):
    """Organisation-wide do-not-contact entry, by address; nothing can bypass it."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    reason: Mapped[str | None] = mapped_column(String(300))
    created_by: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = _created()


class TestSend(Base):
    """One address a test of a release was sent to, by whom: the per-user hourly cap and an audit."""

    __tablename__ = "test_sends"
    __table_args__ = (Index("ix_test_sends_actor_at", "actor", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"), index=True)
    actor: Mapped[str] = mapped_column(String(320))
    address: Mapped[str] = mapped_column(String(320))
    outcome: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime] = _created()


class Release(Base):
    """A press release. Language variants share `group_id` (the id of the default-language
    release, whose own group_id is its id)."""

    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int | None] = mapped_column(ForeignKey("releases.id"), index=True)
    slug: Mapped[str] = mapped_column(String(200), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    language: Mapped[str] = mapped_column(String(35), default="fr")
    status: Mapped[str] = mapped_column(String(20), default=ReleaseStatus.draft)
    kicker: Mapped[str | None] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(String(500))
    highlights: Mapped[list[str]] = mapped_column(JSON, default=list)
    dateline: Mapped[str | None] = mapped_column(String(300))
    body_format: Mapped[str] = mapped_column(String(10), default="markdown")  # markdown | html
    body: Mapped[str] = mapped_column(Text, default="")  # Markdown, or sanitized HTML
    about: Mapped[str | None] = mapped_column(Text)
    press_contacts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    embargo_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    from_name: Mapped[str | None] = mapped_column(String(200))
    from_email: Mapped[str | None] = mapped_column(String(320))
    reply_to: Mapped[str | None] = mapped_column(String(320))
    created_by: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="release", cascade="all, delete-orphan", order_by="Attachment.id")


class Attachment(Base):
    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"),
                                            index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(500))  # relative to the instance attachments folder
    created_at: Mapped[datetime] = _created()

    release: Mapped[Release] = relationship(back_populates="attachments")


class Blast(Base):
    """One release sent to an audience (lists + filters) at `send_at`."""

    __tablename__ = "blasts"

    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), default=BlastStatus.draft, index=True)
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    start_before: Mapped[datetime | None] = mapped_column(UTCDateTime)  # do not start after
    stop_after: Mapped[datetime | None] = mapped_column(UTCDateTime)  # stop sending after
    filters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    resend_of_id: Mapped[int | None] = mapped_column(ForeignKey("blasts.id"))
    recipient_count: Mapped[int] = mapped_column(Integer, default=0)
    paused_reason: Mapped[str | None] = mapped_column(Text)
    needs_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    # Whoever already received the release (any variant) is left out unless this was asked for.
    include_already_sent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    already_sent_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Every message carries the release (its recipient's language variant) as a PDF.
    attach_pdf: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Opens and clicks are recorded (a pixel, signed redirects), said in the footer; opt-in.
    track: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    approved_by: Mapped[str | None] = mapped_column(String(320))
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    approved_hash: Mapped[str | None] = mapped_column(String(64))  # the content approved
    created_by: Mapped[str | None] = mapped_column(String(320))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    release: Mapped[Release] = relationship()
    lists: Mapped[list[ContactList]] = relationship(secondary=blast_lists)
    events: Mapped[list[BlastEvent]] = relationship(
        back_populates="blast", cascade="all, delete-orphan", order_by="BlastEvent.id")


class BlastEvent(Base):
    """Who did what to a blast, and when (schedule, pause, resume, cancel, approve, ...)."""

    __tablename__ = "blast_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    blast_id: Mapped[int] = mapped_column(ForeignKey("blasts.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str | None] = mapped_column(String(320))
    detail: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = _created()

    blast: Mapped[Blast] = relationship(back_populates="events")


class QueuedMessage(Base):
    """The ledger: one row per (blast, contact), the source of truth for who got what."""

    __tablename__ = "queued_messages"
    __table_args__ = (
        UniqueConstraint("blast_id", "contact_id"),
        Index("ix_queued_messages_due", "status", "next_attempt_at"),
        # id last: the worker claims a blast's queued rows in id order straight from the index
        Index("ix_queued_messages_blast_status", "blast_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    blast_id: Mapped[int] = mapped_column(ForeignKey("blasts.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"),
                                            index=True)
    email: Mapped[str] = mapped_column(String(320))  # the address at enqueue time
    status: Mapped[str] = mapped_column(String(20), default=MessageStatus.queued)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    message_id: Mapped[str] = mapped_column(String(250))
    last_smtp_code: Mapped[int | None] = mapped_column(Integer)
    last_smtp_reply: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    contact: Mapped[Contact] = relationship()


class DeliveryLog(Base):
    """One row per SMTP attempt: the audit trail."""

    __tablename__ = "delivery_logs"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    queued_message_id: Mapped[int] = mapped_column(
        ForeignKey("queued_messages.id", ondelete="CASCADE"), index=True)
    blast_id: Mapped[int] = mapped_column(ForeignKey("blasts.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(20))
    smtp_code: Mapped[int | None] = mapped_column(Integer)
    smtp_reply: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None] = mapped_column(String(100))
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    at: Mapped[datetime] = _created()


class EngagementKind(StrEnum):
    open = "open"
    click = "click"


class Engagement(Base):
    """Opens and clicks of one ledger row: one row per (message, kind, link, person or machine),
    with the first and last time and how many times."""

    __tablename__ = "engagements"
    __table_args__ = (UniqueConstraint("queued_message_id", "kind", "url", "is_machine"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    queued_message_id: Mapped[int] = mapped_column(
        ForeignKey("queued_messages.id", ondelete="CASCADE"))
    blast_id: Mapped[int] = mapped_column(ForeignKey("blasts.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(10))
    url: Mapped[str] = mapped_column(String(2000), default="")  # "" for an open
    is_machine: Mapped[bool] = mapped_column(Boolean, default=False)
    machine_reason: Mapped[str | None] = mapped_column(String(40))
    count: Mapped[int] = mapped_column(Integer, default=1)
    first_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(20), default=Role.editor)
    language: Mapped[str] = mapped_column(String(10), default="fr")
    timezone: Mapped[str | None] = mapped_column(String(64))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Copied into the signed session cookie at login; raising it ends every existing session
    # (logout, password, role or active changes): a cookie alone cannot be revoked.
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = _created()


class ApiKey(Base):
    """Bearer keys: shown once, stored as a SHA-256 hash, revocable."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    prefix: Mapped[str] = mapped_column(String(20), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(100), default="read,write", server_default="read,write")
    created_at: Mapped[datetime] = _created()
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """An accepted incoming webhook, by its `webhook-id`: a replay gets the first answer back."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(200), unique=True)
    event_type: Mapped[str] = mapped_column(String(100))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # SHA-256 of the body: the same webhook-id with another body is a conflict, not a replay.
    body_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    received_at: Mapped[datetime] = _created()


class OutgoingEvent(Base):
    """A signed event for the integrator's endpoint (blast started/finished, unsubscribes ...)."""

    __tablename__ = "outgoing_events"
    __table_args__ = (Index("ix_outgoing_events_due", "delivered_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    event_type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()


class InboundMessage(Base):
    """One message that came back to the bounce/reply domain, with what it was, whom its verified
    VERP token named (none when it did not verify), what was done about it, and the raw message as
    evidence (bounded by COMMUNIQUE_INBOUND_MAX_BYTES)."""

    __tablename__ = "inbound_messages"
    __table_args__ = (Index("ix_inbound_messages_contact_kind", "contact_id", "kind"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), index=True)
    blast_id: Mapped[int | None] = mapped_column(ForeignKey("blasts.id", ondelete="SET NULL"),
                                                 index=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"))
    queued_message_id: Mapped[int | None] = mapped_column(
        ForeignKey("queued_messages.id", ondelete="SET NULL"))
    envelope_from: Mapped[str | None] = mapped_column(String(320))
    envelope_to: Mapped[str] = mapped_column(String(320))
    from_address: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    dsn_status: Mapped[str | None] = mapped_column(String(20))  # e.g. 5.1.1
    diagnostic: Mapped[str | None] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(300))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    raw_size: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = _created()
