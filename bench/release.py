"""The benchmark's one release and one audience: the first sample release padded to about 11 KB
of French MIME, the pre-built message the peers send, and an N-row contacts CSV."""

from __future__ import annotations

import csv
import email.policy
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = [ROOT.parent / "shared" / "samples" / "releases", ROOT / "tests" / "data" / "releases"]
TARGET_MESSAGE_BYTES = 11_300
SENDER = "Office National Marocain du Tourisme <presse@onmt.example.org>"
POLICY = email.policy.default.clone(max_line_length=998)


def sample_path() -> Path:
    for folder in SAMPLES:
        files = sorted(folder.glob("*.md")) if folder.is_dir() else []
        if files:
            return files[0]
    raise FileNotFoundError("no sample release found in " + ", ".join(map(str, SAMPLES)))


def load_release(target_bytes: int = TARGET_MESSAGE_BYTES) -> dict[str, object]:
    """Title, highlights and a Markdown body, padded with the sample's own paragraphs until the
    text + HTML message is about `target_bytes`."""
    lines = sample_path().read_text(encoding="utf-8").strip().splitlines()
    title = lines[0].strip()
    highlights = [line[2:].strip().strip("*") for line in lines[1:] if line.startswith("- ")]
    paragraphs = [line.strip() for line in lines[1:] if line.strip() and not line.startswith("- ")]
    body = "\n\n".join(paragraphs)
    release: dict[str, object] = {"title": title, "highlights": highlights, "body": body, "language": "fr",
               "kicker": "Communiqué de presse", "dateline": "Casablanca, le 6 juillet 2022"}
    index = 0
    while len(build_message(release, "Hélène", "x@example.org")) < target_bytes:
        body += "\n\n" + paragraphs[index % len(paragraphs)]
        index += 1
        release["body"] = body
    return release


def build_message(release: Mapping[str, object], first_name: str, to: str) -> bytes:
    """The message a peer sends: multipart/alternative, UTF-8 text and HTML, like ours."""
    greeting = f"Bonjour {first_name},"
    highlights = "\n".join(f"- {h}" for h in release["highlights"])  # type: ignore[attr-defined]
    text = f"{greeting}\n\n{release['title']}\n\n{highlights}\n\n{release['body']}\n"
    html = MarkdownIt().render(f"{greeting}\n\n# {release['title']}\n\n{highlights}\n\n{release['body']}")
    message = EmailMessage(policy=POLICY)
    message["From"] = SENDER
    message["To"] = to
    message["Subject"] = str(release["title"])
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain="onmt.example.org")
    message.set_content(text)
    message.add_alternative(f"<!doctype html><html><body>{html}</body></html>", subtype="html")
    return message.as_bytes(policy=POLICY)


def write_contacts(path: Path, count: int) -> None:
    """`count` distinct journalists, UTF-8 CSV with English headers, all in French."""
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["Email", "First name", "Last name", "Outlet", "Media type", "Language",
                         "Country", "City"])
        for i in range(count):
            writer.writerow([f"journaliste.{i}@redaction{i % 97}.example", "Hélène", f"Nom{i}",
                             "Le Quotidien de l'Atlas", "Print", "fr", "MA", "Casablanca"])
