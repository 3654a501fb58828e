"""Pasted press releases: Markdown -> ReleaseDraft (title, kicker, highlights, dateline, body,
quotes, press contacts), and the release body as HTML and as wrapped plain text."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from html import unescape
from html.parser import HTMLParser
from typing import Any

from markdown_it import MarkdownIt

# Raw HTML inside Markdown is shown as text, never passed through.
_markdown = MarkdownIt("commonmark", {"html": False, "typographer": False})

TEXT_WIDTH = 78

_KICKER = re.compile(
    r"^(communiqu[ée]s?\s+de\s+presse|press\s+release|news\s+release|communicado\s+de\s+prensa|"
    r"بلاغ\s+صحفي|بيان\s+صحفي)\s*:?$", re.IGNORECASE)
_BULLET = re.compile(r"^\s*[-*+•]\s+(.*)$")
_MONTH_DAY = r"\d{1,2}(?:er|st|nd|rd|th)?"
_DATE = (rf"(?:(?:le\s+)?(?:\w+\s+)?{_MONTH_DAY}\s+(?:de\s+)?\w+\.?\s+(?:de\s+)?\d{{4}}"  # 6 juillet 2022
         rf"|\w+\.?\s+{_MONTH_DAY},?\s+\d{{4}}"  # July 6, 2022
         r"|\d{1,2}[/.]\d{1,2}[/.]\d{2,4})")
_DATELINE = re.compile(
    rf"^(?:\*\*)?(?P<dateline>[^\W\d_][\w'’. -]{{1,60}},\s+{_DATE})(?:\*\*)?\s*(?:[:–—]|-{{1,2}})\s*",
    re.UNICODE)
_CONTACT_HEADING = re.compile(
    r"^(?:#+\s*)?(?:\*\*)?(contacts?\s+(?:presse|m[ée]dias?)|press\s+contacts?|media\s+contacts?|"
    r"contacto\s+de\s+prensa|contactos\s+de\s+prensa|للتواصل|الاتصال\s+الصحفي)\s*(?:\*\*)?\s*:?\s*"
    r"(?:\*\*)?\s*(?P<rest>.*)$", re.IGNORECASE)
_ABOUT_HEADING = re.compile(
    r"^(?:#+\s*)?(?:\*\*)?(?:[àa]\s+propos\s+(?:de\s+|du\s+|des\s+|d['’]\s*)|about\s+|acerca\s+de\s+|"
    r"sobre\s+|نبذة\s+عن)", re.IGNORECASE)
_EMAIL = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
_PHONE = re.compile(r"^(?:(?:t[ée]l(?:[ée]phone)?|phone|mobile|portable|gsm|fixe|fax|tel)\.?\s*:?\s*)?"
                    r"(?P<phone>\+?\(?\d[\d\s.()/-]{5,}\d)$", re.IGNORECASE)
_EMAIL_LABEL = re.compile(r"^(?:e-?mail|courriel|mail)\s*:?\s*", re.IGNORECASE)
_QUOTE = re.compile(r"«\s*(.+?)\s*»", re.DOTALL)


@dataclass
class ReleaseDraft:
    """What an import found; `body` is the Markdown that remains once the parts are taken out."""

    title: str
    body: str
    language: str = "fr"
    kicker: str | None = None
    highlights: list[str] = field(default_factory=list)
    dateline: str | None = None
    about: str | None = None
    quotes: list[str] = field(default_factory=list)
    press_contacts: list[dict[str, Any]] = field(default_factory=list)


def import_markdown(text: str, *, language: str = "fr") -> ReleaseDraft:
    """Parse a press release pasted as Markdown (or plain text). Pure: no database."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff").split("\n")
    position = _skip_blank(lines, 0)
    kicker = None
    if position < len(lines) and _KICKER.match(_strip_inline(lines[position])):
        kicker = _strip_inline(lines[position])
        position = _skip_blank(lines, position + 1)
    if position >= len(lines):
        raise ValueError("the release is empty")
    title = _strip_inline(lines[position])
    position = _skip_blank(lines, position + 1)
    highlights: list[str] = []
    while position < len(lines) and (bullet := _BULLET.match(lines[position])):
        highlights.append(_strip_inline(bullet.group(1)))
        position = _skip_blank(lines, position + 1)
    rest = lines[position:]
    rest, press_contacts = _take_contacts(rest)
    rest, about = _take_about(rest)
    body = "\n".join(rest).strip()
    dateline = None
    if match := _DATELINE.match(body):
        dateline = match.group("dateline").strip()
        body = body[match.end():]
    quotes = [_strip_inline(q) for q in _QUOTE.findall(body)]
    return ReleaseDraft(title=title, body=body, language=language, kicker=kicker,
                        highlights=highlights, dateline=dateline, about=about, quotes=quotes,
                        press_contacts=press_contacts)


def _skip_blank(lines: list[str], position: int) -> int:
    while position < len(lines) and not lines[position].strip():
        position += 1
    return position


def _strip_inline(line: str) -> str:
    """A title or highlight line without its Markdown dress (#, **, _)."""
    line = line.strip().lstrip("#").strip()
    for mark in ("**", "__", "*", "_"):
        if len(line) > 2 * len(mark) and line.startswith(mark) and line.endswith(mark):
            line = line[len(mark):-len(mark)].strip()
    return line


def _take_contacts(lines: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
    for index in range(len(lines) - 1, -1, -1):
        match = _CONTACT_HEADING.match(lines[index].strip())
        if match:
            block = [match.group("rest")] + lines[index + 1:]
            return lines[:index], parse_press_contacts(block)
    return lines, []


def _take_about(lines: list[str]) -> tuple[list[str], str | None]:
    for index in range(len(lines) - 1, -1, -1):
        if _ABOUT_HEADING.match(lines[index].strip()) and (index == 0 or not lines[index - 1].strip()):
            heading_only = len(_strip_inline(lines[index]).split()) <= 8
            start = index + 1 if heading_only else index
            about = "\n".join(lines[start:]).strip()
            return (lines[:index], about) if about else (lines, None)
    return lines, None


def parse_press_contacts(lines: list[str]) -> list[dict[str, Any]]:
    """Group the lines of a "Contact presse" block: a text line after an address or a number
    starts the next organisation; an address or a number fills the current one."""
    contacts: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None

    def start(**values: Any) -> dict[str, Any]:
        entry = {"organisation": None, "name": None, "email": None, "phone": None, **values}
        contacts.append(entry)
        return entry

    for raw in lines:
        for line in re.split(r"\s+[|–—]\s+", _strip_inline(_BULLET.sub(r"\1", raw))):
            line = line.strip().strip(",;").strip()
            if not line:
                continue
            email = _EMAIL.search(line)
            phone = _PHONE.match(line)
            if email:
                label = _EMAIL_LABEL.sub("", line[:email.start()] + line[email.end():]).strip(" :<>()-")
                if current is None or current["email"]:
                    current = start(organisation=current["organisation"] if current else None)
                current["email"] = email.group(0)
                if label and not current["name"]:
                    current["name"] = label
            elif phone:
                if current is None or current["phone"]:
                    current = start(organisation=current["organisation"] if current else None)
                current["phone"] = phone.group("phone").strip()
            elif current is None or current["email"] or current["phone"]:
                current = start(organisation=line)
            elif current["name"] is None:
                current["name"] = line
            else:
                current["organisation"] = f"{current['organisation']}, {line}"
    return contacts


def markdown_to_html(text: str) -> str:
    return sanitize_html(_markdown.render(text))


_TAGS = {"p", "br", "strong", "b", "em", "i", "u", "s", "a", "ul", "ol", "li", "blockquote",
         "h1", "h2", "h3", "h4", "h5", "h6", "hr", "img", "table", "thead", "tbody", "tr", "th",
         "td", "caption", "figure", "figcaption", "span", "div", "sub", "sup", "small", "q",
         "cite", "abbr", "code", "pre"}
_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "width", "height"},
               "td": {"colspan", "rowspan"}, "th": {"colspan", "rowspan"}, "abbr": {"title"},
               "*": {"lang", "dir"}}


# The sanitizer's time grows with the square of the nesting (100,000 nested divs: 87 s), so HTML
# is measured first. Real releases nest a few levels and weigh tens of KB (Gmail clips at 102 KB).
MAX_HTML_CHARS = 1_000_000
MAX_HTML_DEPTH = 100
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)(?:[^>]*?)(/?)>")
# Elements that never hold others (void) or that the next sibling closes (optional end tags):
# they add no depth, so a release written with unclosed <p> or <li> is not mistaken for nesting.
_FLAT_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                        "source", "track", "wbr", "p", "li", "dt", "dd", "tr", "td", "th", "option",
                        "thead", "tbody", "tfoot", "colgroup", "rb", "rt", "rp"})


class HtmlTooComplex(ValueError):
    """HTML too large or too deeply nested to sanitize in reasonable time."""


def check_html_bounds(html: str) -> None:
    """Raise HtmlTooComplex past MAX_HTML_CHARS or MAX_HTML_DEPTH nested elements. Linear time:
    one pass over the tags, no tree built."""
    if len(html) > MAX_HTML_CHARS:
        raise HtmlTooComplex(f"is longer than {MAX_HTML_CHARS:,} characters")
    depth = 0
    for match in _TAG.finditer(html):
        closing, name, self_closing = match.groups()
        if self_closing or name.lower() in _FLAT_TAGS:
            continue
        if closing:
            depth = max(0, depth - 1)
            continue
        depth += 1
        if depth > MAX_HTML_DEPTH:
            raise HtmlTooComplex(f"nests elements more than {MAX_HTML_DEPTH} levels deep")


def sanitize_html(html: str) -> str:
    """HTML from a CMS or our Markdown, safe to mail and to serve: no script, style, iframe,
    event handler or javascript:/data: URL survives. Images stay links: never fetched here.
    Bounded first (check_html_bounds): too large or too deep raises HtmlTooComplex."""
    import nh3

    check_html_bounds(html)
    return nh3.clean(html, tags=_TAGS, attributes=_ATTRIBUTES, url_schemes={"http", "https", "mailto", "tel"},
                     link_rel="noopener noreferrer", strip_comments=True)


def html_to_text(html: str, *, width: int = TEXT_WIDTH,
                 links: list[str] | None = None) -> tuple[str, list[str]]:
    """Readable plain text from (sanitized) HTML: paragraphs wrapped at `width`, bold as *…*,
    list items as bullets, links as "text [n]"; returns the text and the numbered links
    (appended to `links` when given, so several fragments share one numbering)."""
    converter = _TextConverter(links if links is not None else [])
    converter.feed(html)
    converter.close()
    return converter.finish(width), converter.links


class _TextConverter(HTMLParser):
    _BLOCKS = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "blockquote", "tr", "pre",
               "table", "ul", "ol", "section", "article", "header", "footer", "figure"}

    def __init__(self, links: list[str]) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, str]] = []  # (prefix, text)
        self.buffer: list[str] = []
        self.links = links
        self.prefixes: list[str] = []
        self.href_stack: list[str | None] = []
        self.skip = 0

    def _flush(self) -> None:
        text = re.sub(r"[ \t\r\n]+", " ", "".join(self.buffer)).strip()
        self.buffer = []
        if text:
            self.blocks.append(("".join(self.prefixes), text))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head", "title"):
            self.skip += 1
        elif tag in self._BLOCKS:
            self._flush()
            if tag == "li":
                self.prefixes.append("- ")
            elif tag == "blockquote":
                self.prefixes.append("> ")
        elif tag == "br":
            self.buffer.append("\n")
            self._flush()
        elif tag in ("strong", "b"):
            self.buffer.append("*")
        elif tag in ("em", "i"):
            self.buffer.append("_")
        elif tag == "a":
            self.href_stack.append(dict(attrs).get("href"))
            self.buffer.append("\x00")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title"):
            self.skip = max(0, self.skip - 1)
        elif tag in self._BLOCKS:
            self._flush()
            if tag in ("li", "blockquote") and self.prefixes:
                self.prefixes.pop()
        elif tag in ("strong", "b"):
            self.buffer.append("*")
        elif tag in ("em", "i"):
            self.buffer.append("_")
        elif tag == "a" and self.href_stack:
            href = self.href_stack.pop()
            joined = "".join(self.buffer)
            start = joined.rfind("\x00")
            label = joined[start + 1:].strip()
            self.buffer = [joined[:start], joined[start + 1:]]
            if href and href.startswith(("http://", "https://", "mailto:")):
                target = href.removeprefix("mailto:")
                if label.strip("*_ ") != target:
                    self.links.append(href)
                    self.buffer.append(f" [{len(self.links)}]")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.buffer.append(data)

    def finish(self, width: int) -> str:
        self._flush()
        paragraphs = []
        for prefix, text in self.blocks:
            text = text.replace("\x00", "").replace("**", "").replace("* *", " ")
            indent = " " * len(prefix) if prefix.endswith("- ") else prefix
            paragraphs.append(textwrap.fill(text, width=width, initial_indent=prefix,
                                            subsequent_indent=indent, break_long_words=False,
                                            break_on_hyphens=False))
        return "\n\n".join(paragraphs)


def plain_text(text: str) -> str:
    """One Markdown line as text: entities decoded, emphasis marks dropped."""
    return unescape(re.sub(r"(\*\*|__)(.+?)\1", r"\2", text))
