"""Releases: Markdown import of the samples, CMS HTML sanitizing, variants, updates, CLI."""

from __future__ import annotations

import email
import json
from datetime import UTC, datetime
from email import policy
from html import unescape

import pytest
from click.testing import CliRunner
from conftest import SAMPLES
from sqlalchemy.orm import Session

from service.cli import main
from service.config import Settings
from service.errors import Conflict, DuplicateRelease, NotFound, ValidationError
from service.models import Blast, BlastStatus, Contact, ReleaseStatus
from service.releases import store as releases
from service.releases.markdown import import_markdown, parse_press_contacts

NOW = datetime(2022, 7, 5, 8, 0, tzinfo=UTC)
TASK_FORCE = SAMPLES / "onmt-task-force-2022-07-06.md"
TOURNEE = SAMPLES / "onmt-tournee-regionale-2020-12.md"


def test_task_force_sample_imports_title_highlights_dateline_quote() -> None:
    """The first sample: title, two bold highlights, the Casablanca dateline and the quote."""
    draft = import_markdown(TASK_FORCE.read_text(encoding="utf-8"))
    assert draft.kicker is None
    assert draft.title == "L'ONMT met en ordre de bataille sa task force dans le monde"
    assert draft.highlights == [
        "Réunion à Casablanca de l'ensemble des délégués à l'étranger et des directeurs centraux "
        "de l'Office National Marocain du Tourisme",
        "Mise en place d'un plan d'action promotionnel et commercial pour les saisons à venir"]
    assert draft.dateline == "Casablanca, le 6 juillet 2022"
    assert draft.body.startswith("La Task Force de l'ONMT prend une nouvelle fois les devants")
    assert draft.quotes[0].startswith("Notre mobilisation est permanente")
    assert draft.press_contacts == []


def test_tournee_sample_imports_kicker_and_two_press_contacts() -> None:
    """The second sample: the kicker line is not the title; the contact block is structured."""
    draft = import_markdown(TOURNEE.read_text(encoding="utf-8"))
    assert draft.kicker == "Communiqué de presse"
    assert draft.title == "L'ONMT entame une tournée régionale pour amorcer le plan de relance"
    assert draft.highlights == []
    assert draft.dateline is None
    assert draft.press_contacts == [
        {"organisation": "Office National Marocain du Tourisme", "name": None,
         "email": "youssef.alaoui@onmt.org.ma", "phone": "06 61 30 50 93"},
        {"organisation": "Mosaik Events & CO", "name": None,
         "email": "Loubna.debbbarh@mosaik.ma", "phone": "05 22 25 28 68"}]
    assert "Contact Presse" not in draft.body
    assert draft.body.rstrip().endswith("la relance du secteur.")


@pytest.mark.parametrize(("line", "dateline"), [
    ("Casablanca, le 6 juillet 2022 : La Task Force", "Casablanca, le 6 juillet 2022"),
    ("Rabat, 3 décembre 2020 – Le ministère", "Rabat, 3 décembre 2020"),
    ("Casablanca, July 6, 2022 – The Office", "Casablanca, July 6, 2022"),
    ("**Marrakech, le 1er mars 2023** - Le salon", "Marrakech, le 1er mars 2023"),
])
def test_datelines_recognised(line: str, dateline: str) -> None:
    """French and English datelines with a colon or a dash are taken out of the first paragraph."""
    draft = import_markdown(f"Titre\n\n{line} ouvre.")
    assert draft.dateline == dateline
    assert not draft.body.startswith(("–", "-", ":"))


def test_press_contact_lines_with_labels() -> None:
    """Labelled phone and e-mail lines and "Name <address>" fill one contact each."""
    assert parse_press_contacts(["ONMT", "Youssef Alaoui", "Tél. : +212 6 61 30 50 93",
                                 "E-mail : youssef@onmt.example"]) == [
        {"organisation": "ONMT", "name": "Youssef Alaoui", "email": "youssef@onmt.example",
         "phone": "+212 6 61 30 50 93"}]


def test_bold_guillemets_and_non_breaking_spaces_survive(db: Session, settings: Settings) -> None:
    """**bold**, « guillemets » and non-breaking spaces reach the HTML and the text."""
    body = "Titre\n\nIl a dit\u00a0: «\u00a0**C'est fait**\u00a0» hier.\n"
    release = releases.create_release(db, settings, body=body, now=NOW)
    db.commit()
    html = releases.preview(db, settings, release.id, fmt="html", now=NOW)
    text = releases.preview(db, settings, release.id, fmt="text", now=NOW)
    assert isinstance(html, str)
    html = unescape(html)
    assert "Il a dit\u00a0: «\u00a0<strong" in html and "C'est fait</strong>\u00a0»" in html
    assert "Il a dit\u00a0: «\u00a0*C'est fait*\u00a0» hier." in text


def test_cms_html_is_sanitized(db: Session, settings: Settings) -> None:
    """Scripts, iframes, event handlers, style attributes and javascript: URLs are removed."""
    body = ('<p onclick="steal()" style="background:url(javascript:x)">Bonjour <b>presse</b></p>'
            '<script>alert(1)</script><iframe src="https://evil.example"></iframe>'
            '<a href="javascript:alert(1)">x</a><a href="https://onmt.ma">site</a>'
            '<img src="https://cdn.example/a.png" onerror="x()">')
    release = releases.create_release(db, settings, title="Titre", body=body, body_format="html",
                                      now=NOW)
    for forbidden in ("script", "iframe", "onclick", "onerror", "style=", "javascript:"):
        assert forbidden not in release.body
    assert "<b>presse</b>" in release.body and 'href="https://onmt.ma"' in release.body
    assert 'src="https://cdn.example/a.png"' in release.body


def test_variants_updates_and_lookup(db: Session, settings: Settings) -> None:
    """Variants share a group, a language appears once per group, updates are validated."""
    base = releases.create_release(db, settings, body=TASK_FORCE.read_text(encoding="utf-8"), now=NOW)
    english = releases.create_release(db, settings, title="ONMT task force", body="Text.",
                                      language="en", variant_of=base.id, now=NOW)
    assert base.group_id == base.id == english.group_id
    with pytest.raises(ValidationError, match="already has a variant"):
        releases.create_release(db, settings, title="Again", body="x", language="en",
                                variant_of=base.id, now=NOW)
    with pytest.raises(DuplicateRelease) as duplicate:  # the same file twice names the first
        releases.create_release(db, settings, body=TASK_FORCE.read_text(encoding="utf-8"), now=NOW)
    assert duplicate.value.existing_id == base.id
    again = releases.create_release(db, settings, body=TASK_FORCE.read_text(encoding="utf-8"), now=NOW,
                                    allow_duplicate=True)
    assert again.slug == f"{base.slug}-2"
    assert releases.get_release(db, base.slug).id == base.id
    assert releases.get_release(db, str(base.id)).id == base.id
    with pytest.raises(NotFound):
        releases.get_release(db, "nope")
    updated = releases.update_release(db, settings, base.id, now=NOW, status="ready",
                                      title="Nouveau titre")
    assert (updated.status, updated.title) == (ReleaseStatus.ready, "Nouveau titre")
    with pytest.raises(ValidationError):
        releases.update_release(db, settings, base.id, now=NOW, title="a\nb")
    with pytest.raises(ValidationError):
        releases.update_release(db, settings, base.id, now=NOW, embargo_until=datetime(2022, 7, 6))
    assert [r.id for r in releases.list_releases(db)] == [again.id, english.id, base.id]


def test_cli_import_list_and_preview(runner: CliRunner, db: Session) -> None:
    """`releases import --json`, `releases list --json` and `preview --format eml` work end to end."""
    result = runner.invoke(main, ["releases", "import", str(TOURNEE), "--language", "fr", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["title"] == "L'ONMT entame une tournée régionale pour amorcer le plan de relance"
    assert data["slug"] == "l-onmt-entame-une-tournee-regionale-pour-amorcer-le-plan-de-relance"
    listed = json.loads(runner.invoke(main, ["releases", "list", "--json"]).output)
    assert [row["id"] for row in listed] == [data["id"]]
    db.add(Contact(email="elodie@lemonde.example", email_key="elodie@lemonde.example",
                   civility="Mme", first_name="Élodie", last_name="Martin", language="fr"))
    db.commit()
    result = runner.invoke(main, ["preview", data["slug"], "--contact", "elodie@lemonde.example",
                                  "--format", "eml"])
    assert result.exit_code == 0, result.output
    message = email.message_from_bytes(result.stdout_bytes, policy=policy.default)
    assert message["To"] == "Élodie Martin <elodie@lemonde.example>"
    assert "Chère Élodie Martin," in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    text = runner.invoke(main, ["preview", str(data["id"]), "--contact", "elodie@lemonde.example",
                                "--format", "text"])
    assert text.output.startswith("Voir la version en ligne : https://press.example.org/r/")
    missing = runner.invoke(main, ["preview", "nope", "--contact", "x@example.org"])
    assert missing.exit_code == 1 and "does not exist" in missing.output


@pytest.mark.parametrize("field", ["from_email", "reply_to"])
def test_sender_address_must_be_ascii_before_the_at(db: Session, settings: Settings,
                                                    field: str) -> None:
    """A sender or reply-to address with a non-ASCII part before the @ is refused, naming the
    field; an accented domain is accepted (it is sent as punycode)."""
    with pytest.raises(ValidationError) as caught:
        releases.create_release(db, settings, title="Titre", body="Texte",
                                **{field: "josé@lemonde.example"}, now=NOW)  # type: ignore[arg-type]
    assert [(e.field, e.reason) for e in caught.value.errors] == [
        (field, "the part before @ must be ASCII: most mail servers refuse others")]
    release = releases.create_release(db, settings, title="Titre", body="Texte",
                                      **{field: "presse@médias.example"}, now=NOW)  # type: ignore[arg-type]
    assert getattr(release, field) == "presse@médias.example"


def test_release_cannot_be_edited_once_a_blast_started(db: Session, settings: Settings) -> None:
    """A scheduled, draft or cancelled-before-start blast leaves the release editable; once a
    blast of it or of a language variant has started, update_release raises Conflict."""
    base = releases.create_release(db, settings, title="Titre", body="Texte", now=NOW)
    english = releases.create_release(db, settings, title="Title", body="Text", language="en",
                                      variant_of=base.id, now=NOW)
    db.add_all([Blast(release_id=base.id, status=BlastStatus.scheduled, send_at=NOW),
                Blast(release_id=base.id, status=BlastStatus.draft),
                Blast(release_id=english.id, status=BlastStatus.cancelled)])
    db.flush()
    releases.update_release(db, settings, english.id, title="New title", now=NOW)
    db.add(Blast(release_id=base.id, status=BlastStatus.finished, started_at=NOW,
                 finished_at=NOW))
    db.flush()
    for release_id in (base.id, english.id):
        with pytest.raises(Conflict, match="can no longer be edited"):
            releases.update_release(db, settings, release_id, title="Too late", now=NOW)
    db.expire_all()
    assert english.title == "New title" and base.title == "Titre"
