"""Contacts: the one validator, create/edit/delete, search, lists, suppression, export, CLI."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.cli import main
from service.contacts.importing import import_contacts
from service.contacts.store import (
    add_to_list,
    create_contact,
    delete_contact,
    export_contacts,
    get_contact,
    list_counts,
    list_suppressions,
    normalize_email,
    remove_from_list,
    search_contacts,
    suppress,
    unsubscribe_contact,
    update_contact,
    validate_contact,
)
from service.errors import Conflict, NotFound, ValidationError
from service.models import Contact, ContactStatus

FILES = Path(__file__).parent / "data" / "contacts"
SAMPLES = Path(__file__).resolve().parent.parent / "contacts"
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def test_validate_contact_normalizes_every_field() -> None:
    """The validator trims and normalizes: address, language names, country names, media type
    words, tags, and one-line text."""
    clean = validate_contact({
        "email": "  Samira.Bennis@Exemple-Presse.EXAMPLE ", "civility": "Mme",
        "first_name": " Samira\r\n", "last_name": "Bennis", "outlet": "Le\tJournal",
        "media_type": "Agence de presse", "language": "Arabe", "country": "Émirats arabes unis",
        "tags": "Tourisme; Golfe, tourisme", "unknown": "ignored"})
    assert clean["email"] == "Samira.Bennis@exemple-presse.example"
    assert clean["email_key"] == "samira.bennis@exemple-presse.example"
    assert (clean["first_name"], clean["outlet"]) == ("Samira", "Le Journal")
    assert (clean["media_type"], clean["language"], clean["country"]) == ("agency", "ar", "AE")
    assert clean["tags"] == ["tourisme", "golfe"]
    assert clean["role"] is None and "unknown" not in clean


@pytest.mark.parametrize(("field", "value", "code"), [
    ("language", "fr_fr", "fr-FR"), ("language", "AR-ma", "ar-MA"), ("language", "Français", "fr"),
    ("language", "Español", "es"), ("language", "English", "en"), ("language", "العربية", "ar"),
    ("country", "maroc", "MA"), ("country", "Espagne", "ES"), ("country", "United Kingdom", "GB"),
    ("country", "usa", "US"), ("country", "de", "DE"), ("media_type", "Pigiste", "freelance"),
    ("media_type", "en ligne", "online"), ("media_type", "Télévision", "tv"),
])
def test_validate_contact_accepts_names_and_codes(field: str, value: str, code: str) -> None:
    """Languages, countries and media types are accepted as codes or common French/English words."""
    assert validate_contact({field: value}, partial=True) == {field: code}


def test_validate_contact_reports_every_bad_field() -> None:
    """Every bad field is reported at once, with its value and the reason."""
    with pytest.raises(ValidationError) as raised:
        validate_contact({"email": "pas-une-adresse", "language": "xx-yy-zz", "country": "Mars",
                          "media_type": "pigeon", "first_name": "x" * 201})
    fields = {error.field: error for error in raised.value.errors}
    assert sorted(f or "" for f in fields) == ["country", "email", "first_name", "language", "media_type"]
    assert fields["country"].value == "Mars"
    assert fields["first_name"].reason == "longer than 200 characters"


def test_normalize_email_handles_idn_and_case() -> None:
    """An IDN domain stays in Unicode, the domain is lower-cased and the key is case-insensitive;
    a non-ASCII part before the @ is refused (it would need SMTPUTF8)."""
    assert normalize_email(" Redaction@Médias.EXAMPLE ") == (
        "Redaction@médias.example", "redaction@médias.example")
    with pytest.raises(ValidationError):
        normalize_email("someone@exemple.test")
    with pytest.raises(ValidationError, match="part before @ must be ASCII"):
        normalize_email(" Rédaction@Médias.EXAMPLE ")


def test_create_contact_and_conflict(db: Session) -> None:
    """A new address creates an active contact on the given lists; the same address in another
    case is a Conflict."""
    created = create_contact(db, {"email": "Ali.Berrada@example.com", "first_name": "Ali",
                                  "tags": ["Sport"]}, now=NOW, list_names=["Sport"])
    db.commit()
    assert (created.status, created.tags, created.created_at) == (ContactStatus.active, ",sport,", NOW)
    assert list_counts(db) == [("Sport", 1)]
    with pytest.raises(Conflict):
        create_contact(db, {"email": "ali.berrada@EXAMPLE.com"}, now=NOW)
    with pytest.raises(ValidationError):
        create_contact(db, {"first_name": "No address"}, now=NOW)


def test_update_get_and_delete_contact(db: Session) -> None:
    """An edit changes only the given fields (empty clears, tags replaced); delete removes the
    contact; an unknown id is NotFound."""
    created = create_contact(db, {"email": "m.chaoui@example.org", "first_name": "Mehdi",
                                  "city": "Oujda", "tags": "a,b"}, now=NOW)
    later = datetime(2026, 3, 3, tzinfo=UTC)
    updated = update_contact(db, created.id, {"city": "", "tags": "c", "country": "Maroc"}, now=later)
    db.commit()
    fetched = get_contact(db, created.id)
    assert fetched is updated
    assert (fetched.first_name, fetched.city, fetched.country, fetched.tag_list) == (
        "Mehdi", None, "MA", ["c"])
    assert fetched.updated_at == later
    delete_contact(db, created.id)
    db.commit()
    with pytest.raises(NotFound):
        get_contact(db, created.id)


def test_update_to_a_taken_address_is_a_conflict(db: Session) -> None:
    """Changing an address to one another contact has is refused."""
    create_contact(db, {"email": "one@example.com"}, now=NOW)
    two = create_contact(db, {"email": "two@example.com"}, now=NOW)
    with pytest.raises(Conflict):
        update_contact(db, two.id, {"email": "ONE@example.com"}, now=NOW)


def test_suppression_cannot_be_bypassed(db: Session) -> None:
    """A suppressed address stays suppressed through create, edit to that address, list changes
    and deletion followed by a re-import."""
    assert suppress(db, ["blocked@example.com", "Blocked@EXAMPLE.com", "moved@example.com"],
                    reason="asked", actor="admin@example.org", now=NOW) == 2
    created = create_contact(db, {"email": "blocked@example.com"}, now=NOW, list_names=["Vip"])
    assert created.status == ContactStatus.suppressed
    other = create_contact(db, {"email": "active@example.com"}, now=NOW)
    update_contact(db, other.id, {"email": "moved@example.com"}, now=NOW)
    assert other.status == ContactStatus.suppressed
    add_to_list(db, "Autre", [created.id, other.id])
    db.commit()
    assert {c.status for c in db.scalars(select(Contact))} == {ContactStatus.suppressed}
    delete_contact(db, created.id)
    import_contacts(db, b"email\nblocked@example.com\n", list_name="Vip", now=NOW)
    db.commit()
    again = db.scalar(select(Contact).where(Contact.email_key == "blocked@example.com"))
    assert again is not None and again.status == ContactStatus.suppressed
    entry = next(s for s in list_suppressions(db) if s.email_key == "blocked@example.com")
    assert (entry.reason, entry.created_by) == ("asked", "admin@example.org")


def test_suppress_flips_existing_contacts(db: Session) -> None:
    """Suppressing an address marks its existing contact suppressed; a second suppress adds nothing;
    a bad address is refused with nothing written."""
    contact = create_contact(db, {"email": "later@example.com"}, now=NOW)
    assert suppress(db, ["LATER@example.com"], now=NOW) == 1
    db.commit()
    db.refresh(contact)
    assert contact.status == ContactStatus.suppressed
    assert suppress(db, ["later@example.com"], now=NOW) == 0
    with pytest.raises(ValidationError):
        suppress(db, ["ok@example.com", "not an address"], now=NOW)
    db.rollback()
    assert [s.email_key for s in list_suppressions(db)] == ["later@example.com"]


def test_deleting_an_unsubscribed_contact_keeps_it_unsubscribed(db: Session) -> None:
    """Deleting an unsubscribed journalist puts the address on the suppression list, so an old
    file re-imported later cannot make it active again."""
    contact = create_contact(db, {"email": "gone@example.org"}, now=NOW)
    unsubscribe_contact(db, contact.id, now=NOW)
    delete_contact(db, contact.id)
    import_contacts(db, b"email\ngone@example.org\n", now=NOW)
    db.commit()
    back = db.scalar(select(Contact).where(Contact.email_key == "gone@example.org"))
    assert back is not None and back.status == ContactStatus.suppressed


def test_lists_add_remove_and_counts(db: Session) -> None:
    """Lists are named groups: adding twice keeps one membership, removing drops it, counts show
    empty lists too."""
    one = create_contact(db, {"email": "a@example.com"}, now=NOW)
    two = create_contact(db, {"email": "b@example.com"}, now=NOW)
    add_to_list(db, "Presse", [one.id, two.id])
    add_to_list(db, "Presse", [one.id])
    add_to_list(db, "Radio", [one.id])
    assert remove_from_list(db, "Radio", [one.id]) == 1
    db.commit()
    assert list_counts(db) == [("Presse", 2), ("Radio", 0)]
    with pytest.raises(NotFound):
        add_to_list(db, "Presse", [9999])
    with pytest.raises(NotFound):
        remove_from_list(db, "Inconnue", [one.id])


def test_search_contacts_filters_and_pages(db: Session) -> None:
    """Search matches text in names, outlet and address, and filters by list, language (a base
    language matches its regional tags), country, media type, tag and status, one page at a time."""
    import_contacts(db, (FILES / "excel-fr-cp1252-semicolon.csv").read_bytes(),
                    list_name="Nationale", now=NOW)
    import_contacts(db, (FILES / "utf8-bom-comma.csv").read_bytes(), list_name="Monde", now=NOW)
    db.commit()
    found, total = search_contacts(db, query="ÉCHO DE L")
    assert total == 1 and found[0].last_name == "Benjelloun"
    _, total = search_contacts(db, query="ATLAS")
    assert total == 2
    _, total = search_contacts(db, language="French")
    assert total == 4  # fr, fr-FR, fr (IDN), fr
    found, total = search_contacts(db, list_name="Monde", country="Royaume-Uni")
    assert [c.last_name for c in found] == ["Whitaker"] and total == 1
    _, total = search_contacts(db, media_type="presse écrite", tag="Tourisme")
    assert total == 1
    page, total = search_contacts(db, offset=2, limit=2)
    assert total == 7 and len(page) == 2
    _, total = search_contacts(db, query="100%_")
    assert total == 0
    with pytest.raises(ValidationError) as raised:
        search_contacts(db, country="Mars", status="sleeping")
    assert sorted(e.field or "" for e in raised.value.errors) == ["country", "status"]


def test_export_neutralizes_formulas_and_reimports(db: Session) -> None:
    """Export writes UTF-8 with a BOM, prefixes formula-looking cells with an apostrophe (OWASP),
    and its file imports back unchanged."""
    import_contacts(db, (FILES / "injection.csv").read_bytes(), now=NOW)
    import_contacts(db, (FILES / "utf8-bom-comma.csv").read_bytes(), list_name="Monde", now=NOW)
    db.commit()
    out = io.StringIO()
    assert export_contacts(db, out) == 5
    text = out.getvalue()
    assert text.startswith("\ufeffemail,civility,first_name,last_name,outlet,role,media_type,")
    rows = {row["email"]: row for row in csv.DictReader(io.StringIO(text.lstrip("\ufeff")))}
    formula = rows["formula@example.com"]
    assert formula["first_name"] == "'=HYPERLINK(\"http://evil.example\",\"clic\")"
    assert (formula["last_name"], formula["outlet"], formula["role"]) == (
        "'+33 6 12 34 56 78", "'-2+3", "'@SUM(A1:A9)")
    assert rows["layla.haddad@gulf-daily.example"]["first_name"] == "ليلى"
    assert rows["layla.haddad@gulf-daily.example"]["tags"] == "travel, gulf"
    report = import_contacts(db, text.encode("utf-8"), now=NOW)
    assert report.as_dict() == {"created": 0, "updated": 0, "unchanged": 5, "rejected": []}
    only_list = io.StringIO()
    assert export_contacts(db, only_list, list_name="Monde") == 3


@pytest.mark.parametrize("name", ["presse-nationale.csv", "marches-internationaux.csv"])
def test_sample_lists_import(db: Session, name: str) -> None:
    """The sample lists in contacts/ import as real files do: about 40 journalists each, on
    reserved example domains, with the Arabic-language journalists in `ar`."""
    report = import_contacts(db, (SAMPLES / name).read_bytes(), list_name=Path(name).stem, now=NOW)
    db.commit()
    assert report.created >= 35
    contacts = list(db.scalars(select(Contact)))
    for contact in contacts:
        domain = contact.email_key.rsplit("@", 1)[1]
        assert domain in ("example.com", "example.org") or domain.endswith(".example")
    assert any(contact.language == "ar" for contact in contacts)
    if name == "presse-nationale.csv":
        assert report.updated + report.unchanged >= 2 and len(report.rejected) == 1
    else:
        assert report.rejected == []
        assert {c.language for c in contacts} >= {"fr", "en", "ar", "es"}
        arabic = [c for c in contacts if c.language == "ar"]
        assert all(any("\u0600" <= ch <= "\u06ff" for ch in c.last_name or "") for c in arabic)


def test_cli_export_to_file(runner: CliRunner, db: Session, tmp_path: Path) -> None:
    """`communique contacts export --list NAME --output FILE` writes that list as CSV with a BOM."""
    import_contacts(db, (FILES / "utf8-tab.tsv").read_bytes(), list_name="Europe", now=NOW)
    import_contacts(db, (FILES / "duplicates.csv").read_bytes(), now=NOW)
    db.commit()
    target = tmp_path / "europe.csv"
    result = runner.invoke(main, ["contacts", "export", "--list", "Europe", "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert "exported 2 contacts" in result.stderr
    data = target.read_bytes()
    assert data.startswith(b"\xef\xbb\xbfemail,")
    assert "Lucía".encode() in data and b"nadia.tazi" not in data


def test_cli_suppress(runner: CliRunner, db: Session) -> None:
    """`communique contacts suppress EMAIL... --json` adds the addresses and flips the contact."""
    contact = create_contact(db, {"email": "stop@example.com"}, now=NOW)
    db.commit()
    result = runner.invoke(main, ["contacts", "suppress", "STOP@example.com", "new@example.org",
                                  "--reason", "asked", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"suppressed": 2, "given": 2}
    db.refresh(contact)
    assert contact.status == ContactStatus.suppressed
    bad = runner.invoke(main, ["contacts", "suppress", "nope"])
    assert bad.exit_code == 1 and "email" in bad.stderr


def test_cli_lists(runner: CliRunner, db: Session) -> None:
    """`communique lists` prints each list's name and count; --json gives them as objects."""
    import_contacts(db, (FILES / "duplicates.csv").read_bytes(), list_name="Doublons", now=NOW)
    add_to_list(db, "Vide", [])
    db.commit()
    result = runner.invoke(main, ["lists"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["Doublons\t2", "Vide\t0"]
    as_json = runner.invoke(main, ["lists", "--json"])
    assert json.loads(as_json.stdout) == [{"name": "Doublons", "count": 2},
                                          {"name": "Vide", "count": 0}]
