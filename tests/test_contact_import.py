"""CSV import of media contacts: every rule of issue 2, through real files and the real database."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.cli import main
from service.contacts.importing import import_contacts
from service.contacts.store import (
    create_contact,
    list_counts,
    mark_bounced,
    suppress,
    unsubscribe_contact,
)
from service.errors import ValidationError
from service.models import Contact, ContactList, ContactStatus

FILES = Path(__file__).parent / "data" / "contacts"
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def run_import(db: Session, name: str, **options: object):  # type: ignore[no-untyped-def]
    report = import_contacts(db, (FILES / name).read_bytes(), now=NOW, **options)  # type: ignore[arg-type]
    db.commit()
    return report


def contact(db: Session, email_key: str) -> Contact:
    found = db.scalar(select(Contact).where(Contact.email_key == email_key))
    assert found is not None, email_key
    return found


def contact_count(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(Contact)) or 0


def test_windows_1252_semicolon_french_headers(db: Session) -> None:
    """A French Excel export (Windows-1252, semicolon, accented French headers) imports with its
    accents, languages, countries and media types normalized, and the blank trailing row skipped."""
    report = run_import(db, "excel-fr-cp1252-semicolon.csv", list_name="Presse nationale")
    assert report.as_dict() == {"created": 4, "updated": 0, "unchanged": 0, "rejected": []}
    assert (report.encoding, report.delimiter) == ("cp1252", ";")
    helene = contact(db, "h.benjelloun@lecho-atlas.example")
    assert (helene.civility, helene.first_name, helene.last_name) == ("Mme", "Hélène", "Benjelloun")
    assert (helene.outlet, helene.role) == ("L'Écho de l'Atlas", "Rédactrice en chef")
    assert (helene.media_type, helene.language, helene.country, helene.city) == (
        "print", "fr", "MA", "Casablanca")
    assert helene.tags == ",économie,tourisme,"
    assert contact(db, "b.lefevre@quotidien-rabat.example").language == "fr-FR"
    youssef = contact(db, "y.elamrani@radio-medina.example")
    assert (youssef.language, youssef.media_type, youssef.city) == ("ar", "radio", "Fès")
    assert contact(db, "g.naciri@atlas-tv.example").media_type == "tv"
    assert list_counts(db) == [("Presse nationale", 4)]


def test_utf8_bom_comma_english_headers_arabic_and_idn(db: Session) -> None:
    """UTF-8 with BOM, comma, English headers: Arabic script survives, and an IDN domain is kept
    in Unicode and matched case-insensitively."""
    report = run_import(db, "utf8-bom-comma.csv")
    assert report.as_dict()["created"] == 3 and report.rejected == []
    assert (report.encoding, report.delimiter) == ("utf-8-sig", ",")
    layla = contact(db, "layla.haddad@gulf-daily.example")
    assert (layla.first_name, layla.last_name, layla.language, layla.country) == (
        "ليلى", "حداد", "ar", "AE")
    assert layla.tag_list == ["travel", "gulf"]
    james = contact(db, "james.whitaker@example.co.uk.example")
    assert (james.language, james.country, james.media_type) == ("en-GB", "GB", "online")
    idn = contact(db, "presse@médias.example")
    assert (idn.email, idn.language, idn.country) == ("presse@médias.example", "fr", "FR")
    again = import_contacts(db, "email\nPRESSE@MÉDIAS.example\n".encode(), now=NOW)
    assert again.as_dict() == {"created": 0, "updated": 0, "unchanged": 1, "rejected": []}


def test_tab_delimited_capital_headers(db: Session) -> None:
    """A tab-delimited UTF-8 file with headers in capitals maps them; language and country names
    in their own language ("Español", "Espagne") are normalized; an unknown column is ignored."""
    report = run_import(db, "utf8-tab.tsv")
    assert report.as_dict() == {"created": 2, "updated": 0, "unchanged": 0, "rejected": []}
    assert report.delimiter == "\t"
    lucia = contact(db, "lucia.garcia@diario-sol.example")
    assert (lucia.first_name, lucia.last_name, lucia.outlet, lucia.language, lucia.country) == (
        "Lucía", "García", "Diario del Sol", "es", "ES")
    assert contact(db, "hans.weber@reise-zeitung.example").language == "de"
    assert contact_count(db) == 2


def test_excel_sep_line_and_utf16_unicode_text(db: Session) -> None:
    """Excel's "sep=;" first line sets the delimiter (the header is still row 1), and Excel's
    "Unicode text" (UTF-16, tab) imports too."""
    report = run_import(db, "excel-sep-line.csv")
    assert report.as_dict()["created"] == 1
    assert contact(db, "sep.line@example.com").last_name == "Chraïbi"
    report = run_import(db, "excel-unicode-text.txt")
    assert report.as_dict()["created"] == 1 and report.encoding == "utf-16"
    rachid = contact(db, "rachid.benali@example.org")
    assert (rachid.last_name, rachid.language) == ("بن علي", "ar-MA")


def test_duplicates_in_the_file_are_merged(db: Session) -> None:
    """Three spellings of one address make one contact: non-empty cells overwrite, empty ones
    never blank a value, tags are unioned; the row that changes nothing counts as unchanged."""
    report = run_import(db, "duplicates.csv", list_name="doublons")
    assert report.as_dict() == {"created": 2, "updated": 1, "unchanged": 1, "rejected": []}
    assert contact_count(db) == 2
    karim = contact(db, "karim.alaoui@lematin-atlas.example")
    assert karim.email == "Karim.Alaoui@lematin-atlas.example"
    assert (karim.first_name, karim.last_name, karim.outlet, karim.language) == (
        "Karim", "Alaoui", "Le Soir de l'Atlas", "fr")
    assert karim.tag_list == ["economie", "tourisme"]
    assert list_counts(db) == [("doublons", 2)]


def test_duplicates_against_the_database_update(db: Session) -> None:
    """Importing an address already stored updates that contact (never a second one), keeps
    values the file leaves empty and adds it to the new list; a second run creates nothing."""
    stored = create_contact(db, {"email": "nadia.tazi@example.org", "first_name": "Nadia",
                                 "city": "Tanger", "tags": "culture"}, now=NOW, list_names=["A"])
    db.commit()
    report = run_import(db, "duplicates.csv", list_name="B")
    assert report.as_dict() == {"created": 1, "updated": 2, "unchanged": 1, "rejected": []}
    db.refresh(stored)
    assert (stored.last_name, stored.outlet, stored.city) == ("Tazi", "Hebdo Maroc", "Tanger")
    assert stored.tag_list == ["culture"]
    assert sorted(contact_list.name for contact_list in stored.lists) == ["A", "B"]
    assert contact_count(db) == 2
    again = run_import(db, "duplicates.csv", list_name="B")
    assert again.created == 0 and contact_count(db) == 2
    assert list_counts(db) == [("A", 1), ("B", 2)]


def test_bad_rows_are_rejected_with_row_field_and_reason(db: Session) -> None:
    """Each bad row is reported with its spreadsheet row (header = 1), field, value and reason;
    the good rows import."""
    report = run_import(db, "bad-rows.csv")
    rejected = {entry["row"]: entry for entry in report.as_dict()["rejected"]}
    assert report.created == 2 and sorted(rejected) == [3, 4, 5, 6, 7]
    assert rejected[3]["field"] == "email" and rejected[3]["value"] == "jean.dupont@"
    assert rejected[3]["reason"].startswith("not a valid address")
    assert rejected[4] == {"row": 4, "field": "email", "value": "", "reason": "is required"}
    assert (rejected[5]["field"], rejected[5]["value"]) == ("language", "klingon")
    assert (rejected[6]["field"], rejected[6]["value"]) == ("country", "Atlantide")
    assert (rejected[7]["field"], rejected[7]["value"]) == ("media_type", "pigeon voyageur")
    assert "not a known media type" in rejected[7]["reason"]
    assert {c.email for c in db.scalars(select(Contact))} == {
        "bon.contact@example.com", "autre.bon@example.org"}


def test_dry_run_writes_nothing(db: Session) -> None:
    """A dry run reports exactly what the import would do and writes nothing, not even the list."""
    report = run_import(db, "duplicates.csv", list_name="essai", dry_run=True)
    assert report.as_dict() == {"created": 2, "updated": 1, "unchanged": 1, "rejected": []}
    assert contact_count(db) == 0
    assert db.scalar(select(func.count()).select_from(ContactList)) == 0


@pytest.mark.parametrize(("name", "reason"), [
    ("empty.csv", "the file is empty"),
    ("logo.png", "binary file"),
    ("contacts.xlsx", "Excel workbook"),
    ("no-email-column.csv", "no email column"),
])
def test_unreadable_file_is_refused_and_writes_nothing(db: Session, name: str, reason: str) -> None:
    """A file that cannot be read at all is refused with a clear message; nothing is written."""
    with pytest.raises(ValidationError) as raised:
        import_contacts(db, (FILES / name).read_bytes(), list_name="jamais", now=NOW)
    db.commit()
    assert reason in str(raised.value)
    assert contact_count(db) == 0
    assert list_counts(db) == []


def test_unclosed_quote_at_the_end_is_one_rejected_row(db: Session) -> None:
    """A quote never closed swallows the rest of the file into one cell over 128 KB: that row is
    rejected naming its row and field (issue 14: it used to refuse the whole file), the 2,500
    rows before it are imported."""
    good_rows = "".join(f"ok{i}@example.com\n" for i in range(2500))
    data = ("email\n" + good_rows + '"a quote never closed' + "x" * 200_000).encode()
    report = import_contacts(db, data, list_name="L", now=NOW)
    db.commit()
    assert report.created == 2500
    assert [(error.row, error.field) for error in report.rejected] == [(2502, "email")]
    assert "unclosed quote?" in report.rejected[0].reason
    assert contact_count(db) == 2500
    assert list_counts(db) == [("L", 2500)]


def test_unsubscribed_bounced_and_suppressed_are_never_reactivated(db: Session) -> None:
    """Re-importing unsubscribed, bounced and suppressed journalists updates their details but
    their status stays; the report counts them as not mailable."""
    first = run_import(db, "excel-fr-cp1252-semicolon.csv")
    assert first.created == 4
    helene = contact(db, "h.benjelloun@lecho-atlas.example")
    benoit = contact(db, "b.lefevre@quotidien-rabat.example")
    unsubscribe_contact(db, helene.id, now=NOW)
    mark_bounced(db, benoit.id, now=NOW)
    suppress(db, ["Y.ElAmrani@radio-medina.example"], reason="asked by phone", now=NOW)
    db.commit()
    report = run_import(db, "excel-fr-cp1252-semicolon.csv", list_name="relance")
    assert report.as_dict() == {"created": 0, "updated": 0, "unchanged": 4, "rejected": []}
    assert report.not_mailable == 3
    statuses = {c.email_key: c.status for c in db.scalars(select(Contact))}
    assert statuses == {
        "h.benjelloun@lecho-atlas.example": ContactStatus.unsubscribed,
        "b.lefevre@quotidien-rabat.example": ContactStatus.bounced,
        "y.elamrani@radio-medina.example": ContactStatus.suppressed,
        "g.naciri@atlas-tv.example": ContactStatus.active,
    }


def test_suppressed_address_imports_as_suppressed(db: Session) -> None:
    """An address on the suppression list before it was ever a contact is imported as
    `suppressed`, never `active`, even when it comes back in another spelling."""
    suppress(db, ["LAYLA.HADDAD@gulf-daily.example"], now=NOW)
    db.commit()
    report = run_import(db, "utf8-bom-comma.csv")
    assert report.created == 3 and report.not_mailable == 1
    assert contact(db, "layla.haddad@gulf-daily.example").status == ContactStatus.suppressed
    assert contact(db, "presse@médias.example").status == ContactStatus.active


def test_control_characters_never_survive(db: Session) -> None:
    """CR/LF inside quoted cells, tabs and control characters become single spaces in stored
    names, outlet and role; the next row is still its own row."""
    report = run_import(db, "control-chars.csv")
    assert report.as_dict() == {"created": 2, "updated": 0, "unchanged": 0, "rejected": []}
    stored = contact(db, "ctrl@example.com")
    assert stored.first_name == "Jean Pierre"
    assert stored.last_name == "Du pont"
    assert stored.outlet == "Le Journal [31m du Soir"
    assert stored.role == "Chef de rubrique"
    for value in (stored.first_name, stored.last_name, stored.outlet, stored.role):
        assert value is not None and value.isprintable()
    assert contact(db, "next@example.org").first_name == "Next"


def test_formula_cells_are_stored_as_text(db: Session) -> None:
    """Cells beginning with =, +, -, @ are stored as text, as typed; an apostrophe our own export
    added in front of one is taken off again."""
    run_import(db, "injection.csv")
    formula = contact(db, "formula@example.com")
    assert formula.first_name == '=HYPERLINK("http://evil.example","clic")'
    assert (formula.last_name, formula.outlet, formula.role) == (
        "+33 6 12 34 56 78", "-2+3", "@SUM(A1:A9)")
    assert contact(db, "quoted@example.com").first_name == "=1+1"


def test_chunks_merge_duplicates_across_chunk_boundaries(db: Session) -> None:
    """A file longer than one write chunk still merges a duplicate whose rows fall in different
    chunks into one contact."""
    rows = [f"person{i}@example.org;Person{i};;tag{i % 3}" for i in range(2100)]
    rows.append("PERSON5@example.org;;Cinq;extra")
    data = ("courriel;prénom;nom;étiquettes\n" + "\n".join(rows) + "\n").encode("cp1252")
    report = import_contacts(db, data, list_name="gros", now=NOW)
    db.commit()
    assert report.as_dict() == {"created": 2100, "updated": 1, "unchanged": 0, "rejected": []}
    five = contact(db, "person5@example.org")
    assert (five.first_name, five.last_name, five.tag_list) == ("Person5", "Cinq", ["tag2", "extra"])
    assert list_counts(db) == [("gros", 2100)]


def test_cli_import_json(runner: CliRunner, db: Session) -> None:
    """`communique contacts import FILE --list NAME --json` prints exactly the report JSON."""
    result = runner.invoke(main, ["contacts", "import", str(FILES / "bad-rows.csv"),
                                  "--list", "CLI", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"created", "updated", "unchanged", "rejected"}
    assert (payload["created"], payload["updated"], payload["unchanged"]) == (2, 0, 0)
    assert [entry["row"] for entry in payload["rejected"]] == [3, 4, 5, 6, 7]
    assert set(payload["rejected"][0]) == {"row", "field", "value", "reason"}
    assert list_counts(db) == [("CLI", 2)]
    assert contact(db, "bon.contact@example.com").consent_source == "import of bad-rows.csv"


def test_cli_import_human_summary_and_dry_run(runner: CliRunner, db: Session) -> None:
    """Without --json the CLI prints a summary and one line per rejected row; --dry-run writes
    nothing."""
    result = runner.invoke(main, ["contacts", "import", str(FILES / "bad-rows.csv"), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("dry run, nothing written: would import: 2 created, 0 updated")
    assert "row 3, email: not a valid address" in lines[1]
    assert len(lines) == 6
    assert contact_count(db) == 0


def test_cli_import_unreadable_file_fails(runner: CliRunner, db: Session) -> None:
    """An unreadable file makes the CLI exit 1 with the reason on stderr."""
    result = runner.invoke(main, ["contacts", "import", str(FILES / "no-email-column.csv")])
    assert result.exit_code == 1
    assert "no email column" in result.stderr
    assert contact_count(db) == 0


def test_non_ascii_part_before_at_is_rejected_idn_domain_kept(db: Session) -> None:
    """`josé@…` is rejected (row, field, value, reason: it needs SMTPUTF8, which most servers
    lack); an address with an accented domain imports, kept in its Unicode form."""
    data = ("email,prénom\r\n"
            "josé@lemonde.example,José\r\n"
            "redaction@médias.example,Rédaction\r\n").encode()
    report = import_contacts(db, data, now=NOW)
    db.commit()
    assert report.created == 1
    assert report.as_dict()["rejected"] == [{
        "row": 2, "field": "email", "value": "josé@lemonde.example",
        "reason": "the part before @ must be ASCII: most mail servers refuse others"}]
    assert contact(db, "redaction@médias.example").first_name == "Rédaction"
