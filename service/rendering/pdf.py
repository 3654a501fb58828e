"""The release as a PDF: one language variant's web copy laid out for print (WeasyPrint),
rendered once per (release, version, embargo state) and kept under the instance folder."""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

from service.config import Settings
from service.errors import RenderError
from service.models import Release
from service.rendering.email_templates import TEMPLATES as EMAIL_TEMPLATES

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/pdf"
LAYOUT_VERSION = 2  # raise when release_print.html changes: the cached PDFs are then redone
PAGES = Path(__file__).resolve().parent.parent / "templates"

_env: jinja2.Environment | None = None


def _environment() -> jinja2.Environment:
    global _env
    if _env is None:
        # The print page shares the press-contact block with the email and the web copy.
        _env = jinja2.Environment(
            loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(PAGES), jinja2.PrefixLoader(
                {"email": jinja2.FileSystemLoader(EMAIL_TEMPLATES)})]),
            undefined=jinja2.StrictUndefined, autoescape=True, auto_reload=False)
    return _env


def is_embargoed(release: Release, now: datetime | None) -> bool:
    """As the email says it: with no `now`, a release with an embargo time is under embargo."""
    return release.embargo_until is not None and (now is None or now < release.embargo_until)


def pdf_filename(release: Release) -> str:
    return f"{release.slug}.pdf"


def pdf_path(release: Release, settings: Settings, *, now: datetime | None) -> Path:
    """Where this version of the release is cached: an edit changes updated_at, hence the name;
    the embargoed copy (with its notice) and the public one are kept apart."""
    state = "embargo" if is_embargoed(release, now) else "public"
    stamp = release.updated_at.strftime("%Y%m%dT%H%M%S%f")
    return (Path(settings.instance_path) / "pdf"
            / f"{release.id}-{stamp}-{state}-v{LAYOUT_VERSION}.pdf")


def print_html(context: dict[str, Any]) -> str:
    """The print page from release_context(): the web copy's parts (title, highlights, body,
    about, press contacts), and the embargo notice while the release is under embargo."""
    try:
        return _environment().get_template("public/release_print.html").render(context)
    except jinja2.TemplateError as exc:
        raise RenderError(f"the print layout cannot be rendered: {exc}") from exc


def render_pdf(html_source: str) -> bytes:
    # Imported here: WeasyPrint loads Pango and its fonts (~0.5 s), needed only for PDFs.
    import weasyprint

    return bytes(weasyprint.HTML(string=html_source).write_pdf())


def release_pdf(release: Release, settings: Settings, context: dict[str, Any], *,
                now: datetime | None) -> bytes:
    """The PDF of one variant, from the cache when this version was rendered before; `context`
    is release_context(release, settings, now=now) (rendering/prepare.py, which imports this)."""
    path = pdf_path(release, settings, now=now)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data = render_pdf(print_html(context))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside then renamed: a web request and a worker may render the same PDF at once.
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except OSError:
        Path(temporary).unlink(missing_ok=True)
        raise
    log.info("release %s: pdf rendered (%d bytes)", release.id, len(data))
    return data
