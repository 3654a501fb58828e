"""The one contact validator (web form, JSON API and every CSV row), reading the field
definitions of `fields`, and the normalizers for address, language, country, media type, tags
and free text. Pure: no database."""

from __future__ import annotations

import gettext
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any

import langcodes
import pycountry
from email_validator import EmailNotValidError, validate_email

from service.contacts.fields import FIELDS, NON_ASCII_LOCAL, TAG_MAX_LENGTH, Kind
from service.errors import FieldError, ValidationError
from service.models import MediaType

# Names are matched without case, accents or punctuation; the translations pycountry ships cover
# French, Spanish, Arabic and German names ("Maroc", "Español", "العربية"), these cover the rest.
_LOCALES = ("fr", "es", "ar", "de")
_COUNTRY_ALIASES = {
    "uk": "GB", "great britain": "GB", "angleterre": "GB", "england": "GB", "grande bretagne": "GB",
    "usa": "US", "united states of america": "US", "etats unis d amerique": "US",
    "emirats": "AE", "uae": "AE", "eau": "AE", "russia": "RU", "south korea": "KR",
    "coree du sud": "KR", "holland": "NL", "hollande": "NL", "turkey": "TR", "turquie": "TR",
}
_LANGUAGE_ALIASES = {
    "english": "en", "francais": "fr", "french": "fr", "castellano": "es", "espanol": "es",
    "arabic": "ar", "arabe": "ar", "darija": "ary", "amazigh": "zgh", "tamazight": "zgh",
    "deutsch": "de", "italiano": "it", "portugues": "pt", "nederlands": "nl",
}
_MEDIA_TYPES = {
    MediaType.print: ("print", "presse", "presse ecrite", "ecrite", "journal", "quotidien",
                      "hebdomadaire", "magazine", "newspaper", "press", "print media"),
    MediaType.online: ("online", "web", "en ligne", "internet", "site web", "digital", "numerique",
                       "pure player", "presse en ligne", "site"),
    MediaType.radio: ("radio",),
    MediaType.tv: ("tv", "television", "tele", "tv radio"),
    MediaType.agency: ("agency", "agence", "agence de presse", "news agency", "wire"),
    MediaType.freelance: ("freelance", "free lance", "pigiste", "independant", "independent"),
}
_MEDIA_BY_NAME = {name: media for media, names in _MEDIA_TYPES.items() for name in names}

# Keep everything printable; drop C0/C1 controls, DEL and the Unicode line/paragraph separators;
# remove the bidi embeddings, overrides and isolates (they reorder a name in a To header).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]+")
_SPACES = re.compile(r"\s+")
# Invisible characters a copy from a web page or a word processor leaves at a cell's ends: zero
# width (non-)joiner and space, word joiner, BOM, Mongolian vowel separator; NBSP is a space.
_EDGES = re.compile("^[\\s\u180e\u200b\u200c\u200d\u2060\ufeff]+"
                    "|[\\s\u180e\u200b\u200c\u200d\u2060\ufeff]+\\Z")
_TAG_SPLIT = re.compile(r"[,;|]")
# A dot-atom local part of plain ASCII (RFC 5322 atext, minus the rare symbols): always valid.
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9_+\-]+(\.[A-Za-z0-9_+\-]+)*\Z")
# RFC 2142 mailbox names, which email-validator lower-cases: left to it, not to the fast path.
_ROLE_MAILBOXES = frozenset({"info", "marketing", "sales", "support", "abuse", "noc", "security",
                             "postmaster", "hostmaster", "usenet", "news", "webmaster", "www",
                             "uucp", "ftp"})
_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$")


def fold(value: str) -> str:
    """Lower-case, strip accents and punctuation: "Prénom " -> "prenom", "E-mail" -> "e mail"."""
    decomposed = unicodedata.normalize("NFKD", value.casefold())
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.sub(r"[\W_]+", " ", bare).split())


def clean_text(value: Any) -> str | None:
    """One line of printable text: CR/LF, tabs and control characters become single spaces."""
    if not value:
        return None
    if (isinstance(value, str) and value.isprintable() and "  " not in value
            and unicodedata.is_normalized("NFC", value)):
        return value.strip() or None
    text = _BIDI.sub("", unicodedata.normalize("NFC", str(value)))
    text = trim_edges(_SPACES.sub(" ", _CONTROL.sub(" ", text)))
    return text or None


def trim_edges(text: str) -> str:
    """Strip spaces and invisible characters from both ends (inside, they stay)."""
    return _EDGES.sub("", text)


def normalize_email(raw: str) -> tuple[str, str]:
    """Validate an address (syntax only, no DNS) -> (normalized address, case-insensitive key).

    Trimmed, domain lower-cased, IDN domains kept in their Unicode form (sent as punycode); a
    non-ASCII part before the @ is refused: it needs SMTPUTF8, which most servers lack."""
    candidate = trim_edges((clean_text(raw or "") or "").strip("<>"))
    if not candidate:
        raise ValidationError(FieldError("email", "is required"))
    local, _, domain = candidate.rpartition("@")
    if not local.isascii():
        raise ValidationError(FieldError("email", NON_ASCII_LOCAL, value=candidate))
    try:
        if _PLAIN_LOCAL.match(local) and local.lower() not in _ROLE_MAILBOXES:
            normalized = _plain_address(local, domain)
        else:
            normalized = validate_email(candidate, check_deliverability=False,
                                        allow_smtputf8=False).normalized
    except EmailNotValidError as exc:
        raise ValidationError(FieldError("email", f"not a valid address: {exc}",
                                         value=candidate)) from exc
    return normalized, normalized.lower()


def _plain_address(local: str, domain: str) -> str:
    """The common case, fast: a plain ASCII dot-atom before the @ is valid and normalizes to
    itself, so only the domain needs email-validator, once per domain (a list has few)."""
    unicode_domain, ascii_domain = _validate_domain(domain)
    normalized = f"{local}@{unicode_domain}"
    if max(len(candidate.encode()) for candidate in (
            f"{local}@{domain}", normalized, f"{local}@{ascii_domain}")) > 254:
        return str(validate_email(f"{local}@{domain}", check_deliverability=False,
                                  allow_smtputf8=False).normalized)
    return normalized


@lru_cache(maxsize=4096)
def _validate_domain(domain: str) -> tuple[str, str]:
    info = validate_email(f"x@{domain}", check_deliverability=False, allow_smtputf8=False)
    return info.domain, info.ascii_domain


@lru_cache(maxsize=4096)
def normalize_language(value: str) -> str:
    """A BCP 47 tag ("fr", "fr-FR", "ar-MA") from a tag in any case or a language name."""
    text = value.strip()
    if _LANGUAGE_TAG.match(text):
        tag = text.replace("_", "-")
        if langcodes.tag_is_valid(tag):
            return str(langcodes.standardize_tag(tag))
    code = _language_names().get(fold(text))
    if code is None:
        raise ValueError("not a known language (use a code such as fr, en, ar or fr-FR)")
    return code


@lru_cache(maxsize=4096)
def normalize_country(value: str) -> str:
    """An ISO 3166-1 alpha-2 code from a code or a country name in English, French, Spanish or
    Arabic ("MA", "mar", "Maroc", "United Kingdom")."""
    code = _country_names().get(fold(value))
    if code is None:
        raise ValueError("not a known country (use an ISO code such as MA, FR or GB)")
    return code


@lru_cache(maxsize=256)
def normalize_media_type(value: str) -> MediaType:
    media = _MEDIA_BY_NAME.get(fold(value))
    if media is None:
        raise ValueError("not a known media type (print, online, radio, tv, agency or freelance)")
    return media


def normalize_tags(value: Any) -> list[str]:
    """Tags from "a, b; c" or a list: lower-case, one line each, no separators, no duplicates."""
    items: Iterable[Any] = _TAG_SPLIT.split(value) if isinstance(value, str) else (value or ())
    tags: list[str] = []
    for item in items:
        tag = clean_text(_TAG_SPLIT.sub(" ", str(item)))
        if not tag:
            continue
        tag = tag.lower()
        if len(tag) > TAG_MAX_LENGTH:
            raise ValueError(f"tag longer than {TAG_MAX_LENGTH} characters")
        if tag not in tags:
            tags.append(tag)
    return tags


def tags_column(tags: Iterable[str]) -> str:
    """The stored form: ",tag1,tag2," (so a tag filter is one LIKE on both databases)."""
    return "," + "".join(f"{tag}," for tag in tags)


def validate_contact(data: Mapping[str, Any], *, partial: bool = False) -> dict[str, Any]:
    """The one validator for the web form, the JSON API and each CSV row.

    Returns the normalized fields present in `data` (all of them unless `partial`), with
    `email_key` next to `email`; an empty value becomes None (tags: []). Unknown keys are ignored.
    Raises ValidationError listing every bad field."""
    errors: list[FieldError] = []
    clean: dict[str, Any] = {}
    for field in FIELDS:
        name = field.name
        if partial and name not in data:
            continue
        raw = data.get(name)
        try:
            if field.kind is Kind.tags:
                clean[name] = normalize_tags(raw)
                continue
            if field.kind is Kind.flag:
                clean[name] = normalize_flag(raw)
                continue
            text = clean_text(raw)
            if field.kind is Kind.email:
                clean[name], clean["email_key"] = normalize_email(text or "")
            elif text is None:
                clean[name] = None
            elif field.kind is Kind.text:
                if field.max_length is not None and len(text) > field.max_length:
                    raise ValueError(f"longer than {field.max_length} characters")
                clean[name] = text
            else:
                clean[name] = _NORMALIZERS[field.kind](text)
        except ValidationError as exc:
            errors.extend(exc.errors)
        except ValueError as exc:
            errors.append(FieldError(name, str(exc), value=_shown(raw)))
    if errors:
        raise ValidationError(errors)
    return clean


_YES = {"1", "true", "yes", "y", "oui", "o", "x", "si", "sí", "نعم"}
_NO = {"0", "false", "no", "n", "non", "لا"}


def normalize_flag(raw: Any) -> bool | None:
    """A yes/no cell or JSON value: True, False, or None when empty (not said)."""
    if raw is None or isinstance(raw, bool):
        return raw
    text = (clean_text(raw) or "").lower()
    if not text:
        return None
    if text in _YES:
        return True
    if text in _NO:
        return False
    raise ValueError("not yes or no")


_NORMALIZERS: dict[Kind, Callable[[str], str]] = {
    Kind.language: normalize_language,
    Kind.country: normalize_country,
    Kind.media_type: lambda text: str(normalize_media_type(text)),
}


def _shown(raw: Any) -> str | None:
    if raw is None:
        return None
    return raw if isinstance(raw, str) else str(raw)


@lru_cache(maxsize=1)
def _country_names() -> dict[str, str]:
    names: dict[str, str] = {}
    translations = [gettext.translation("iso3166-1", pycountry.LOCALES_DIR, languages=[locale])
                    for locale in _LOCALES]
    for country in pycountry.countries:
        code = country.alpha_2
        english = [country.alpha_2, country.alpha_3, country.name,
                   getattr(country, "common_name", ""), getattr(country, "official_name", "")]
        for name in english:
            if name:
                names.setdefault(fold(name), code)
                for translation in translations:
                    names.setdefault(fold(translation.gettext(name)), code)
    names.update({fold(alias): code for alias, code in _COUNTRY_ALIASES.items()})
    names.pop("", None)
    return names


@lru_cache(maxsize=1)
def _language_names() -> dict[str, str]:
    names: dict[str, str] = {}
    translations = [gettext.translation("iso639-3", pycountry.LOCALES_DIR, languages=[locale])
                    for locale in _LOCALES]
    # Names of the languages with a two-letter code (the ones contact lists use); any other
    # language is accepted by its code ("zgh", "ary"), or through the aliases.
    for language in pycountry.languages:
        code = getattr(language, "alpha_2", None)
        if code is None:
            continue
        for name in (language.name, getattr(language, "common_name", "")):
            if name:
                names.setdefault(fold(name), code)
                for translation in translations:
                    names.setdefault(fold(translation.gettext(name)), code)
    names.update({fold(alias): code for alias, code in _LANGUAGE_ALIASES.items()})
    names.pop("", None)
    return names
