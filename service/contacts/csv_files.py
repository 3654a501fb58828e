"""Reading contact CSV files as press offices export them: encoding and delimiter detected,
French or English headers mapped to contact fields (by the aliases in `fields`), rows streamed
with spreadsheet numbers."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from service.contacts.fields import FIELDS
from service.contacts.validation import fold
from service.errors import FieldError, ValidationError

_FIELD_BY_HEADER = {fold(alias): field.name for field in FIELDS for alias in field.headers}
_EMAIL_WORDS = {"email", "mail", "courriel", "mel"}
_DELIMITERS = (";", ",", "\t")
_FORMULA_STARTS = ("'=", "'+", "'-", "'@")  # our export's neutralized cells, taken back
CELL_MAX_CHARS = 128 * 1024  # the csv module's default field limit: longer is an error of ours
# The csv module's limit refuses a whole file at the first long cell and cannot resume mid-row;
# lifted (it is process-wide) so a long cell is one rejected row, bounded by the upload size.
csv.field_size_limit(2**31 - 1)
_BINARY_STARTS = (b"\x89PNG", b"%PDF", b"GIF8", b"\xff\xd8\xff", b"\x1f\x8b", b"\x7fELF")
# UTF-8 read as Windows-1252 (or Latin-1): a lead byte's character followed by continuation
# bytes' characters, "Ã©" for "é", "â€™" for "’", "Ø§" for "ا". Confirmed by decoding back.
_CONTINUATION = ("\u0080-\u009f\u00a1-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e"
                 "\u0192\u02c6\u02dc\u2013\u2014\u2018-\u201a\u201c-\u201e\u2020-\u2022"
                 "\u2026\u2030\u2039\u203a\u20ac\u2122")
_NEXT = f"[{_CONTINUATION}\u00a0]"  # NBSP only after Â and Ã: "CAFÉ\u00a0!" is French typography
_SUSPECT = re.compile(
    f"(?P<undecoded>[\udc80-\udcff]+)|(?P<mojibake>[\u00c2\u00c3]{_NEXT}"
    f"|[\u00c4-\u00df][{_CONTINUATION}]|[\u00e0-\u00ef][{_CONTINUATION}]{{2}}"
    f"|[\u00f0-\u00f4][{_CONTINUATION}]{{3}})")
# One character class, ten times faster than _SUSPECT: rows without any of these are clean.
_MAYBE_SUSPECT = re.compile(f"[{_CONTINUATION}\u00a0\udc80-\udcff]")
_CP1252_BYTE = {bytes([byte]).decode("cp1252", "ignore") or chr(byte): byte
                for byte in range(0x80, 0x100)}


@dataclass
class CsvRows:
    """An opened file: how it was read, and its data rows as (spreadsheet row, {field: cell}),
    or (spreadsheet row, FieldError) for a row that cannot be imported as read (bytes not in
    the file's encoding, a NUL byte, garbled accents, a cell over 128 KB)."""

    encoding: str
    delimiter: str
    rows: Iterator[tuple[int, dict[str, str] | FieldError]]


def open_csv(data: bytes) -> CsvRows:
    """Detect the encoding and delimiter and map the header row; a file that cannot be read
    (empty, binary, a workbook, no email column) raises ValidationError before any row."""
    encoding = detect_encoding(data)
    # A UTF-8 file's undecodable lines become lone surrogates, and their rows are rejected.
    errors = "surrogateescape" if encoding == "utf-8-sig" else "strict"
    stream = io.TextIOWrapper(io.BytesIO(data), encoding=encoding, errors=errors, newline="")
    delimiter, skip_sep_line = detect_delimiter(stream)
    scans = _Scans(
        length=len(data) > CELL_MAX_CHARS,
        nul=encoding == "utf-16" or b"\x00" in data,
        # Windows-1252 text reads garbled only where its bytes are valid UTF-8 sequences.
        text=encoding != "cp1252" or not data.decode("utf-8", "ignore").isascii())
    return CsvRows(encoding, delimiter, _read_rows(stream, delimiter, skip_sep_line, scans))


@dataclass(frozen=True)
class _Scans:
    """Which per-row checks a file needs: a big import skips those its bytes rule out."""

    length: bool
    nul: bool
    text: bool


def detect_encoding(data: bytes) -> str:
    """UTF-8 (with or without BOM) when the bytes decode strictly, or when most lines with
    accents are UTF-8 (a line pasted from another file is then rejected, not the file misread);
    else Windows-1252 (French Excel); UTF-16 when it has a BOM (Excel's "Unicode text").
    Binary files are refused; a stray NUL byte only rejects its row."""
    if not data.strip():
        raise ValidationError(FieldError("file", "the file is empty"))
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if data.startswith(b"PK\x03\x04") or data.startswith(b"\xd0\xcf\x11\xe0"):
        raise ValidationError(FieldError(
            "file", "this is an Excel workbook, not a CSV file: save it as CSV and import that"))
    if _is_binary(data):
        raise ValidationError(FieldError("file", "this is a binary file, not CSV text"))
    if _decodes(data, "utf-8") or _is_mostly_utf8(data):
        return "utf-8-sig"
    if _decodes(data, "cp1252"):
        return "cp1252"
    raise ValidationError(FieldError("file", "cannot read the file as UTF-8 or Windows-1252 text"))


def detect_delimiter(stream: io.TextIOWrapper) -> tuple[str, bool]:
    """The delimiter of the header line (Excel's "sep=;" first line wins), and whether that
    "sep=" line must be skipped. Leaves the stream at its start."""
    sample = stream.read(64 * 1024)
    stream.seek(0)
    lines = sample.lstrip("\r\n").splitlines()
    first = lines[0] if lines else ""
    match = re.fullmatch(r'"?sep=(.)"?,*', first.strip())
    if match:
        return match.group(1), True
    widths = {delimiter: len(next(csv.reader([first], delimiter=delimiter), []))
              for delimiter in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda delimiter: widths[delimiter])
    if widths[best] > 1:
        return best, False
    try:
        return csv.Sniffer().sniff(sample, delimiters="".join(_DELIMITERS)).delimiter, False
    except csv.Error:
        return ",", False  # one column: any delimiter reads it


def map_headers(header: list[str]) -> dict[int, str]:
    """Column index -> contact field, for the headers we know (first column wins a field)."""
    columns: dict[int, str] = {}
    taken: set[str] = set()
    for index, title in enumerate(header):
        name = _FIELD_BY_HEADER.get(fold(title))
        if name is None and "email" not in taken and _EMAIL_WORDS & set(fold(title).split()):
            name = "email"
        if name is not None and name not in taken:
            columns[index] = name
            taken.add(name)
    if "email" not in taken:
        shown = ", ".join(repr(title.strip()) for title in header if title.strip())[:300]
        raise ValidationError(FieldError(
            "file", "no email column: the first row must be the headers, with one such as email, "
                    f"e-mail, courriel or mail (found: {shown or 'nothing'})", row=1))
    return columns


def _read_rows(stream: io.TextIOWrapper, delimiter: str, skip_sep_line: bool,
               scans: _Scans) -> Iterator[tuple[int, dict[str, str] | FieldError]]:
    """(spreadsheet row number, {field: cell}) for each non-blank data row. The header is
    read now, so a file without an email column fails before anything is written."""
    if skip_sep_line:
        stream.readline()
    reader = csv.reader(stream, delimiter=delimiter, quotechar='"', doublequote=True, strict=False)
    row_number = 0
    try:
        for header in reader:
            row_number += 1
            if any(cell.strip() for cell in header):
                break
        else:
            raise ValidationError(FieldError("file", "the file has no header row"))
    except csv.Error as exc:
        raise ValidationError(FieldError("file", f"not a CSV file: {exc}", row=1)) from exc
    columns = map_headers(header)
    return _data_rows(reader, columns, header, row_number, scans)


def _data_rows(reader: Any, columns: dict[int, str], header: list[str], row_number: int,
               scans: _Scans) -> Iterator[tuple[int, dict[str, str] | FieldError]]:
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ValidationError(FieldError(None, f"unreadable CSV: {exc}",
                                             row=row_number + 1)) from exc
        row_number += 1
        if not any(cell.strip() for cell in cells):
            continue
        if scans.length and max(map(len, cells)) > CELL_MAX_CHARS:
            yield row_number, replace(_long_cell(cells, columns, header), row=row_number)
            continue
        row = {name: _unquote_formula(cells[index])
               for index, name in columns.items() if index < len(cells)}
        joined = "\x1f".join(row.values()) if scans.nul or scans.text else ""
        if (scans.nul and "\x00" in joined) or (
                scans.text and not joined.isascii() and _MAYBE_SUSPECT.search(joined)):
            problem = _cell_problem(row)
            if problem is not None:
                yield row_number, replace(problem, row=row_number)
                continue
        yield row_number, row


def _long_cell(cells: list[str], columns: dict[int, str], header: list[str]) -> FieldError:
    index = next(index for index, cell in enumerate(cells) if len(cell) > CELL_MAX_CHARS)
    name = columns.get(index) or (header[index].strip() if index < len(header) else "")
    return FieldError(name or f"column {index + 1}",
                      f"cell longer than 128 KB ({len(cells[index]):,} characters; an unclosed "
                      "quote?): fix the row and import it again",
                      value=_shown(cells[index][:60]) + "…")


def _cell_problem(row: dict[str, str]) -> FieldError | None:
    """Why a row cannot be imported as read: a NUL byte, bytes that are not UTF-8 in a UTF-8
    file, or accents garbled by a wrong decoding somewhere before us ("HÃ©lÃ¨ne")."""
    for name, cell in row.items():
        if "\x00" in cell:
            return FieldError(name, "contains a NUL byte (\\x00): the file is damaged in this row; "
                                    "fix the row and import it again", value=_shown(cell))
        for match in () if cell.isascii() else _SUSPECT.finditer(cell):
            if match.group("undecoded"):
                return FieldError(name, "not UTF-8 text like the rest of the file (this line was "
                                        "probably pasted from a Windows-1252 file): retype it or "
                                        "save the file as UTF-8, then import the row again",
                                  value=_shown(cell))
            if _is_mojibake(match.group("mojibake")):
                return FieldError(name, f"garbled accents ({match.group('mojibake')!r} is UTF-8 "
                                        "read as Windows-1252), probably "
                                        f"{_shown(_repaired(cell))!r}: fix the cell and import "
                                        "the row again", value=_shown(cell))
    return None


def _is_mojibake(text: str) -> bool:
    try:
        bytes(_CP1252_BYTE[char] for char in text).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return False
    return True


def _repaired(cell: str) -> str:
    """The cell with each garbled sequence decoded back (what the person most likely typed)."""
    def decode(match: re.Match[str]) -> str:
        text = match.group(0)
        if not match.group("mojibake") or not _is_mojibake(text):
            return text
        return bytes(_CP1252_BYTE[char] for char in text).decode("utf-8")
    return _SUSPECT.sub(decode, cell)


def _shown(cell: str) -> str:
    """A cell as the report can show it: undecodable bytes and NUL as \\xNN escapes."""
    text = cell.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.replace("\x00", "\\x00").strip()[:200]


def _unquote_formula(cell: str) -> str:
    return cell[1:] if cell.startswith(_FORMULA_STARTS) else cell


def _is_binary(data: bytes) -> bool:
    """A known binary format, or NUL bytes in more than 1% of the start (UTF-16 without BOM,
    images): a CSV file with a stray NUL or two is text, and only those rows are rejected."""
    sample = data[:64 * 1024]
    nul_count = sample.count(0)
    return sample.startswith(_BINARY_STARTS) or (nul_count > 8 and nul_count * 100 > len(sample))


def _is_mostly_utf8(data: bytes) -> bool:
    """Evidence for a UTF-8 file with some lines in another encoding: of the lines with
    non-ASCII bytes, at least half are valid UTF-8 (Windows-1252 accents almost never are)."""
    if data.decode("utf-8", "ignore").isascii():
        return False  # not one valid multi-byte sequence
    valid_count = invalid_count = 0
    for line in data.splitlines():
        if line.isascii():
            continue
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            invalid_count += 1
        else:
            valid_count += 1
    return valid_count >= invalid_count


def _decodes(data: bytes, encoding: str) -> bool:
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    step = 1 << 20
    try:
        for start in range(0, len(data), step):
            decoder.decode(data[start:start + step], final=start + step >= len(data))
    except UnicodeDecodeError:
        return False
    return True


def encoding_name(encoding: str) -> str:
    return {"utf-8-sig": "UTF-8", "cp1252": "Windows-1252", "utf-16": "UTF-16"}.get(
        encoding, encoding)


def delimiter_name(delimiter: str) -> str:
    return {",": "comma", ";": "semicolon", "\t": "tab"}.get(delimiter, repr(delimiter))
