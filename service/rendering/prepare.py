"""Release -> RenderedMessage: prepare a release once, render each recipient's message from it.

CONTRACT (used by delivery, web, api, cli; keep these names and signatures):
    Recipient                          frozen dataclass of the personal fields
    Recipient.from_contact(contact)    build one from a models.Contact
    prepare_release(session, release_id, settings, *, attach_pdf=False, track=False) -> PreparedRelease
    PreparedRelease.render(recipient, *, message_id, now, test=False, blast_id=None) -> RenderedMessage
    PreparedRelease.render_bytes(recipient, *, message_id, now, test=False, blast_id=None) -> bytes
        (hot path)
    PreparedRelease.envelope_from -> str   (MAIL FROM address without a ledger row: test sends)
    PreparedRelease.envelope_for(blast_id, contact_id) -> str   (a ledger row's MAIL FROM: VERP
        with COMMUNIQUE_BOUNCE_ADDRESS, else envelope_from)
    PreparedRelease.reply_to_for(blast_id, contact_id) -> str | None   (a ledger row's Reply-To
        with COMMUNIQUE_REPLY_ADDRESS, else None: the release's own)
    new_message_id(settings) -> str        ("<...@domain>")

prepare_release compiles the templates, renders every part that is the same for all recipients,
inlines the CSS and builds the MIME skeleton of each language variant once; a template or
variable error raises RenderError there (preview, validation, blast start), never mid-blast.
render_bytes only splices the personal bytes (To, greeting, unsubscribe link, Message-ID, Date,
and the VERP mailto and Reply-To when those come back to us).
With attach_pdf, each variant's PDF (rendering/pdf.py, cached on disk) is encoded into its
skeleton here, once: the worker copies those bytes like any other attachment.
With track, each variant also gets a tracked skeleton (the footer says so, a pixel, links
rewritten to signed redirects: rendering/tracking.py), used for ledger rows whose contact has
not asked not to be tracked; the per-message token is spliced like the unsubscribe link.
"""

from __future__ import annotations

import functools
import html
import logging
import operator
import re
import textwrap
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.config import Settings
from service.contacts.fields import PRINTED_FIELDS
from service.errors import NotFound, RenderError
from service.models import Release
from service.releases.markdown import TEXT_WIDTH, html_to_text, markdown_to_html, plain_text
from service.rendering import mime, pdf
from service.rendering.email_templates import TEMPLATES
from service.rendering.recipient import Recipient
from service.rendering.tracking import TrackMaker, pixel_url, rewrite_links
from service.rendering.unsubscribe import TokenMaker
from service.rendering.verp import VerpMaker
from service.rendering.words import STRINGS, embargo_notice, greeting_for, human_size, language_of

log = logging.getLogger(__name__)

_inliner: Any = None


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    html: str
    text: str
    headers: dict[str, str]
    message_id: str
    raw: bytes = field(repr=False)
    warnings: tuple[str, ...] = ()  # about sending it as it is (the release checks show them)


@dataclass
class Variant:
    """One language version of the release, rendered for nobody in particular."""

    release_id: int
    language: str
    slug: str
    subject: str
    html: str  # CSS inlined, personal markers in place
    text: str
    skeleton: mime.Skeleton
    static_headers: dict[str, str]
    tracked: mime.Skeleton | None = None  # with tracking on: footer, pixel, rewritten links


@dataclass
class PreparedRelease:
    release_id: int
    settings: Settings
    variants: dict[str, Variant]
    default_language: str
    from_address: str
    tokens: TokenMaker
    dkim: tuple[bytes, bytes, bytes] | None = None  # selector, domain, private key
    warnings: tuple[str, ...] = ()
    verp: VerpMaker | None = None  # with COMMUNIQUE_BOUNCE_ADDRESS
    replies: VerpMaker | None = None  # with COMMUNIQUE_REPLY_ADDRESS
    tracker: TrackMaker | None = None  # with tracking on

    @functools.cached_property
    def envelope_from(self) -> str:
        if self.verp is not None:
            return self.verp.address
        return mime.ascii_address(self.from_address)

    def envelope_for(self, blast_id: int | None, contact_id: int | None) -> str:
        """The MAIL FROM of one ledger row: its VERP address when bounces come back to us."""
        if self.verp is None or blast_id is None or contact_id is None:
            return self.envelope_from
        return self.verp.envelope(blast_id, contact_id)

    def _mailto(self, recipient: Recipient, blast_id: int | None) -> bytes | None:
        """The per-message close of List-Unsubscribe (VERP), None for the skeleton's own."""
        if self.verp is None or blast_id is None or recipient.contact_id is None:
            return None
        address = self.verp.envelope(blast_id, recipient.contact_id)
        return f">,{mime.FOLD}<mailto:{address}?subject=unsubscribe>\r\n".encode("ascii")

    def reply_to_for(self, blast_id: int | None, contact_id: int | None) -> str | None:
        """The Reply-To of one ledger row when replies come back to us, else None (the
        release's own, if any)."""
        if self.replies is None or blast_id is None or contact_id is None:
            return None
        return self.replies.envelope(blast_id, contact_id)

    def _reply_to_line(self, recipient: Recipient, blast_id: int | None) -> bytes | None:
        address = self.reply_to_for(blast_id, recipient.contact_id)
        return None if address is None else b"Reply-To: " + address.encode("ascii") + mime.CRLF

    @property
    def subject(self) -> str:
        return self.variants[self.default_language].subject

    def variant_for(self, recipient: Recipient) -> Variant:
        """The variant in the recipient's language (primary subtag), else the release's own."""
        wanted = language_of(recipient.language)
        return self.variants.get(wanted) or self.variants[self.default_language]

    def _personal(self, recipient: Recipient, variant: Variant, blast_id: int | None,
                  wanted: Iterable[str] = mime.PERSONAL_FIELDS) -> tuple[dict[str, str], str]:
        """The personal values (only the `wanted` ones: the templates use few) and the
        unsubscribe URL, which every message carries in its headers."""
        token = self.tokens.token(recipient.contact_id, blast_id,
                                  None if recipient.contact_id is not None else recipient.email)
        url = self.tokens.url(token)
        values = {name: _PERSONAL_VALUES[name](recipient, variant, url) for name in wanted
                  if name != "track"}
        if "track" in wanted:  # only a tracked skeleton asks, and only for a ledger row
            assert self.tracker is not None and blast_id is not None
            assert recipient.contact_id is not None
            values["track"] = self.tracker.token(blast_id, recipient.contact_id)
        return values, url

    def skeleton_for(self, recipient: Recipient, variant: Variant, blast_id: int | None,
                     test: bool) -> mime.Skeleton:
        """The tracked skeleton for a ledger row of a tracked blast, unless its contact said
        not to be tracked; the plain one otherwise (test sends, previews)."""
        tracked = variant.tracked
        if (tracked is None or test or blast_id is None or recipient.contact_id is None
                or recipient.do_not_track):
            return variant.skeleton
        return tracked

    def render_bytes(self, recipient: Recipient, *, message_id: str, now: datetime,
                     test: bool = False, blast_id: int | None = None, wire: bool = False) -> bytes:
        """The message; with `wire`, as it goes after SMTP DATA (dot-stuffed, ending ".\r\n")."""
        variant = self.variant_for(recipient)
        skeleton = self.skeleton_for(recipient, variant, blast_id, test)
        values, url = self._personal(recipient, variant, blast_id, skeleton.fields)
        _check_message_id(message_id)
        dkim = self.dkim
        raw = skeleton.build(
            to=mime.format_address(recipient.full_name, recipient.email),
            date=_date_header(now), message_id=message_id, unsubscribe_url=url, test=test,
            values=values, html_values={k: html.escape(values[k]) for k in skeleton.html_fields},
            wire=wire and dkim is None, mailto=self._mailto(recipient, blast_id),
            reply_to=self._reply_to_line(recipient, blast_id))
        if dkim is not None:
            raw = _dkim_sign(raw, *dkim)  # the signature covers the message, not its wire form
            if wire:
                raw = mime.dot_stuff(raw) + b".\r\n"
        return raw

    def render(self, recipient: Recipient, *, message_id: str, now: datetime,
               test: bool = False, blast_id: int | None = None) -> RenderedMessage:
        """The message as parts and headers for previews; `raw` is exactly render_bytes()."""
        variant = self.variant_for(recipient)
        values, url = self._personal(recipient, variant, blast_id)
        raw = self.render_bytes(recipient, message_id=message_id, now=now, test=test,
                                blast_id=blast_id)
        subject = f"[TEST] {variant.subject}" if test else variant.subject
        mailto = self.envelope_for(blast_id, recipient.contact_id)
        headers = {"Date": format_datetime(now), **variant.static_headers,
                   "To": mime.unfold(mime.format_address(recipient.full_name, recipient.email)),
                   "Subject": subject, "Message-ID": message_id,
                   "List-Unsubscribe": f"<{url}>, <mailto:{mailto}?subject=unsubscribe>"}
        reply_to = self.reply_to_for(blast_id, recipient.contact_id)
        if reply_to is not None:
            headers["Reply-To"] = reply_to
        escaped = {k: html.escape(v) for k, v in values.items()}
        return RenderedMessage(subject, mime.fill_text(variant.html, escaped),
                               mime.fill_text(variant.text, values), headers, message_id, raw,
                               self.warnings)


def _printed(name: str) -> Callable[[Recipient, Variant, str], str]:
    read = operator.attrgetter(name)
    return lambda recipient, _variant, _url: mime.clean_value(read(recipient))


# How each personal value is made from the recipient (the variant gives the language, and the
# unsubscribe URL is made once per message anyway). Built once: the worker calls them per message.
_PERSONAL_VALUES: dict[str, Callable[[Recipient, Variant, str], str]] = {
    "greeting": lambda recipient, variant, _url: greeting_for(variant.language, recipient),
    "unsubscribe_url": lambda _recipient, _variant, url: url,
    "full_name": lambda recipient, _variant, _url: recipient.full_name,
    **{name: _printed(name) for name in PRINTED_FIELDS},
}
assert set(_PERSONAL_VALUES) == set(mime.PERSONAL_FIELDS)  # "track" is made in _personal

_last_date: tuple[tuple[datetime, Any], str] | None = None


def _date_header(now: datetime) -> str:
    """format_datetime(now), remembered for the current second: the worker renders hundreds of
    messages a second with the same Date (the header has no fraction of a second)."""
    global _last_date
    key = (now.replace(microsecond=0), now.tzinfo)
    last = _last_date
    if last is not None and last[0] == key:
        return last[1]
    value = format_datetime(now)
    _last_date = (key, value)
    return value


def new_message_id(settings: Settings) -> str:
    return f"<{uuid.uuid4().hex}@{settings.message_id_domain}>"


def _check_message_id(message_id: str) -> None:
    if not re.fullmatch(r"<[^<>\s@]+@[^<>\s@]+>", message_id) or not message_id.isascii():
        raise RenderError(f"not a valid Message-ID: {message_id!r}")


def _dkim_sign(raw: bytes, selector: bytes, domain: bytes, key: bytes) -> bytes:
    import dkim

    signature = dkim.sign(raw, selector, domain, key, include_headers=[
        b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"mime-version",
        b"content-type", b"list-unsubscribe", b"list-unsubscribe-post"])
    return bytes(signature) + raw


# ---- preparing a release ------------------------------------------------------------------

def prepare_release(session: Session, release_id: int, settings: Settings, *,
                    now: datetime | None = None, attach_pdf: bool = False,
                    track: bool = False) -> PreparedRelease:
    """Load the release and its language variants and build each variant's skeleton once.
    With `now` past the embargo, the embargo notice is left out (of the PDF too). With
    `attach_pdf`, each variant carries its own PDF as an attachment. With `track`, each
    variant also has its tracked skeleton."""
    release = session.get(Release, release_id)
    if release is None:
        raise NotFound(f"release {release_id} does not exist")
    group_id = release.group_id or release.id
    members = list(session.scalars(select(Release).where(
        (Release.group_id == group_id) | (Release.id == group_id)).order_by(Release.id)))
    tokens = TokenMaker(settings)
    from_name, from_address = _sender(release, settings)
    variants: dict[str, Variant] = {}
    for member in members:
        language = language_of(member.language)
        if language in variants and member.id != release.id:
            continue
        variants[language] = _prepare_variant(member, settings, now=now,
                                              sender=(from_name, from_address), attach_pdf=attach_pdf,
                                              track=track)
    dkim_key = None
    chosen = dkim_key_for(settings, from_address)
    if chosen is not None:
        selector, domain, path = chosen
        try:
            key = Path(path).read_bytes()
        except OSError as exc:
            raise RenderError(f"cannot read the DKIM key: {exc}") from exc
        dkim_key = (selector.encode(), domain.encode(), key)
    warning = dkim_warning(settings, from_address)
    log.debug("release %s: prepared %d variants", release.id, len(variants))
    return PreparedRelease(release.id, settings, variants, language_of(release.language),
                           from_address, tokens, dkim_key, (warning,) if warning else (),
                           VerpMaker(settings) if settings.bounce_address else None,
                           VerpMaker(settings, settings.reply_address) if settings.reply_address
                           else None,
                           TrackMaker(settings) if track else None)


def _domain_of(address: str) -> str:
    domain = address.rpartition("@")[2].lower()
    try:
        return domain if domain.isascii() else domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain  # not a domain at all: the address is refused where it is used


def dkim_key_for(settings: Settings, from_address: str) -> tuple[str, str, str] | None:
    """(selector, d= domain, key path) to sign mail from `from_address`: the key configured for
    its domain (COMMUNIQUE_DKIM_KEYS), else the single key of COMMUNIQUE_DKIM_SELECTOR, else none."""
    domain = _domain_of(from_address)
    keys = settings.dkim_keys_by_domain
    if domain in keys:
        selector, path = keys[domain]
        return selector, domain, path
    if settings.dkim_selector and settings.dkim_private_key_path:
        return (settings.dkim_selector, settings.dkim_domain or domain,
                settings.dkim_private_key_path)
    return None


def dkim_warning(settings: Settings, from_address: str) -> str | None:
    """Why mail from `from_address` will fail DMARC's DKIM alignment, or None: no key signs for
    its domain (DMARC relaxed alignment: d= is the From domain or a parent of it). Said when
    DKIM is set up at all, and always in production."""
    chosen = dkim_key_for(settings, from_address)
    domain = _domain_of(from_address)
    if chosen is not None and (domain == chosen[1].lower() or domain.endswith("." + chosen[1].lower())):
        return None
    if chosen is None and settings.env != "production" and not settings.dkim_keys:
        return None
    if chosen is None:
        return (f"no DKIM key for {domain}: messages go unsigned (add one to "
                "COMMUNIQUE_DKIM_KEYS), and DMARC then relies on SPF alone")
    return (f"DKIM signs as {chosen[1]}, not the sender's domain {domain}: DMARC fails unless SPF "
            f"aligns (add a key for {domain} to COMMUNIQUE_DKIM_KEYS)")


def sender_address(release: Release, settings: Settings) -> str:
    """The From address a release is sent from."""
    return _sender(release, settings)[1]


def _sender(release: Release, settings: Settings) -> tuple[str, str]:
    if release.from_email:
        return release.from_name or settings.mail_from_name, release.from_email
    return release.from_name or settings.mail_from_name, settings.mail_from_address


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(["html"], default_for_string=False),
        trim_blocks=True, lstrip_blocks=True, auto_reload=False)
    environment.filters["wrap"] = lambda text: textwrap.fill(
        str(text), TEXT_WIDTH, break_long_words=False, break_on_hyphens=False)
    environment.filters["bullet"] = lambda text: textwrap.fill(
        str(text), TEXT_WIDTH, initial_indent="- ", subsequent_indent="  ",
        break_long_words=False, break_on_hyphens=False)
    environment.filters["underline"] = lambda text: "-" * min(TEXT_WIDTH, len(str(text)))
    return environment


_env: jinja2.Environment | None = None


def environment() -> jinja2.Environment:
    global _env
    if _env is None:
        _env = _environment()
    return _env


def release_context(release: Release, settings: Settings, *, now: datetime | None = None,
                    sender: tuple[str, str] | None = None) -> dict[str, Any]:
    """Everything the email templates (and the web version) print about a release."""
    language = language_of(release.language)
    strings = STRINGS.get(language, STRINGS["en"])
    body_html, about_html = release_html(release)
    links: list[str] = []
    body_text, _ = html_to_text(body_html, links=links)
    about_text = html_to_text(about_html, links=links)[0] if about_html else ""
    embargo, subject_prefix = None, ""
    if release.embargo_until is not None and (now is None or now < release.embargo_until):
        embargo, subject_prefix = embargo_notice(language, release.embargo_until, settings.zone)
    name, address = sender or _sender(release, settings)
    highlights = [plain_text(h) for h in release.highlights or []]
    preheader = highlights[0] if highlights else body_text[:140].replace("\n", " ")
    rtl = language in ("ar", "he", "fa", "ur")
    return {
        "subject": f"{subject_prefix}{release.title}",
        "preheader": preheader,
        "strings": strings,
        "sender": {"name": name or address, "email": address},
        "release": {
            "id": release.id, "title": release.title, "language": language,
            "kicker": release.kicker or strings["kicker"],
            "dir": "rtl" if rtl else "ltr", "align": "right" if rtl else "left",
            "start": "right" if rtl else "left",
            "highlights": highlights, "dateline": release.dateline,
            "body_html": Markup(body_html), "body_text": body_text,
            "about_html": Markup(about_html) if about_html else None, "about_text": about_text,
            "press_contacts": [_contact(c) for c in release.press_contacts or []],
            "attachments": [{"filename": a.filename, "size": human_size(a.size_bytes, language)}
                            for a in release.attachments],
            "embargo": embargo, "links": links,
            "web_url": f"{settings.base_url.rstrip('/')}/r/{release.slug}",
        },
    }


def release_html(release: Release) -> tuple[str, str]:
    """The body (dateline first) and the "about" boilerplate as sanitized HTML."""
    separator = " : " if language_of(release.language) == "fr" else " – "
    if release.body_format == "html":
        body = release.body or ""  # sanitized when saved (releases.store), not on every view
        if release.dateline:
            lead = f"<strong>{html.escape(release.dateline)}</strong>{separator}"
            body = body.replace("<p>", f"<p>{lead}", 1) if body.lstrip().startswith("<p>") \
                else f"<p><strong>{html.escape(release.dateline)}</strong></p>{body}"
    else:
        text = release.body or ""
        if release.dateline:
            text = f"**{release.dateline}**{separator}{text}"
        body = markdown_to_html(text)
    about = markdown_to_html(release.about) if release.about else ""
    return body, about


def _contact(entry: dict[str, Any]) -> dict[str, str | None]:
    return {key: mime.clean_value(entry.get(key)) or None
            for key in ("organisation", "name", "email", "phone")}


def _personal_markers() -> dict[str, Any]:
    names = {name: mime.marker(name) for name in mime.PERSONAL_FIELDS}
    return {"greeting": Markup(names["greeting"]),
            "unsubscribe_url": Markup(names["unsubscribe_url"]),
            "recipient": {key: Markup(names[key]) for key in ("full_name", *PRINTED_FIELDS)}}


def render_templates(context: dict[str, Any], name: str = "release") -> tuple[str, str]:
    """(HTML with CSS inlined, text) with the personal markers in place."""
    template_name = f"{name}.html"
    try:
        environment_ = environment()
        html_source = environment_.get_template(template_name).render(context)
        template_name = f"{name}.txt"
        text = environment_.get_template(template_name).render(context)
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(exc.message or str(exc), exc.lineno, exc.name or template_name) from exc
    except jinja2.TemplateError as exc:
        where, line = _template_line(exc, template_name)
        raise RenderError(str(exc), line, where) from exc
    return _inline_css(html_source), text.strip("\n") + "\n"


def _template_line(exc: BaseException, template_name: str) -> tuple[str, int | None]:
    """The innermost template frame: Jinja rewrites tracebacks so that template frames carry
    the template file's own line numbers."""
    where: tuple[str, int | None] = (template_name, None)
    traceback = exc.__traceback__
    while traceback is not None:
        filename = traceback.tb_frame.f_code.co_filename
        if filename.startswith(str(TEMPLATES)):
            where = (Path(filename).name, traceback.tb_lineno)
        traceback = traceback.tb_next
    return where


def _inline_css(source: str) -> str:
    global _inliner
    if _inliner is None:
        import css_inline

        # Media queries (mobile, dark mode) cannot be inlined: they stay in the <style> tag.
        _inliner = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)
    return str(_inliner.inline(source))


def _prepare_variant(release: Release, settings: Settings, *, now: datetime | None,
                     sender: tuple[str, str], attach_pdf: bool = False,
                     track: bool = False) -> Variant:
    context = release_context(release, settings, now=now, sender=sender)
    context.update(_personal_markers())
    html_body, text_body = render_templates(context)
    subject = context["subject"]
    if "\r" in subject or "\n" in subject:
        raise RenderError("the title contains a line break")
    subject = mime.clean_value(subject)  # the header, the outbox and the preview say the same
    from_name, from_address = sender
    static_headers = {"From": mime.format_address(from_name, from_address)}
    reply_to_line = b""
    if release.reply_to:
        static_headers["Reply-To"] = mime.format_address(None, release.reply_to)
        reply_to_line = mime.header_line("Reply-To", static_headers["Reply-To"])
    middle = b"MIME-Version: 1.0\r\n"
    static_headers["MIME-Version"] = "1.0"
    one_click = b""
    if settings.is_https:  # RFC 8058 §3.1: one-click only with an https URI
        static_headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        one_click = b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    attachments = [mime.attachment_part(a.filename, a.content_type, _read_attachment(settings, a.path))
                   for a in release.attachments]
    if attach_pdf:
        data = pdf.release_pdf(release, settings, release_context(release, settings, now=now,
                                                                  sender=sender), now=now)
        attachments.append(mime.attachment_part(pdf.pdf_filename(release), pdf.CONTENT_TYPE, data))
    unsubscribe_mailbox = mime.ascii_address(settings.bounce_address or from_address)

    def skeleton(html_part: str, text_part: str) -> mime.Skeleton:
        tail = mime.assemble_tail(
            static_headers=one_click, text_pieces=mime.compile_body(text_part),
            html_pieces=mime.compile_body(html_part, html=True), attachments=attachments)
        return mime.Skeleton(
            from_line=_from_line(from_name, from_address),
            subject_line=mime.header_line("Subject", subject),
            test_subject_line=mime.header_line("Subject", f"[TEST] {subject}"),
            middle_headers=middle,
            mailto=f">,{mime.FOLD}<mailto:{unsubscribe_mailbox}?subject=unsubscribe>\r\n"
            .encode("ascii"),
            tail=tail, reply_to_line=reply_to_line)

    tracked = None
    if track:
        context["tracking"] = {"pixel": Markup(pixel_url(settings))}
        tracked_html, tracked_text = render_templates(context)
        tracked = skeleton(rewrite_links(tracked_html, settings, release.id), tracked_text)
    return Variant(release.id, language_of(release.language), release.slug, subject, html_body,
                   text_body, skeleton(html_body, text_body), static_headers, tracked)


def _from_line(name: str, address: str) -> bytes:
    mime.reject_newlines("From", name)
    if parseaddr(address)[1] != address:
        raise RenderError(f"not a valid sender address: {address!r}")
    return b"From: " + mime.format_address(name, address).encode("ascii") + mime.CRLF


def _read_attachment(settings: Settings, relative: str) -> bytes:
    path = Path(settings.instance_path) / "attachments" / relative
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RenderError(f"attachment {relative} cannot be read: {exc}") from exc
