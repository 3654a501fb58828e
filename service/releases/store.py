"""Releases: create and update (Markdown import or CMS HTML), language variants, slugs,
attachments on disk, embargo and status; validation and previews."""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.config import Settings
from service.contacts.fields import NON_ASCII_LOCAL
from service.db import MAX_ID
from service.delivery.blasts import withdraw_approvals
from service.errors import Conflict, DuplicateRelease, FieldError, NotFound, RenderError, ValidationError
from service.models import (
    Attachment,
    Blast,
    Contact,
    Release,
    ReleaseStatus,
)
from service.releases.markdown import (
    HtmlTooComplex,
    ReleaseDraft,
    import_markdown,
    markdown_to_html,
    sanitize_html,
)
from service.rendering.words import language_of

log = logging.getLogger(__name__)

ATTACHMENT_TYPES = {
    "application/pdf": (b"%PDF-",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}
_SINGLE_LINE = ("title", "kicker", "dateline", "from_name", "from_email", "reply_to", "external_id")
_UPDATABLE = {"title", "body", "body_format", "language", "kicker", "highlights", "dateline", "about",
              "press_contacts", "embargo_until", "from_name", "from_email", "reply_to", "status",
              "external_id"}

__all__ = ["ReleaseDraft", "add_attachment", "copy_release", "create_release", "get_release",
           "has_started_blast", "import_markdown", "list_releases", "preview", "update_release",
           "validate_release"]


def create_release(session: Session, settings: Settings, *, title: str | None = None, body: str,
                   body_format: str = "markdown", language: str = "fr", kicker: str | None = None,
                   highlights: list[str] | None = None, dateline: str | None = None,
                   about: str | None = None, press_contacts: list[dict[str, Any]] | None = None,
                   embargo_until: datetime | None = None, from_name: str | None = None,
                   from_email: str | None = None, reply_to: str | None = None,
                   external_id: str | None = None, variant_of: int | None = None,
                   actor: str | None = None, now: datetime, allow_duplicate: bool = False) -> Release:
    """A new draft release. A Markdown body without a title is parsed as a pasted release
    (title, kicker, highlights, dateline, contacts); explicit arguments win over what it found.
    A release with the title and body of an existing one raises DuplicateRelease (naming it)
    unless `allow_duplicate`: importing the same file twice must not lead to sending it twice."""
    fields: dict[str, Any] = {"body": body, "body_format": body_format, "language": language,
                              "kicker": kicker, "highlights": highlights, "dateline": dateline,
                              "about": about, "press_contacts": press_contacts, "title": title}
    if body_format == "markdown" and title is None:
        try:
            draft = import_markdown(body, language=language)
        except ValueError as exc:
            raise ValidationError(FieldError("body", str(exc))) from exc
        found = {"title": draft.title, "body": draft.body, "kicker": draft.kicker,
                 "highlights": draft.highlights, "dateline": draft.dateline, "about": draft.about,
                 "press_contacts": draft.press_contacts}
        fields.update({k: v for k, v in found.items() if fields.get(k) in (None, []) or k == "body"})
    fields.update(embargo_until=embargo_until, from_name=from_name, from_email=from_email,
                  reply_to=reply_to, external_id=external_id)
    values = _clean(fields)
    release = Release(**values, status=ReleaseStatus.draft, created_by=actor, created_at=now,
                      updated_at=now, slug=_unique_slug(session, values["title"]))
    if variant_of is not None:
        base = get_release(session, variant_of)
        group_id = base.group_id or base.id
        base.group_id = group_id
        taken = {language_of(r.language) for r in session.scalars(
            select(Release).where((Release.group_id == group_id) | (Release.id == group_id)))}
        if language_of(release.language) in taken:
            raise ValidationError(FieldError("language", "this release already has a variant "
                                             f"in this language: {release.language}"))
        release.group_id = group_id
        # The embargo belongs to the release, not to a language version: a variant shares it.
        if embargo_until is None:
            release.embargo_until = base.embargo_until
        else:
            _share_embargo(session, group_id, release.embargo_until)
    if not allow_duplicate:
        existing = find_duplicate(session, values["title"], values["body"])
        if existing is not None:
            raise DuplicateRelease(existing.id, existing.slug)
    session.add(release)
    session.flush()
    if release.group_id is None:
        release.group_id = release.id
    else:  # a new language variant changes what an approval covered
        withdraw_approvals(session, release.group_id, now=now, actor=actor,
                           what=f"new {release.language} variant")
    log.info("release %s: created (%s, %s)", release.id, release.language, release.slug)
    return release


def find_duplicate(session: Session, title: str, body: str) -> Release | None:
    """The oldest release with exactly this title and body, if any."""
    return session.scalars(select(Release).where(Release.title == title, Release.body == body)
                           .order_by(Release.id).limit(1)).first()


def update_release(session: Session, settings: Settings, release_id: int, *, now: datetime,
                   **fields: Any) -> Release:
    """Change a release's fields; refused (Conflict) once a blast of it or of a language variant
    has started, so every recipient gets the same version."""
    release = get_release(session, release_id)
    if has_started_blast(session, release):
        raise Conflict(f"release {release.id} has started sending: it can no longer be edited, "
                       "so that every recipient gets the same version")
    unknown = set(fields) - _UPDATABLE
    if unknown:
        raise ValidationError([FieldError(name, "cannot be changed") for name in sorted(unknown)])
    current = {name: getattr(release, name) for name in _UPDATABLE - {"status"}}
    current.update({k: v for k, v in fields.items() if k != "status"})
    if "body" in fields and current["body_format"] == "html":
        current["body"] = fields["body"]
    values = _clean(current)
    if "status" in fields:
        try:
            values["status"] = ReleaseStatus(fields["status"])
        except ValueError as exc:
            raise ValidationError(FieldError("status", "must be draft or ready")) from exc
    for name, value in values.items():
        if name in fields or name == "body":
            setattr(release, name, value)
    if "embargo_until" in fields:
        _share_embargo(session, release.group_id or release.id, release.embargo_until, now=now)
    release.updated_at = now
    session.flush()
    changed = sorted(name for name in fields if name != "status")
    if changed:
        withdraw_approvals(session, release.group_id or release.id, now=now, actor=None,
                           what="edited " + ", ".join(changed))
    log.info("release %s: updated (%s)", release.id, ", ".join(sorted(fields)))
    return release


def _share_embargo(session: Session, group_id: int, until: datetime | None, *,
                   now: datetime | None = None) -> None:
    """Every language variant of the release gets the same embargo (set, moved or lifted)."""
    for variant in session.scalars(select(Release).where(
            (Release.group_id == group_id) | (Release.id == group_id))):
        if variant.embargo_until != until:
            variant.embargo_until = until
            if now is not None:
                variant.updated_at = now
    session.flush()


def has_started_blast(session: Session, release: Release) -> bool:
    """A blast of this release or of one of its language variants has started (running, paused,
    finished, or cancelled or expired after starting)."""
    group_id = release.group_id or release.id
    return session.scalar(select(Blast.id).join(Release, Blast.release_id == Release.id).where(
        (Release.group_id == group_id) | (Release.id == group_id) | (Release.id == release.id),
        Blast.started_at.is_not(None)).limit(1)) is not None


def copy_release(session: Session, settings: Settings, release_id: int, *, actor: str | None,
                 now: datetime) -> Release:
    """A new version of a release to edit and send separately: a draft copy of the release and of
    each of its language variants (new slugs, no blasts, attachments copied, no CMS id), in a
    group of its own. Returns the copy of `release_id`."""
    original = get_release(session, release_id)
    copies: dict[int, Release] = {}
    head: Release | None = None
    for source in variants_of(session, original):
        copy = create_release(
            session, settings, title=source.title, body=source.body, body_format=source.body_format,
            language=source.language, kicker=source.kicker, highlights=list(source.highlights or []),
            dateline=source.dateline, about=source.about,
            press_contacts=[dict(c) for c in source.press_contacts or []],
            embargo_until=source.embargo_until, from_name=source.from_name,
            from_email=source.from_email, reply_to=source.reply_to,
            variant_of=head.id if head is not None else None, actor=actor, now=now,
            allow_duplicate=True)  # the same text on purpose: the new version is edited next
        head = head or copy
        copies[source.id] = copy
        folder = Path(settings.instance_path) / "attachments"
        for attachment in source.attachments:
            add_attachment(session, settings, copy.id, filename=attachment.filename,
                           content_type=attachment.content_type,
                           data=(folder / attachment.path).read_bytes(), now=now)
    log.info("release %s: new version %s", original.id, copies[original.id].id)
    return copies[original.id]


def get_release(session: Session, id_or_slug: int | str) -> Release:
    release = None
    if isinstance(id_or_slug, int) or re.fullmatch(r"[0-9]{1,10}", id_or_slug):
        # A slug of digits may be an id; past MAX_ID it names no row (and SQLite would overflow).
        number = int(id_or_slug)
        release = session.get(Release, number) if 1 <= number <= MAX_ID else None
    if release is None:
        release = session.scalar(select(Release).where(Release.slug == str(id_or_slug)))
    if release is None:
        raise NotFound(f"release {id_or_slug} does not exist")
    return release


def list_releases(session: Session) -> list[Release]:
    return list(session.scalars(select(Release).order_by(Release.id.desc())))


def variants_of(session: Session, release: Release) -> list[Release]:
    group_id = release.group_id or release.id
    return list(session.scalars(select(Release).where(
        (Release.group_id == group_id) | (Release.id == group_id)).order_by(Release.id)))


def add_attachment(session: Session, settings: Settings, release_id: int, *, filename: str,
                   content_type: str, data: bytes, now: datetime) -> Attachment:
    """Store a PDF or image under <instance>/attachments/<release id>/, checked by type and size."""
    release = get_release(session, release_id)
    content_type = (content_type or "").split(";")[0].strip().lower()
    if content_type not in ATTACHMENT_TYPES:
        raise ValidationError(FieldError("content_type", "only PDF and images (PNG, JPEG, GIF, "
                                         "WebP) can be attached", value=content_type))
    if not data.startswith(ATTACHMENT_TYPES[content_type]) or (
            content_type == "image/webp" and data[8:12] != b"WEBP"):
        raise ValidationError(FieldError("file", f"the content is not a {content_type} file"))
    if len(data) > settings.attachment_max_bytes:
        raise ValidationError(FieldError("file", f"is larger than {settings.attachment_max_bytes} "
                                         "bytes"))
    name = _safe_filename(filename)
    digest = hashlib.sha256(data).hexdigest()
    relative = f"{release.id}/{digest[:16]}-{name}"
    path = Path(settings.instance_path) / "attachments" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    attachment = Attachment(release_id=release.id, filename=name, content_type=content_type,
                            size_bytes=len(data), sha256=digest, path=relative, created_at=now)
    session.add(attachment)
    release.updated_at = now
    session.flush()
    log.info("release %s: attachment %s stored (%d bytes)", release.id, attachment.id, len(data))
    withdraw_approvals(session, release.group_id or release.id, now=now, actor=None,
                       what=f"attachment {attachment.filename} added")
    return attachment


def validate_release(session: Session, settings: Settings, release_id: int) -> list[str]:
    """Warnings a press officer should see before sending; a template or variable error raises
    RenderError (with the template line) here rather than during a blast."""
    from service.rendering.prepare import Recipient, new_message_id, prepare_release

    release = get_release(session, release_id)
    warnings = []
    if len(release.title) > 120:
        warnings.append("the title is longer than 120 characters: mail clients will cut the subject")
    if not (release.body or "").strip():
        warnings.append("the release has no body")
    if not release.press_contacts:
        warnings.append("the release has no press contact")
    if re.search(r"<img[^>]+src=\"https?://", release.body or "") or re.search(
            r"!\[[^\]]*\]\(https?://", release.body or ""):
        warnings.append("the release shows remote images: many mail clients block them")
    total = sum(a.size_bytes for a in release.attachments)
    if total > 5 * 1024 * 1024:
        warnings.append(f"attachments weigh {total // 1024} KB: consider linking to them instead")
    prepared = prepare_release(session, release.id, settings)
    for variant in prepared.variants.values():
        sample = Recipient(email="preview@example.org", language=variant.language)
        prepared.render_bytes(sample, message_id=new_message_id(settings), now=release.updated_at)
    return warnings


def preview(session: Session, settings: Settings, release_id: int | str, *, email: str | None = None,
            contact_id: int | None = None, fmt: str = "html", now: datetime,
            test: bool = False) -> str | bytes:
    """What one contact would receive: the HTML part, the text part, or the whole .eml bytes."""
    from service.contacts.store import normalize_email
    from service.rendering.prepare import Recipient, new_message_id, prepare_release

    if fmt not in ("html", "text", "eml"):
        raise ValidationError(FieldError("format", "must be html, text or eml"))
    release = get_release(session, release_id)
    contact = None
    if contact_id is not None:
        contact = session.get(Contact, contact_id)
        if contact is None:
            raise NotFound(f"contact {contact_id} does not exist")
    elif email:
        address, key = normalize_email(email)
        contact = session.scalar(select(Contact).where(Contact.email_key == key))
    recipient = Recipient.from_contact(contact) if contact is not None else Recipient(
        email=address if email else "preview@example.org", language=release.language)
    try:
        prepared = prepare_release(session, release.id, settings, now=now)
    except RenderError:
        raise
    rendered = prepared.render(recipient, message_id=new_message_id(settings), now=now, test=test)
    if fmt == "eml":
        return rendered.raw
    return rendered.html if fmt == "html" else rendered.text


# ---- input checks -------------------------------------------------------------------------

def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    errors: list[FieldError] = []
    values = dict(fields)
    for name in _SINGLE_LINE:
        value = values.get(name)
        if isinstance(value, str):
            value = value.strip() or None
            values[name] = value
            if value and any(c in value for c in "\r\n\x00"):
                errors.append(FieldError(name, "must be a single line"))
    if not values.get("title"):
        errors.append(FieldError("title", "is required"))
    elif len(values["title"]) > 500:
        errors.append(FieldError("title", "is longer than 500 characters"))
    if values.get("body_format") not in ("markdown", "html"):
        errors.append(FieldError("body_format", "must be markdown or html"))
    elif values["body_format"] == "html":
        # Sanitized once, here, when saved: previews, preparation and the web version use it as is.
        try:
            values["body"] = sanitize_html(values.get("body") or "")
        except HtmlTooComplex as exc:
            errors.append(FieldError("body", str(exc)))
    else:
        for name in ("body", "about"):
            try:  # what a view renders later must render now: a body too big is refused here
                markdown_to_html(values.get(name) or "")
            except HtmlTooComplex as exc:
                errors.append(FieldError(name, str(exc)))
    values["body"] = values.get("body") or ""
    language = (values.get("language") or "").strip()
    if not re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*", language):
        errors.append(FieldError("language", "must be a language tag such as fr, en or ar"))
    values["language"] = language
    for name in ("from_email", "reply_to"):
        if values.get(name) and not any(e.field == name for e in errors):
            if not values[name].rpartition("@")[0].isascii():
                errors.append(FieldError(name, NON_ASCII_LOCAL))
                continue
            try:
                values[name] = validate_email(values[name], check_deliverability=False,
                                              allow_smtputf8=False).normalized
            except EmailNotValidError as exc:
                errors.append(FieldError(name, f"not a valid address: {exc}"))
    highlights = values.get("highlights") or []
    if not isinstance(highlights, list) or not all(isinstance(h, str) for h in highlights):
        errors.append(FieldError("highlights", "must be a list of strings"))
    values["highlights"] = [h.strip() for h in highlights if isinstance(h, str) and h.strip()]
    values["press_contacts"] = _clean_contacts(values.get("press_contacts") or [], errors)
    embargo = values.get("embargo_until")
    if embargo is not None and (not isinstance(embargo, datetime) or embargo.tzinfo is None):
        errors.append(FieldError("embargo_until", "must be a date and time with a time zone"))
    if errors:
        raise ValidationError(errors)
    return values


def _clean_contacts(entries: Any, errors: list[FieldError]) -> list[dict[str, Any]]:
    if not isinstance(entries, list):
        errors.append(FieldError("press_contacts", "must be a list"))
        return []
    cleaned = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            errors.append(FieldError("press_contacts", "each contact must be an object", row=index))
            continue
        item = {key: (str(entry.get(key)).strip() or None) if entry.get(key) else None
                for key in ("organisation", "name", "email", "phone")}
        if any(v and any(c in v for c in "\r\n") for v in item.values()):
            errors.append(FieldError("press_contacts", "must be single lines", row=index))
        if any(item.values()):
            cleaned.append(item)
    return cleaned


def slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:80].rstrip("-") or "communique"


def _unique_slug(session: Session, title: str) -> str:
    base = slugify(title)
    taken = set(session.scalars(select(Release.slug).where(
        (Release.slug == base) | (Release.slug.like(f"{base}-%")))))
    if base not in taken:
        return base
    count = session.scalar(select(func.count(Release.id))) or 0
    for number in range(2, count + 3):
        if f"{base}-{number}" not in taken:
            return f"{base}-{number}"
    return f"{base}-{hashlib.sha256(title.encode()).hexdigest()[:8]}"


def _safe_filename(filename: str) -> str:
    name = Path((filename or "").replace("\\", "/")).name
    name = re.sub(r"[\x00-\x1f\x7f/]+", "", name).strip(" .")
    if not name:
        raise ValidationError(FieldError("filename", "is required"))
    return name[:200]
