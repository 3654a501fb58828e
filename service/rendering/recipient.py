"""Who one message is for: the personal fields of a contact (or of a typed address, for a test
send). Apart from rendering, so that the ledger and `blasts create` do not load the templates."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.rendering.mime import clean_value

if TYPE_CHECKING:
    from service.models import Contact


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

    @functools.cached_property
    def full_name(self) -> str:
        return clean_value(" ".join(filter(None, [self.first_name, self.last_name])))
