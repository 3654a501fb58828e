"""What a sender approves: one fingerprint of a release's content, every language variant and
attachment included. Rendering is a pure function of these fields and the templates, so the same
fingerprint means the same emails."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from service.models import Attachment, Release

CONTENT_FIELDS = ("language", "title", "kicker", "highlights", "dateline", "body_format", "body",
                  "about", "press_contacts", "embargo_until", "from_name", "from_email", "reply_to")


def content_fingerprint(session: Session, group_id: int) -> str:
    """SHA-256 over the content of every variant of the release group and its attachments."""
    variants = session.scalars(select(Release).where(
        or_(Release.group_id == group_id, Release.id == group_id)).order_by(Release.id))
    parts = []
    for release in variants:
        fields = {name: getattr(release, name) for name in CONTENT_FIELDS}
        fields["embargo_until"] = release.embargo_until.isoformat() if release.embargo_until else None
        files = session.execute(select(Attachment.filename, Attachment.sha256)
                                .where(Attachment.release_id == release.id).order_by(Attachment.id))
        parts.append({"id": release.id, **fields, "attachments": [list(f) for f in files]})
    encoded = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()
