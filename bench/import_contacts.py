"""Benchmark: import a 100,000-row French Excel export (Windows-1252, semicolon) into a fresh
database, and print rows per second and peak memory.

    .venv/bin/python bench/import_contacts.py [--rows N]

Runs on a fresh SQLite file, and on a fresh PostgreSQL schema too when
COMMUNIQUE_TEST_POSTGRES_URL is set. The issue's bar: 100,000 rows in under 10 s (>= 10,000 rows/s)
in bounded memory."""

from __future__ import annotations

import argparse
import csv
import os
import resource
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.contacts.importing import import_contacts  # noqa: E402
from service.db import make_engine, make_session_factory, session_scope, upgrade_schema  # noqa: E402
from service.models import Contact  # noqa: E402

HEADER = ["Civilité", "Prénom", "Nom", "E-mail", "Média", "Type de média", "Fonction", "Langue",
          "Pays", "Ville", "Étiquettes"]
FIRST = ["Hélène", "Karim", "Salma", "Youssef", "Gaëlle", "Omar", "Zoé", "Benoît", "Leïla", "Anas"]
LAST = ["Benjelloun", "Alaoui", "Idrissi", "El Amrani", "Naciri", "Chraïbi", "Lefèvre", "Tazi"]
OUTLETS = ["Le Quotidien de l'Atlas", "L'Économiste du Maghreb", "Radio Médina FM", "Atlas TV",
           "Agence Maghreb Presse", "Tanja Info"]
MEDIA = ["Presse écrite", "Radio", "Télévision", "Web", "Agence", "Pigiste"]
LANGUAGES = ["Français", "Arabe", "fr-FR", "ar-MA", "English", "Español"]
COUNTRIES = ["Maroc", "MA", "France", "Espagne", "United Kingdom"]
CITIES = ["Casablanca", "Rabat", "Fès", "Tanger", "Marrakech", "Agadir"]
TAGS = ["économie, tourisme", "culture", "sport", "", "tourisme, gastronomie"]


def write_file(path: Path, rows: int, edition: str = "") -> None:
    """Streamed to disk, one row at a time; every 50th row repeats an address (in capitals).
    A non-empty `edition` changes every journalist's outlet (a re-import that updates all)."""
    with path.open("w", encoding="cp1252", newline="") as out:
        writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
        writer.writerow(HEADER)
        for i in range(rows):
            number = i - 7 if i % 50 == 49 else i
            email = f"journaliste.{number}@redaction{number % 97}.example"
            writer.writerow([
                "Mme" if i % 2 else "M.", FIRST[i % len(FIRST)], LAST[i % len(LAST)],
                email.upper() if number != i else email, OUTLETS[i % len(OUTLETS)] + edition,
                MEDIA[i % len(MEDIA)], "Journaliste", LANGUAGES[i % len(LANGUAGES)],
                COUNTRIES[i % len(COUNTRIES)], CITIES[i % len(CITIES)], TAGS[i % len(TAGS)]])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def run(label: str, database_url: str, files: list[tuple[str, bytes]], rows: int) -> None:
    engine = make_engine(database_url)
    upgrade_schema(engine)
    factory = make_session_factory(engine)
    for name, data in files:
        measure(f"{label}, {name}", factory, data, rows)
    engine.dispose()


def measure(label: str, factory: Any, data: bytes, rows: int) -> None:
    started, cpu_started = time.perf_counter(), time.process_time()
    with session_scope(factory) as session:
        report = import_contacts(session, data, list_name="bench", now=datetime.now(UTC),
                                 source="bench")
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    with session_scope(factory) as session:
        stored = session.scalar(select(func.count()).select_from(Contact))
    print(f"{label}: {rows} rows in {elapsed:.2f} s = {rows / elapsed:,.0f} rows/s; "
          f"created {report.created}, updated {report.updated}, unchanged {report.unchanged}, "
          f"rejected {len(report.rejected)}; {stored} contacts stored; "
          f"this process's CPU {cpu:.2f} s; peak RSS so far {peak_rss_mb():.0f} MB; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "contacts.csv"
        write_file(path, args.rows)
        data = path.read_bytes()
        write_file(path, args.rows, edition=" (édition du soir)")
        files = [("new list", data), ("same list again", data),
                 ("every outlet changed", path.read_bytes())]
        print(f"file: {len(data) / 1e6:.1f} MB, Windows-1252, semicolon; "
              f"peak RSS before import {peak_rss_mb():.0f} MB")
        run("sqlite", f"sqlite:///{Path(folder) / 'bench.db'}", files, args.rows)
        postgres_url = os.environ.get("COMMUNIQUE_TEST_POSTGRES_URL")
        if postgres_url:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
            with admin.begin() as connection:
                connection.execute(text(f'CREATE SCHEMA "{schema}"'))
            separator = "&" if "?" in postgres_url else "?"
            try:
                run("postgresql", f"{postgres_url}{separator}options=-csearch_path%3D{schema}",
                    files, args.rows)
            finally:
                with admin.begin() as connection:
                    connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()


if __name__ == "__main__":
    main()
