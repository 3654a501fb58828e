"""Release -> RenderedMessage: prepare a release once, render each recipient's message from it.

CONTRACT (used by delivery, web, api, cli; keep these names and signatures):
    Recipient                          frozen dataclass of the personal fields
    Recipient.from_contact(contact)    build one from a models.Contact
    prepare_release(session, release_id, settings) -> PreparedRelease
    PreparedRelease.render(recipient, *, message_id, now, test=False) -> RenderedMessage
    PreparedRelease.render_bytes(recipient, *, message_id, now, test=False) -> bytes  (hot path)
    PreparedRelease.envelope_from -> str   (MAIL FROM address)
    new_message_id(settings) -> str        ("<...@domain>")
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, formataddr

from sqlalchemy.orm import Session

from .config import Settings
from .errors import NotFound
from .models import Contact, Release

POLICY = SMTP_POLICY.clone(max_line_length=998)


@dataclass(frozen=True)
class Recipient:
    email: str
    contact_id: int | None = None
    civility: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    outlet: str | None = None
    language: str | None = None

    @classmethod
    def from_contact(cls, contact: Contact) -> Recipient:
        return cls(email=contact.email, contact_id=contact.id, civility=contact.civility,
                   first_name=contact.first_name, last_name=contact.last_name,
                   outlet=contact.outlet, language=contact.language)


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    html: str
    text: str
    headers: dict[str, str]
    message_id: str
    raw: bytes = field(repr=False)


@dataclass
class PreparedRelease:
    release_id: int
    subject: str
    text_body: str
    html_body: str
    settings: Settings

    @property
    def envelope_from(self) -> str:
        return self.settings.mail_from_address

    def render(self, recipient: Recipient, *, message_id: str, now: datetime,
               test: bool = False) -> RenderedMessage:
        subject = f"[TEST] {self.subject}" if test else self.subject
        message = EmailMessage(policy=POLICY)
        message["Subject"] = subject
        message["From"] = self.settings.mail_from
        message["To"] = formataddr((" ".join(filter(None, [recipient.first_name,
                                                            recipient.last_name])),
                                    recipient.email))
        message["Date"] = format_datetime(now)
        message["Message-ID"] = message_id
        message.set_content(self.text_body)
        message.add_alternative(self.html_body, subtype="html")
        headers = {k: str(v) for k, v in message.items()}
        return RenderedMessage(subject, self.html_body, self.text_body, headers, message_id,
                               message.as_bytes())

    def render_bytes(self, recipient: Recipient, *, message_id: str, now: datetime,
                     test: bool = False) -> bytes:
        return self.render(recipient, message_id=message_id, now=now, test=test).raw


def prepare_release(session: Session, release_id: int, settings: Settings) -> PreparedRelease:
    release = session.get(Release, release_id)
    if release is None:
        raise NotFound(f"release {release_id} does not exist")
    return PreparedRelease(release.id, release.title, release.body, f"<p>{release.body}</p>",
                           settings)


def new_message_id(settings: Settings) -> str:
    return f"<{uuid.uuid4().hex}@{settings.message_id_domain}>"
