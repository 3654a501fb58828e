"""Reading contact CSV files as press offices export them: encoding and delimiter detected,
French or English headers mapped to contact fields (by the aliases in `fields`), rows streamed
with spreadsheet numbers."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from service.contacts.fields import FIELDS
from service.contacts.validation import fold
from service.errors import FieldError, ValidationError

_FIELD_BY_HEADER = {fold(alias): field.name for field in FIELDS for alias in field.headers}
_EMAIL_WORDS = {"email", "mail", "courriel", "mel"}
_DELIMITERS = (";", ",", "\t")
_FORMULA_STARTS = ("'=", "'+", "'-", "'@")  # our export's neutralized cells, taken back


@dataclass
class CsvRows:
    """An opened file: how it was read, and its data rows as (spreadsheet row, {field: cell})."""

    encoding: str
    delimiter: str
    rows: Iterator[tuple[int, dict[str, str]]]


def open_csv(data: bytes) -> CsvRows:
    """Detect the encoding and delimiter and map the header row; a file that cannot be read
    (empty, binary, a workbook, no email column) raises ValidationError before any row."""
    encoding = detect_encoding(data)
    stream = io.TextIOWrapper(io.BytesIO(data), encoding=encoding, newline="")
    delimiter, skip_sep_line = detect_delimiter(stream)
    return CsvRows(encoding, delimiter, _read_rows(stream, delimiter, skip_sep_line))


def detect_encoding(data: bytes) -> str:
    """UTF-8 (with or without BOM) when the bytes decode strictly, else Windows-1252 (French
    Excel); UTF-16 when it has a BOM (Excel's "Unicode text"). Binary files are refused."""
    if not data.strip():
        raise ValidationError(FieldError("file", "the file is empty"))
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if data.startswith(b"PK\x03\x04") or data.startswith(b"\xd0\xcf\x11\xe0"):
        raise ValidationError(FieldError(
            "file", "this is an Excel workbook, not a CSV file: save it as CSV and import that"))
    if b"\x00" in data:
        raise ValidationError(FieldError("file", "this is a binary file, not CSV text"))
    for encoding in ("utf-8-sig", "cp1252"):
        if _decodes(data, encoding):
            return encoding
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


def _read_rows(stream: io.TextIOWrapper, delimiter: str,
               skip_sep_line: bool) -> Iterator[tuple[int, dict[str, str]]]:
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
    return _data_rows(reader, columns, row_number)


def _data_rows(reader: Any, columns: dict[int, str],
               row_number: int) -> Iterator[tuple[int, dict[str, str]]]:
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
        yield row_number, {name: _unquote_formula(cells[index])
                           for index, name in columns.items() if index < len(cells)}


def _unquote_formula(cell: str) -> str:
    return cell[1:] if cell.startswith(_FORMULA_STARTS) else cell


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
