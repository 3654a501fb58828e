"""Checks on a rendered email before it is sent (shown on the preview page): text part present,
unsubscribe link and header present, no huge images, no broken links. Pure: no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urlsplit

from service.rendering.prepare import RenderedMessage

HUGE_IMAGE_BYTES = 200 * 1024  # an inline (data:) image larger than this slows every inbox
WIDE_IMAGE_PIXELS = 1200


@dataclass(frozen=True)
class Check:
    ok: bool
    message: str  # English source; the page translates it
    detail: str = ""  # English, '; ' between items; each item's head before ': ' is translated


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "a":
            self.links.append(values.get("href", ""))
        elif tag == "img":
            self.images.append(values)


def check_message(message: RenderedMessage) -> list[Check]:
    parser = _Links()
    parser.feed(message.html or "")
    checks = [Check(bool((message.text or "").strip()), "text part present")]
    headers = {k.lower(): v for k, v in message.headers.items()}
    has_link = any("/u/" in href for href in parser.links) or "/u/" in (message.text or "")
    missing = [] if "list-unsubscribe" in headers else ["List-Unsubscribe header missing"]
    if not has_link:
        missing.append("no unsubscribe link in the message")
    checks.append(Check(not missing, "unsubscribe link present", "; ".join(missing)))
    huge = []
    for image in parser.images:
        src = image.get("src", "")
        if src.startswith("data:") and len(src) * 3 // 4 > HUGE_IMAGE_BYTES:
            huge.append(f"inline image of {len(src) * 3 // 4 // 1024} KB")
        width = re.match(r"\d+", image.get("width", "") or "")
        if width and int(width.group()) > WIDE_IMAGE_PIXELS:
            huge.append(f"image {width.group()} px wide: {src[:80]}")
    checks.append(Check(not huge, "images are a reasonable size", "; ".join(huge)))
    broken = [href or "(empty)" for href in parser.links if not _is_valid_link(href)]
    checks.append(Check(not broken, "links are valid", ", ".join(broken[:10])))
    if message.warnings:  # e.g. no DKIM key for the sender's domain (rendering.prepare.dkim_warning)
        checks.append(Check(False, "signed for the sender's domain (DKIM)", "; ".join(message.warnings)))
    return checks


def _is_valid_link(href: str) -> bool:
    href = href.strip()
    if href.startswith("mailto:"):
        return "@" in href
    if href.startswith("tel:"):
        return len(href) > 4
    parts = urlsplit(href)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and " " not in href
