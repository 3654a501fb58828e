"""Interface language (French default, English) and times in the user's time zone.

The source strings are English; `FR` holds their French. `_()` picks the user's language
(stored on the user, or in the session before login). Dates use Babel's locale data."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from babel.dates import format_datetime as babel_format_datetime
from babel.numbers import format_decimal

from service.contacts.fields import FIELDS
from service.web.i18n_catalog import FR

LANGUAGES = {"fr": "Français", "en": "English"}
# Contact field labels are defined with the fields (service/contacts/fields.py).
CATALOGS = {"fr": {**FR, **{f.label: f.label_fr for f in FIELDS}}}


def current_language() -> str:
    from flask import g, has_request_context, session

    if not has_request_context():
        return "fr"
    if "language" not in g:
        from service.http.context import current_settings
        from service.web.auth import current_user

        user = current_user()
        language = (user.language if user is not None else None) or session.get("language")
        if language not in LANGUAGES:
            language = current_settings().default_language
        g.language = language if language in LANGUAGES else "fr"
    return str(g.language)


NAMESPACES = ("status:", "media:", "role:", "event:", "report:", "inbound:")


def translate(text: str, language: str, **params: object) -> str:
    translated = CATALOGS.get(language, {}).get(text)
    if translated is None:
        translated = text
        if text.startswith(NAMESPACES):
            translated = text.partition(":")[2].replace("_", " ")
    return translated % params if params else translated


def gettext(text: str, **params: object) -> str:
    return translate(text, current_language(), **params)


_ = gettext


def current_zone() -> ZoneInfo:
    from service.http.context import current_settings
    from service.web.auth import current_user

    user = current_user()
    return ZoneInfo(user.timezone) if user is not None and user.timezone else current_settings().zone


def utc_offset(value: datetime, zone: ZoneInfo) -> str:
    """'UTC+01:00' for the zone's offset at that instant."""
    offset = value.astimezone(zone).utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def format_time(value: datetime | None, *, with_offset: bool = False, pattern: str = "medium") -> str:
    """A datetime in the user's time zone and language ('6 juil. 2022, 10:00 (UTC+01:00)')."""
    if value is None:
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    zone = current_zone()
    language = current_language()
    fmt = {"medium": "d MMM y, HH:mm", "long": "EEEE d MMMM y, HH:mm:ss", "short": "dd/MM HH:mm"}[pattern]
    text = babel_format_datetime(value, fmt, tzinfo=zone, locale=language)
    return f"{text} ({utc_offset(value, zone)})" if with_offset else text


def format_number(value: float | int | None) -> str:
    if value is None:
        return "—"
    return format_decimal(value, locale=current_language())


def init_app(app: object) -> None:
    from flask import Flask

    assert isinstance(app, Flask)
    app.jinja_env.globals.update(_=gettext, current_language=current_language, LANGUAGES=LANGUAGES,
                                 i18n_reason=translate_reason)
    app.jinja_env.filters.update(localtime=format_time, number=format_number)


_NUMBER = re.compile(r"\d+")


def _lookup(text: str, catalog: dict[str, str]) -> str | None:
    """The catalog's entry for `text`, or for its shape with each number as '#' (the numbers
    are put back in order: 'attachments weigh 6144 KB' -> 'attachments weigh # KB')."""
    if text in catalog:
        return catalog[text]
    numbers = _NUMBER.findall(text)
    shaped = catalog.get(_NUMBER.sub("#", text)) if numbers else None
    if shaped is None or shaped.count("#") != len(numbers):
        return None
    values = iter(numbers)
    return re.sub("#", lambda _match: next(values), shaped)


def translate_reason(reason: str, language: str | None = None) -> str:
    """A domain error reason or warning (English) in the user's language: the whole sentence
    when the catalog has it (numbers may vary), else its known head before ': ' (the detail,
    e.g. a value, stays as is). English is the source, so it is returned unchanged."""
    language = language or current_language()
    catalog = CATALOGS.get(language, {})
    found = _lookup(reason, catalog)
    if found is not None:
        return found
    head, sep, detail = reason.partition(": ")
    found = _lookup(head, catalog) if sep else None
    if found is not None:
        return f"{found} : {detail}" if language == "fr" else f"{found}: {detail}"
    return reason
