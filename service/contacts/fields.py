"""Every contact field, defined once: name, labels, CSV header aliases, JSON schema, length limit
and whether emails may use it. The web form, the API schema, the CSV header map and export, the
worker's claim and the renderer are built from these definitions, once, at import.

Standard library only: the worker imports it. The validators, with their heavy libraries
(email-validator, langcodes, pycountry), are in `validation`.

A new field: its definition here, a column in `models.Contact` with its migration, and the
template that shows it; one that emails may use also needs its typed attribute on
`rendering.Recipient` (an import-time check names it)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """How a value is read, normalized (`validation.validate_contact`) and typed in the API."""

    email = "email"
    text = "text"
    language = "language"
    country = "country"
    media_type = "media_type"
    tags = "tags"
    flag = "flag"  # yes/no; empty means "not said" (None)


class EmailUse(StrEnum):
    """What a message may do with a field."""

    none = "none"  # never leaves the press office: not loaded to send
    read = "read"  # loaded with each message for the renderer (greeting, language version)
    printed = "printed"  # loaded, and a template may print it: {{ recipient.<name> }}


@dataclass(frozen=True, slots=True)
class ContactField:
    name: str  # the attribute, column, form field, JSON property and export header
    label: str  # English, the interface's source string (web.i18n translates it)
    label_fr: str  # what the French interface shows
    kind: Kind
    max_length: int | None  # of the stored value (the column); None: not limited
    headers: tuple[str, ...]  # CSV header aliases, compared folded: no case, accent, punctuation
    emails: EmailUse = EmailUse.none
    input_max_length: int | None = None  # a raw API value may be longer: "United Kingdom" -> GB
    in_form: bool = True  # False: set by import and API only, shown after `status` in exports

    @property
    def input_schema(self) -> dict[str, Any]:
        """The JSON Schema of the value a client sends (create, update)."""
        if self.kind is Kind.email:
            return {"type": "string", "minLength": 3, "maxLength": self.max_length}
        if self.kind is Kind.tags:
            return {"type": "array", "items": {"type": "string", "maxLength": TAG_MAX_LENGTH},
                    "maxItems": TAG_MAX_COUNT}
        if self.kind is Kind.flag:
            return {"type": ["boolean", "string", "null"], "maxLength": 10}
        return {"type": ["string", "null"], "maxLength": self.input_max_length or self.max_length}

    @property
    def output_schema(self) -> dict[str, Any]:
        """The JSON Schema of the value the API returns."""
        if self.kind is Kind.email:
            return {"type": "string"}
        if self.kind is Kind.tags:
            return {"type": "array", "items": {"type": "string"}}
        if self.kind is Kind.flag:
            return {"type": ["boolean", "null"]}
        return {"type": ["string", "null"]}


TAG_MAX_LENGTH = 60
TAG_MAX_COUNT = 50  # per contact, through the API
# The email field's rule, which a release's sender address follows too.
NON_ASCII_LOCAL = "the part before @ must be ASCII: most mail servers refuse others"

FIELDS: tuple[ContactField, ...] = (
    ContactField(
        "email", "Email address", "Adresse e-mail", Kind.email, 320, emails=EmailUse.printed,
        headers=("email", "e mail", "mail", "courriel", "mel", "adresse email", "adresse e mail",
                 "adresse mail", "adresse electronique", "adresse courriel", "email address",
                 "e mail address", "mail address")),
    ContactField(
        "civility", "Civility", "Civilité", Kind.text, 40, emails=EmailUse.read,
        headers=("civilite", "civility", "title", "titre", "salutation", "prefix", "genre")),
    ContactField(
        "first_name", "First name", "Prénom", Kind.text, 200, emails=EmailUse.printed,
        headers=("prenom", "first name", "firstname", "given name", "forename", "prenoms")),
    ContactField(
        "last_name", "Last name", "Nom de famille", Kind.text, 200, emails=EmailUse.printed,
        headers=("nom", "last name", "lastname", "surname", "family name", "nom de famille")),
    ContactField(
        "outlet", "Outlet", "Média", Kind.text, 300, emails=EmailUse.printed,
        headers=("media", "support", "redaction", "outlet", "publication", "titre de presse",
                 "media outlet", "organisation", "organization", "company", "societe", "journal",
                 "employer", "entreprise")),
    ContactField(
        "role", "Position", "Fonction", Kind.text, 300,
        headers=("fonction", "poste", "role", "rubrique", "beat", "job title", "position",
                 "specialite", "desk", "service", "function", "titre du poste")),
    ContactField(
        "media_type", "Media type", "Type de média", Kind.media_type, 20, input_max_length=40,
        headers=("type de media", "type media", "media type", "type de support", "type",
                 "categorie de media", "media category", "kind of media")),
    ContactField(
        "language", "Language", "Langue", Kind.language, 35, emails=EmailUse.read,
        headers=("langue", "language", "lang", "langue de travail", "langue preferee",
                 "preferred language", "locale")),
    ContactField(
        "country", "Country", "Pays", Kind.country, 2, input_max_length=60,
        headers=("pays", "country", "nation", "country code", "code pays")),
    ContactField(
        "city", "City", "Ville", Kind.text, 200,
        headers=("ville", "city", "town", "localite", "commune")),
    ContactField(
        "tags", "Tags (comma separated)", "Étiquettes (séparées par des virgules)", Kind.tags,
        None, headers=("tags", "tag", "etiquettes", "etiquette", "mots cles", "keywords", "labels",
                       "label", "categories", "thematiques", "themes", "interets", "interests")),
    ContactField(
        "consent_source", "Source", "Source", Kind.text, 300, in_form=False,
        headers=("source", "consentement", "consent", "consent source", "source du consentement",
                 "origine", "origin", "opt in source")),
    ContactField(
        # Read with each message: such a contact gets no tracking pixel and no tracked links.
        "do_not_track", "Do not track", "Ne pas suivre", Kind.flag, None, in_form=False,
        emails=EmailUse.read,
        headers=("do not track", "dnt", "ne pas suivre", "no tracking", "pas de suivi",
                 "sans suivi")),
)
# What each message loads from its contact (the address first), and what templates may print.
RECIPIENT_FIELDS = tuple(field.name for field in FIELDS if field.emails is not EmailUse.none)
PRINTED_FIELDS = tuple(field.name for field in FIELDS if field.emails is EmailUse.printed)

