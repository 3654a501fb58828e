"""The per-release MIME skeleton: headers, boundaries and encoded parts built once per release;
each recipient's message is the skeleton with its few personal bytes spliced in.

Bodies are quoted-printable, which encodes line by line: a static run of lines is encoded once,
and only the lines holding a personal value (greeting, unsubscribe link) are encoded per message.
The standard library's generator is used only once per release (attachment parts) and in tests,
as the reference: it costs ~1.7 ms per message (PERFORMANCE.md)."""

from __future__ import annotations

import binascii
import re
import secrets
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from email import base64mime, quoprimime
from email.header import Header
from email.message import MIMEPart
from email.policy import SMTP
from email.utils import formataddr

from service.contacts.fields import PRINTED_FIELDS
from service.errors import RenderError

CRLF = b"\r\n"
FOLD = "\r\n "  # RFC 5322 §2.2.3: a header line goes on after CRLF and white space
MAX_ENCODED_WORD = 75  # RFC 2047 §2
MAX_LINE = 998  # RFC 5322 §2.1.1, octets without CRLF
_ENCODED_WORD_BYTES = 45  # UTF-8 bytes one base64 encoded word carries within 75 characters
POLICY = SMTP.clone(max_line_length=998)
# The per-recipient values a template may print: ours, and the contact fields emails may print.
PERSONAL_FIELDS = ("greeting", "unsubscribe_url", "full_name", *PRINTED_FIELDS)
TRACK_FIELD = "track"  # the message's tracking token (pixel, tracked links); not for templates
SPLICED_FIELDS = (*PERSONAL_FIELDS, TRACK_FIELD)
_MARKER = re.compile(r"@@cq\.(\w+)@@")
# C0 and C1 controls, DEL and the Unicode line/paragraph separators become a space; the bidi
# embeddings, overrides and isolates (U+202A-202E, U+2066-2069) are dropped: in a Subject or a
# display name they reorder what the reader sees ("Invoice\u202efdp.exe").
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_BIDI = re.compile(r"[\u202a-\u202e\u2066-\u2069]+")
# Bytes that quoted-printable header encoding writes as one character (the rest take three),
# read off the standard library's own table.
_QP_HEADER_ONE_CHAR = bytes(b for b in range(256) if quoprimime.header_length(bytes([b])) == 1)


def marker(name: str) -> str:
    """The placeholder a template prints for a personal value, replaced per recipient."""
    return f"@@cq.{name}@@"


def qp(text: str) -> bytes:
    """Quoted-printable UTF-8 with CRLF line ends, lines under 77 characters (RFC 2045)."""
    return binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", CRLF)


@dataclass(frozen=True)
class Hole:
    """One body line holding personal values: literal text and field names, alternating."""

    parts: tuple[str, ...]
    html: bool = False


@dataclass(frozen=True)
class Splice:
    """A body line whose only personal value is the tracking token (digits, hex and "-", no
    escaping needed): its text is encoded once, ending in soft line breaks (RFC 2045 §6.7 rule 5)
    where the token goes, so a message only copies the token in (tracked links, the pixel)."""

    parts: tuple[bytes, ...]  # encoded text; the token goes between each two


def _soft_qp(text: str) -> bytes:
    """`text` (no line end) quoted-printable, ending in a soft line break."""
    if not text:
        return b""
    encoded = qp(text)
    head, _, last = encoded.rpartition(b"\n")
    lines = [head + b"\n"] if head else []
    while len(last) > 75:  # room for the "=" of the soft break, an escape "=XX" never cut
        cut = 75
        while b"=" in last[cut - 2:cut]:
            cut -= 1
        lines.append(last[:cut] + b"=\r\n")
        last = last[cut:]
    return b"".join(lines) + last + b"=\r\n"


def _splice(parts: tuple[str, ...]) -> Splice:
    texts = parts[0::2]
    # Each text after a token starts with a soft break: the token ends its own short line.
    encoded = [_soft_qp(texts[0])] + [b"=\r\n" + _soft_qp(text) for text in texts[1:-1]]
    return Splice((*encoded, b"=\r\n" + qp(texts[-1] + "\n")))


Piece = bytes | Hole | Splice


def compile_body(text: str, *, html: bool = False) -> list[Piece]:
    """Split a rendered body into encoded static runs and the lines with personal markers."""
    pieces: list[Piece] = []
    static: list[str] = []
    for line in text.split("\n"):
        if "@@cq." not in line:
            static.append(line)
            continue
        if static:
            pieces.append(qp("\n".join(static) + "\n"))
            static = []
        parts = tuple(_MARKER.split(line))
        unknown = [name for name in parts[1::2] if name not in SPLICED_FIELDS]
        if unknown:
            raise RenderError(f"unknown personal field {unknown[0]!r}")
        if set(parts[1::2]) == {TRACK_FIELD}:
            pieces.append(_splice(parts))
            continue
        pieces.append(Hole(parts, html))
    if static:
        pieces.append(qp("\n".join(static) + "\n"))
    return pieces


def fill_text(text: str, values: Mapping[str, str]) -> str:
    """The same substitution on a whole string (previews, the web version)."""
    return _MARKER.sub(lambda m: values[m.group(1)], text)


def clean_value(value: str | None) -> str:
    """A value made safe for a header or a single body line: no control or bidi characters."""
    return _CONTROL.sub(" ", _BIDI.sub("", value)).strip() if value else ""


def reject_newlines(field: str, value: str | None) -> None:
    if value and ("\r" in value or "\n" in value):
        raise RenderError(f"{field} contains a line break")


def header_line(name: str, value: str) -> bytes:
    """`Name: value` CRLF, folded at 78; non-ASCII values, and ASCII words too long for a line,
    as RFC 2047 encoded words. Text that looks like an encoded word is defused first (see
    defuse_encoded_words)."""
    reject_newlines(name, value)
    value = defuse_encoded_words(clean_value(value))
    if value.isascii():
        lines = textwrap.wrap(f"{name}: {value}", width=78, break_long_words=False,
                              break_on_hyphens=False) or [f"{name}:"]
        if max(map(len, lines)) <= MAX_LINE:
            return FOLD.join(lines).encode("ascii") + CRLF
    # maxlinelen 75: the stdlib counts the folding space apart, so a word would reach 76.
    return (f"{name}: " + Header(value, "utf-8", header_name=name).encode(linesep="\r\n", maxlinelen=75)
            ).encode("ascii") + CRLF


def defuse_encoded_words(value: str) -> str:
    """`=?` written as `= ?`: a literal that looks like an RFC 2047 encoded word would be decoded
    by the next parser, and Python < 3.11.10 re-generates a decoded CR LF as a real header line
    (CVE-2024-6923), so such text never reaches a header as an encoded word at all."""
    return value.replace("=?", "= ?") if "=?" in value else value


def format_address(name: str | None, address: str) -> str:
    """`Display Name <addr>`; the name cleaned of control characters, defused, and RFC 2047
    encoded when it is not plain ASCII."""
    reject_newlines("address", address)
    address = ascii_address(address)
    name = defuse_encoded_words(clean_value(name))
    if not name:
        return address
    if name.isascii():
        return formataddr((name, address))
    encoded = header_encode_utf8(name)
    if len(encoded) <= MAX_ENCODED_WORD:
        return f"{encoded} <{address}>"
    return f"{fold_encoded_words(name)}{FOLD}<{address}>"


def fold_encoded_words(text: str) -> str:
    """A long non-ASCII text as base64 encoded words of at most 75 characters, one per folded
    line (RFC 2047 §2, §5: a character is never split between two words; readers join adjacent
    words without the space between them)."""
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for character in text:
        length = len(character.encode("utf-8"))
        if size + length > _ENCODED_WORD_BYTES:
            words.append(base64mime.header_encode("".join(chunk).encode("utf-8"), "utf-8"))
            chunk, size = [], 0
        chunk.append(character)
        size += length
    if chunk:
        words.append(base64mime.header_encode("".join(chunk).encode("utf-8"), "utf-8"))
    return FOLD.join(words)


def unfold(value: str) -> str:
    """A header value on one line again (for previews)."""
    return value.replace(FOLD, " ") if "\r\n" in value else value


def header_encode_utf8(text: str) -> str:
    """Exactly Charset("utf-8").header_encode(text): one RFC 2047 encoded word, B or Q, whichever
    is shorter. The standard library measures the Q form with a Python loop over every byte
    (on every message; bench/RESULTS.md); here one C translate counts the bytes Q escapes."""
    data = text.encode("utf-8")
    q_length = len(data) + 2 * len(data.translate(None, _QP_HEADER_ONE_CHAR))
    if base64mime.header_length(data) < q_length:
        return base64mime.header_encode(data, "utf-8")
    return quoprimime.header_encode(data, "utf-8")


def ascii_address(address: str) -> str:
    """IDN domains as punycode (headers and SMTP envelopes are ASCII without SMTPUTF8); a
    non-ASCII part before the @ has no ASCII form: RenderError."""
    if address.isascii():
        return address
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        raise RenderError(f"address {address!r}: the part before @ must be ASCII")
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError as exc:
        raise RenderError(f"address {address!r} cannot be written in ASCII") from exc


def new_boundary() -> str:
    # "=" never appears unencoded in a quoted-printable body, nor "_" in base64: no collision.
    return f"===============_cq_{secrets.token_hex(12)}=="


def part_head(content_type: str) -> bytes:
    return (f"Content-Type: {content_type}; charset=\"utf-8\"\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode("ascii")


def attachment_part(filename: str, content_type: str, data: bytes) -> bytes:
    """One attachment, base64, encoded once per release by the standard library."""
    maintype, _, subtype = content_type.partition("/")
    part = MIMEPart(policy=POLICY)
    part.set_content(data, maintype, subtype, disposition="attachment",
                     filename=clean_value(filename))
    return part.as_bytes(policy=POLICY)


@dataclass
class Skeleton:
    """One variant's message: `head` is everything between the personal headers and the body
    pieces; `pieces` alternate encoded static bytes and Holes.

    `build(wire=True)` gives the message as it goes after SMTP DATA: lines starting with "." get
    another "." (RFC 5321 4.5.2) and the final ".\r\n" is added. The static bytes are stuffed once
    here, so only the few personal lines are looked at per message, not the whole ~11 KB."""

    from_line: bytes
    subject_line: bytes
    test_subject_line: bytes
    middle_headers: bytes  # MIME-Version ... up to List-Unsubscribe
    mailto: bytes  # ">, <mailto:...>" closing List-Unsubscribe
    tail: list[Piece]  # remaining headers, blank line, all the parts
    reply_to_line: bytes = b""  # the release's own Reply-To line, if any

    def __post_init__(self) -> None:
        holes = [piece for piece in self.tail if isinstance(piece, Hole)]
        spliced = {TRACK_FIELD} if any(isinstance(piece, Splice) for piece in self.tail) else set()
        self.fields = frozenset({name for hole in holes for name in hole.parts[1::2]}
                                | spliced)  # values used
        self.html_fields = frozenset(name for hole in holes if hole.html for name in hole.parts[1::2])
        # Every line of a header value after the first starts with a space, and every tail piece
        # starts a line (the piece before it, static or personal, ends with CRLF).
        self._wire = (dot_stuff(self.from_line), dot_stuff(self.subject_line),
                      dot_stuff(self.test_subject_line), dot_stuff(self.middle_headers),
                      self.mailto.replace(b"\n.", b"\n.."),
                      [_stuffed(piece) for piece in self.tail],
                      dot_stuff(self.reply_to_line))

    def build(self, *, to: str, date: str, message_id: str, unsubscribe_url: str, test: bool,
              values: Mapping[str, str], html_values: Mapping[str, str], wire: bool = False,
              mailto: bytes | None = None, reply_to: bytes | None = None) -> bytes:
        """`mailto`, when given, replaces the skeleton's close of List-Unsubscribe (a per-message
        VERP address; it starts with ">," and folds with a space, so needs no dot-stuffing);
        `reply_to`, when given, replaces the release's Reply-To line (it starts with "Reply-To")."""
        from_line, subject_line, test_subject_line, middle_headers, own_mailto, tail, own_reply = (
            self._wire if wire else (self.from_line, self.subject_line, self.test_subject_line,
                                     self.middle_headers, self.mailto, self.tail,
                                     self.reply_to_line))
        if mailto is None:
            mailto = own_mailto
        out = [b"Date: ", date.encode("ascii"), CRLF, from_line,
               b"To: ", to.encode("ascii"), CRLF,
               test_subject_line if test else subject_line,
               b"Message-ID: ", message_id.encode("ascii"), CRLF,
               own_reply if reply_to is None else reply_to, middle_headers,
               b"List-Unsubscribe: <", unsubscribe_url.encode("ascii"), mailto]
        for piece in tail:
            if isinstance(piece, bytes):
                out.append(piece)
            elif isinstance(piece, Splice):
                out.append(values[TRACK_FIELD].encode("ascii").join(piece.parts))
            else:
                chosen = html_values if piece.html else values
                parts = piece.parts
                line = qp("".join(part if index % 2 == 0 else chosen[part]
                                  for index, part in enumerate(parts)) + "\n")
                out.append(dot_stuff(line) if wire else line)
        if wire:
            out.append(b".\r\n")
        return b"".join(out)


def _stuffed(piece: Piece) -> Piece:
    if isinstance(piece, bytes):
        return dot_stuff(piece)
    if isinstance(piece, Splice):  # each part starts a line; the token starts with a digit
        return Splice(tuple(dot_stuff(part) for part in piece.parts))
    return piece


def dot_stuff(lines: bytes) -> bytes:
    """RFC 5321 4.5.2 for bytes that start a line: "." doubled at the start of every line."""
    if lines.startswith(b"."):
        lines = b"." + lines
    return lines.replace(b"\n.", b"\n..") if b"\n." in lines else lines


def assemble_tail(*, static_headers: bytes, text_pieces: list[Piece],
                  html_pieces: list[Piece], attachments: list[bytes]) -> list[Piece]:
    """Headers after List-Unsubscribe, then multipart/alternative (text, then HTML), inside
    multipart/mixed when there are attachments."""
    alternative = new_boundary()
    alt_open = f'multipart/alternative;{FOLD}boundary="{alternative}"'.encode("ascii")
    body: list[Piece] = [
        f"--{alternative}\r\n".encode("ascii"), part_head("text/plain"), *text_pieces,
        f"--{alternative}\r\n".encode("ascii"), part_head("text/html"), *html_pieces,
        f"--{alternative}--\r\n".encode("ascii")]
    if not attachments:
        head = static_headers + b"Content-Type: " + alt_open + CRLF + CRLF
        return _merge([head, *body])
    mixed = new_boundary()
    head = (static_headers + f'Content-Type: multipart/mixed;{FOLD}boundary="{mixed}"\r\n\r\n'
            .encode("ascii"))
    out: list[Piece] = [head, f"--{mixed}\r\n".encode("ascii"), b"Content-Type: ", alt_open,
                               CRLF + CRLF, *body]
    for part in attachments:
        out += [f"--{mixed}\r\n".encode("ascii"), part if part.endswith(CRLF) else part + CRLF]
    out.append(f"--{mixed}--\r\n".encode("ascii"))
    return _merge(out)


def _merge(pieces: list[Piece]) -> list[Piece]:
    merged: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] = merged[-1] + piece
        else:
            merged.append(piece)
    return merged
