"""Who one message is for: the contact fields a message may use (`fields.RECIPIENT_FIELDS`), of a
contact or of a typed address for a test send. Apart from rendering, so that the ledger and
`blasts create` do not load the templates."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.contacts.fields import RECIPIENT_FIELDS
from service.rendering.mime import clean_value

if TYPE_CHECKING:
    from service.models import Contact

# The contact's columns a claim loads for each message, in the order of Recipient's attributes
# after `email` and `contact_id` (the address comes from the queued row, frozen when queued).
CONTACT_COLUMNS = tuple(name for name in RECIPIENT_FIELDS if name != "email")


@dataclass(frozen=True)
class Recipient:
    """Attributes written out, not generated from the definitions, so that mypy checks their
    readers; the check below names the one a field that emails may use still lacks."""

    email: str
    contact_id: int | None = None
    civility: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    outlet: str | None = None
    language: str | None = None
    do_not_track: bool | None = None

    @classmethod
    def from_contact(cls, contact: Contact) -> Recipient:
        return cls(contact.email, contact.id, *(getattr(contact, name) for name in CONTACT_COLUMNS))

    @functools.cached_property
    def full_name(self) -> str:
        return clean_value(" ".join(filter(None, [self.first_name, self.last_name])))


_ATTRIBUTES = tuple(attribute.name for attribute in dataclasses.fields(Recipient))
if _ATTRIBUTES != ("email", "contact_id", *CONTACT_COLUMNS):
    raise TypeError(f"Recipient's attributes {_ATTRIBUTES[2:]} are not the contact fields emails "
                    f"may use, in their order: {CONTACT_COLUMNS} (see service/contacts/fields.py)")
