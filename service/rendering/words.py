"""The words of an email in each language: labels, the personal greeting, the embargo notice."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from babel.dates import format_date

STRINGS: dict[str, dict[str, str]] = {
    "fr": {
        "kicker": "Communiqué de presse", "view_online": "Voir la version en ligne", "colon": " :",
        "press_contacts": "Contacts presse", "about": "À propos", "attachments": "Pièces jointes",
        "links": "Liens", "unsubscribe": "Se désabonner",
        "why": "Expéditeur : {sender}. Vous recevez ce communiqué en tant que journaliste.",
        "tracking": "Ce message mesure son ouverture et les clics sur ses liens ; vous "
                    "pouvez le refuser depuis la page de désabonnement.",
    },
    "en": {
        "kicker": "Press release", "view_online": "View this release online", "colon": ":",
        "press_contacts": "Press contacts", "about": "About", "attachments": "Attachments",
        "links": "Links", "unsubscribe": "Unsubscribe",
        "why": "Sender: {sender}. You receive this press release as a journalist.",
        "tracking": "This message records when it is opened and which links are clicked; "
                    "you can refuse this on the unsubscribe page.",
    },
    "es": {
        "kicker": "Comunicado de prensa", "view_online": "Ver la versión en línea", "colon": ":",
        "press_contacts": "Contactos de prensa", "about": "Acerca de", "attachments": "Adjuntos",
        "links": "Enlaces", "unsubscribe": "Darse de baja",
        "why": "Remitente: {sender}. Recibe este comunicado como periodista.",
        "tracking": "Este mensaje registra su apertura y los clics en sus enlaces; puede "
                    "rechazarlo en la página de baja.",
    },
    "ar": {
        "kicker": "بلاغ صحفي", "view_online": "عرض النسخة على الإنترنت", "colon": ":",
        "press_contacts": "جهات الاتصال الصحفية", "about": "نبذة", "attachments": "المرفقات",
        "links": "الروابط", "unsubscribe": "إلغاء الاشتراك",
        "why": "المرسل: {sender}. تتلقى هذا البلاغ بصفتك صحفيًا.",
        "tracking": "تسجّل هذه الرسالة فتحها والنقر على روابطها؛ يمكنك رفض ذلك من صفحة "
                    "إلغاء الاشتراك.",
    },
}

_FEMININE = {"mme", "mme.", "madame", "mlle", "mlle.", "mademoiselle", "mrs", "mrs.", "ms", "ms.",
             "miss", "sra", "sra.", "señora", "srta", "srta.", "السيدة", "f"}
_MASCULINE = {"m", "m.", "mr", "mr.", "monsieur", "sr", "sr.", "señor", "السيد"}
_ARABIC_CITIES = {"Casablanca": "الدار البيضاء", "Paris": "باريس", "London": "لندن"}


class Person(Protocol):
    @property
    def civility(self) -> str | None: ...
    @property
    def first_name(self) -> str | None: ...
    @property
    def last_name(self) -> str | None: ...
    @property
    def full_name(self) -> str: ...


def language_of(tag: str | None) -> str:
    """The primary subtag: "fr-MA" -> "fr"."""
    return (tag or "").replace("_", "-").split("-")[0].strip().lower()


def _gender(civility: str | None) -> str | None:
    word = (civility or "").strip().lower()
    if word in _FEMININE:
        return "f"
    if word in _MASCULINE:
        return "m"
    return None


def greeting_for(language: str, person: Person) -> str:
    """"Chère Élodie Martin," / "Dear Ms Smith," / "Madame, Monsieur," when the name is unknown."""
    name = person.full_name
    last = (person.last_name or "").strip() or name
    gender = _gender(person.civility)
    if language == "en":
        if gender and last:
            return f"Dear {'Ms' if gender == 'f' else 'Mr'} {last},"
        return f"Dear {name}," if name else "Dear Sir or Madam,"
    if language == "es":
        if gender and name:
            return f"{'Estimada' if gender == 'f' else 'Estimado'} {name}:"
        return f"Hola, {name}:" if name else "Estimada señora, estimado señor:"
    if language == "ar":
        if gender and name:
            return f"السيدة {name} المحترمة،" if gender == "f" else f"السيد {name} المحترم،"
        return f"مرحبًا {name}،" if name else "سيدتي، سيدي،"
    if gender and name:
        return f"{'Chère' if gender == 'f' else 'Cher'} {name},"
    if gender:
        return "Madame," if gender == "f" else "Monsieur,"
    return f"Bonjour {name}," if name else "Madame, Monsieur,"


def embargo_notice(language: str, until: datetime, zone: ZoneInfo) -> tuple[str, str]:
    """(banner, subject prefix) with the time in the office zone, in the variant's language."""
    local = until.astimezone(zone)
    city = str(zone.key).rsplit("/", 1)[-1].replace("_", " ")
    locale = language if language in STRINGS else "fr"
    day = format_date(local.date(), "d MMMM y", locale=locale)
    clock = f"{local:%H:%M}"
    if locale == "fr":
        clock = f"{local.hour} h {local:%M}"
        return (f"EMBARGO : ne pas publier avant le {day} à {clock}, heure de {city}",
                f"[EMBARGO jusqu'au {day}, {clock}] ")
    if locale == "en":
        return (f"EMBARGO: not for publication before {day} at {clock}, {city} time",
                f"[EMBARGOED until {day}, {clock}] ")
    if locale == "es":
        return (f"EMBARGO: no publicar antes del {day} a las {clock}, hora de {city}",
                f"[EMBARGO hasta el {day}, {clock}] ")
    city = _ARABIC_CITIES.get(city, city)
    return (f"حظر النشر: يُمنع النشر قبل {day} على الساعة {clock}، بتوقيت {city}",
            f"[حظر النشر حتى {day}، {clock}] ")


def human_size(size: int, language: str) -> str:
    unit = "o" if language == "fr" else "B"
    if size < 1024:
        return f"{size} {unit}"
    if size < 1024 * 1024:
        return f"{size / 1024:.0f} K{unit}"
    return f"{size / 1024 / 1024:.1f} M{unit}".replace(".", "," if language == "fr" else ".")
