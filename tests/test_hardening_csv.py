"""Issue 14, CSV data integrity: mixed encodings and garbled accents, NUL bytes and over-long
cells, invisible characters at a cell's edges, through the domain function, the web import page
and the API, rows checked in the database; and scripts/setup-system waiting for the apt lock."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from webutil import csrf_token, make_user, sign_in

from service.accounts.api_keys import create_api_key
from service.contacts.importing import ImportReport, import_contacts
from service.contacts.store import create_contact
from service.models import Contact

FILES = Path(__file__).parent / "data" / "contacts"
ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
TEXT_COLUMNS = ("email", "first_name", "last_name", "outlet", "role", "city")


def run_import(db: Session, data: bytes, **options: object) -> ImportReport:
    report = import_contacts(db, data, now=NOW, **options)  # type: ignore[arg-type]
    db.commit()
    return report


def stored(db: Session) -> dict[str, Contact]:
    return {contact.email_key: contact for contact in db.scalars(select(Contact))}


def stored_text(db: Session) -> list[str]:
    return [getattr(contact, name) or "" for contact in db.scalars(select(Contact))
            for name in TEXT_COLUMNS]


def rejected(report: ImportReport) -> list[tuple[int | None, str | None]]:
    return [(error.row, error.field) for error in report.rejected]


def test_utf8_file_with_a_pasted_windows_1252_line_keeps_its_accents(db: Session) -> None:
    """A UTF-8 file with one line pasted from a Windows-1252 file is read as UTF-8: its names keep
    their accents, the pasted line's row is rejected naming row, field and reason, never mojibake."""
    report = run_import(db, (FILES / "mixed-utf8-with-cp1252-line.csv").read_bytes())
    assert report.encoding == "utf-8-sig"
    assert (report.created, rejected(report)) == (3, [(4, "first_name")])
    assert "not UTF-8" in report.rejected[0].reason
    assert report.rejected[0].value == "Beno\\xeet"
    contacts = stored(db)
    assert contacts["h.benjelloun@lecho-atlas.example"].first_name == "Hélène"
    assert contacts["h.benjelloun@lecho-atlas.example"].outlet == "L’Écho de l’Atlas"
    assert contacts["l.chraibi@radio-medina.example"].last_name == "Chraïbi"
    assert "b.lefevre@quotidien-rabat.example" not in contacts
    assert not [value for value in stored_text(db) if "Ã" in value or "â€" in value]
    assert "row 4, first_name: not UTF-8" in report.summary()


def test_windows_1252_file_with_a_utf8_line_rejects_the_garbled_row(db: Session) -> None:
    """A Windows-1252 file with one line pasted from a UTF-8 file stays Windows-1252; the pasted
    line would read "HÃ©lÃ¨ne": that row is rejected and the likely spelling shown."""
    report = run_import(db, (FILES / "cp1252-with-utf8-line.csv").read_bytes())
    assert report.encoding == "cp1252"
    assert (report.created, rejected(report)) == (3, [(3, "first_name")])
    assert "garbled accents" in report.rejected[0].reason
    assert "'Hélène'" in report.rejected[0].reason
    contacts = stored(db)
    assert contacts["z.tazi@lematin.example"].first_name == "Zoé"
    assert contacts["b.lefevre@quotidien-rabat.example"].last_name == "Lefèvre"
    assert "h.benjelloun@lecho-atlas.example" not in contacts


def test_mojibake_already_in_a_utf8_file_is_a_rejected_row(db: Session) -> None:
    """Garbled accents already in a UTF-8 file (an earlier wrong conversion) reject their row;
    real names with Ã, Ø or a French non-breaking space before "!" are not mistaken for it."""
    data = ("email;prénom;nom;média\n"
            "a@example.com;HÃ©lÃ¨ne;Benjelloun;Le Matin\n"
            "b@example.com;Karim;Alaoui;lâ€™Opinion\n"
            "c@example.com;João;São Paulo;Øresund Avis\n"
            "d@example.com;Ana;Conceição;CAFÉ\u00a0!\n").encode()
    report = run_import(db, data)
    assert rejected(report) == [(2, "first_name"), (3, "outlet")]
    assert "probably 'Hélène'" in report.rejected[0].reason
    assert "probably 'l’Opinion'" in report.rejected[1].reason
    contacts = stored(db)
    assert set(contacts) == {"c@example.com", "d@example.com"}
    assert (contacts["c@example.com"].first_name, contacts["d@example.com"].outlet) == (
        "João", "CAFÉ !")


def test_a_nul_byte_rejects_only_its_row(db: Session) -> None:
    """A NUL byte in an imported cell rejects that row (row and field named); one in a column we
    do not import is harmless; the other rows are imported and no NUL reaches the database."""
    report = run_import(db, (FILES / "nul-byte.csv").read_bytes(), list_name="presse")
    assert (report.created, rejected(report)) == (2, [(3, "first_name")])
    assert "NUL byte" in report.rejected[0].reason and report.rejected[0].value == "Ka\\x00rim"
    assert set(stored(db)) == {"ok1@example.com", "ok2@example.com"}
    assert not [value for value in stored_text(db) if "\x00" in value]


def test_an_over_long_cell_rejects_only_its_row(db: Session) -> None:
    """A cell over 128 KB (here in a column we do not import, and an unclosed quote at the end)
    is one rejected row naming its row and column; the rows around it are imported."""
    good = "".join(f"ok{i}@example.com,Nom {i},\n" for i in range(2500))
    data = ("email,last_name,notes\n" + good + "long@example.com,Long," + "x" * 140_000 + "\n"
            + "after@example.com,Après,\n" + '"a quote never closed' + "y" * 200_000).encode()
    report = run_import(db, data, list_name="L")
    assert report.created == 2501
    assert rejected(report) == [(2502, "notes"), (2504, "email")]
    assert "longer than 128 KB (140,000 characters" in report.rejected[0].reason
    contacts = stored(db)
    assert len(contacts) == 2501 and contacts["after@example.com"].last_name == "Après"
    assert "long@example.com" not in contacts


def test_invisible_characters_at_the_edges_are_trimmed(db: Session) -> None:
    """Zero-width space, word joiner, BOM and NBSP at a cell's edges are trimmed like spaces: the
    address matches the existing contact; inside an address they stay invalid."""
    create_contact(db, {"email": "Jean.Dupont@lematin.example", "first_name": "Jean"}, now=NOW)
    db.commit()
    report = run_import(db, (FILES / "invisible-edges.csv").read_bytes())
    assert (report.created, report.updated, report.unchanged) == (2, 1, 0)
    assert rejected(report) == [(5, "email")]
    contacts = stored(db)
    assert set(contacts) == {"jean.dupont@lematin.example", "amina@lematin.example",
                             "karim@medias24.example"}
    jean = contacts["jean.dupont@lematin.example"]
    assert (jean.first_name, jean.last_name, jean.outlet) == ("Jean", "Dupont", "Le Matin")
    assert contacts["amina@lematin.example"].last_name == "Benali"
    assert contacts["karim@medias24.example"].outlet == "Médias24"


def test_web_import_reports_each_bad_row_and_imports_the_rest(client: FlaskClient,
                                                              db: Session) -> None:
    """On the web import page, a file with a pasted Windows-1252 line, a NUL byte and a 130 KB
    cell shows those three rows with their reasons, and imports the others."""
    data = ((FILES / "mixed-utf8-with-cp1252-line.csv").read_bytes()
            + b"Nu\x00l;X;n@example.com;Y\r\nLong;X;long@example.com;" + b"z" * 133_000
            + "\r\nÉlan;Fin;fin@example.com;Z\r\n".encode())
    make_user(db, "chef@example.org")
    sign_in(client, "chef@example.org")
    response = client.post("/contacts/import", data={
        "file": (io.BytesIO(data), "presse.csv"), "list_name": "presse",
        "csrf_token": csrf_token(client, "/contacts/import")}, content_type="multipart/form-data")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    for reason in ("not UTF-8", "NUL byte", "longer than 128 KB"):
        assert reason in page
    db.expire_all()
    contacts = stored(db)
    assert set(contacts) == {"h.benjelloun@lecho-atlas.example", "g.naciri@atlas-tv.example",
                             "l.chraibi@radio-medina.example", "fin@example.com"}
    assert contacts["fin@example.com"].first_name == "Élan"


def test_api_import_reports_each_bad_row_and_imports_the_rest(client: FlaskClient,
                                                              db: Session) -> None:
    """POST /api/v1/contacts/import: the JSON report names row, field and reason of the NUL,
    garbled and invisible-character rows; the rest is stored, edges trimmed."""
    _key, token = create_api_key(db, "tests", now=NOW, scopes=["read", "write"])
    db.commit()
    data = ("email,first_name,last_name\n"
            "a@example.com\u200b,\u2060Amina\u00a0,Benali\n"
            "b@example.com,Ka\x00rim,Alaoui\n"
            "c@example.com,HÃ©lÃ¨ne,Benjelloun\n"
            "d\u200b@example.com,D,D\n").encode()
    response = client.post("/api/v1/contacts/import?list=presse", data=data,
                           headers={"Authorization": f"Bearer {token}",
                                    "Content-Type": "text/csv"})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.json
    assert body is not None and body["created"] == 1
    assert [(row["row"], row["field"]) for row in body["rejected"]] == [
        (3, "first_name"), (4, "first_name"), (5, "email")]
    db.expire_all()
    contacts = stored(db)
    assert set(contacts) == {"a@example.com"}
    assert contacts["a@example.com"].first_name == "Amina"
    assert db.scalar(select(func.count()).select_from(Contact)) == 1


def _fake_system(tmp_path: Path, lock_failures: int) -> tuple[dict[str, str], Path]:
    """A PATH with only `id` (root), `sleep` and an apt-get that logs its arguments and, for its
    first `lock_failures` calls, fails as apt does when another process holds the lock."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")
    (bin_dir / "apt-get").write_text(f"""#!/bin/sh
echo "$*" >> {log}
calls=$(wc -l < {log})
if [ "$calls" -le {lock_failures} ]; then
    echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 1 (apt-get)" >&2
    exit 100
fi
""")
    for tool in ("wc", "sleep", "grep"):
        found = shutil.which(tool)
        assert found
        (bin_dir / tool).symlink_to(found)
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    return {**os.environ, "PATH": str(bin_dir), "APT_LOCK_POLL_SECONDS": "1"}, log


def test_setup_system_waits_for_the_apt_lock(tmp_path: Path) -> None:
    """scripts/setup-system waits while another process holds the apt lock (for `apt-get update`
    too, which ignores DPkg::Lock::Timeout), then installs what is missing, never failing fast."""
    env, log = _fake_system(tmp_path, lock_failures=2)
    bash = shutil.which("bash", path=os.defpath) or "/bin/bash"
    result = subprocess.run([bash, str(ROOT / "scripts" / "setup-system")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 4, calls
    assert all("DPkg::Lock::Timeout=300" in call for call in calls), calls
    assert all(" update" in call for call in calls[:3]) and " install " in calls[3]
    assert "chromium" in calls[3] and "spamassassin" in calls[3]


def test_setup_system_installs_nothing_when_present(tmp_path: Path) -> None:
    """With every command and library setup-system looks for present, apt-get is never run."""
    env, log = _fake_system(tmp_path, lock_failures=0)
    bin_dir = Path(env["PATH"])
    for command in ("chromium", "spamassassin", "docker-compose", "pdftoppm"):
        (bin_dir / command).write_text("#!/bin/sh\n")
        (bin_dir / command).chmod(0o755)
    (bin_dir / "ldconfig").write_text("#!/bin/sh\necho libpango-1.0.so.0 libpangoft2-1.0.so.0\n")
    (bin_dir / "ldconfig").chmod(0o755)
    if not Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists():
        pytest.skip("DejaVu fonts are not installed here: setup-system would rightly install them")
    bash = shutil.which("bash", path=os.defpath) or "/bin/bash"
    result = subprocess.run([bash, str(ROOT / "scripts" / "setup-system")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not log.exists()
