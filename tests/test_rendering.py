"""Release -> MIME: structure, headers, encodings, personal parts, variants, injection, DKIM."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from html import unescape
from pathlib import Path

import pytest
from conftest import SAMPLES
from sqlalchemy.orm import Session

from service.config import Settings
from service.errors import RenderError, ValidationError
from service.models import Contact
from service.releases import store as releases
from service.rendering import prepare as rendering
from service.rendering.mime import ascii_address
from service.rendering.prepare import Recipient, new_message_id, prepare_release
from service.rendering.unsubscribe import make_token, verify_token

NOW = datetime(2022, 7, 5, 8, 0, tzinfo=UTC)
TASK_FORCE = SAMPLES / "onmt-task-force-2022-07-06.md"
TOURNEE = SAMPLES / "onmt-tournee-regionale-2020-12.md"
ELODIE = Recipient(email="elodie.martin@lemonde.example", contact_id=11, civility="Mme",
                   first_name="Élodie", last_name="Martin", outlet="Le Monde", language="fr")
PARSE = policy.default


def _import(db: Session, settings: Settings, path: Path, **kwargs: object) -> int:
    release = releases.create_release(db, settings, body=path.read_text(encoding="utf-8"), now=NOW,
                                      **kwargs)  # type: ignore[arg-type]
    db.commit()
    return release.id


def _parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=PARSE)  # type: ignore[return-value]


def _parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    # Entities decoded, so assertions read like the page; tags keep their attributes.
    return (text.get_content().replace("\r\n", "\n"),
            unescape(html.get_content()).replace("\r\n", "\n"))


def test_task_force_sample_renders_as_multipart_alternative(db: Session, settings: Settings) -> None:
    """The first sample becomes text-then-HTML UTF-8 quoted-printable parts with every piece."""
    prepared = prepare_release(db, _import(db, settings, TASK_FORCE), settings)
    message_id = new_message_id(settings)
    raw = prepared.render_bytes(ELODIE, message_id=message_id, now=NOW, blast_id=3)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")
    message = _parse(raw)
    assert message.get_content_type() == "multipart/alternative"
    kinds = [part.get_content_type() for part in message.iter_parts()]
    assert kinds == ["text/plain", "text/html"]
    for part in message.iter_parts():
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert message["Subject"] == "L'ONMT met en ordre de bataille sa task force dans le monde"
    assert message["From"] == "Office National Marocain du Tourisme <presse@onmt.example.org>"
    assert message["To"] == "Élodie Martin <elodie.martin@lemonde.example>"
    assert message["Message-ID"] == message_id
    assert message["Message-ID"].endswith("@onmt.example.org>")
    assert message["Date"].datetime == NOW
    assert message["MIME-Version"] == "1.0"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https, mailto = [u.strip(" <>") for u in message["List-Unsubscribe"].split(",")]
    assert https.startswith("https://press.example.org/u/")
    assert mailto == "mailto:presse@onmt.example.org?subject=unsubscribe"
    token = verify_token(settings, https.rsplit("/", 1)[1])
    assert (token.contact_id, token.blast_id) == (11, 3)

    text, html = _parts(message)
    assert text.startswith("Voir la version en ligne : https://press.example.org/r/l-onmt-met-en-ordre")
    assert "Chère Élodie Martin," in text and "Chère Élodie Martin," in html
    assert "- Réunion à Casablanca de l'ensemble des délégués" in text
    assert re.search(r"<p[^>]*>Réunion à Casablanca de l'ensemble des délégués", html)
    assert "*Casablanca, le 6 juillet 2022* : La Task Force" in text
    assert re.search(r"<strong[^>]*>Casablanca, le 6 juillet 2022</strong> : La Task Force", html)
    assert re.search(r"« <strong[^>]*>Notre mobilisation est permanente", html)
    assert "« *Notre mobilisation est permanente" in " ".join(text.split())
    assert https in text and https in html
    assert all(len(line) <= 78 for line in text.splitlines() if "://" not in line)
    assert 'lang="fr"' in html and 'dir="ltr"' in html


def test_tournee_sample_keeps_kicker_bold_and_press_contacts(db: Session, settings: Settings) -> None:
    """The second sample: kicker, bold text, quote and both press-contact organisations."""
    release_id = _import(db, settings, TOURNEE)
    release = releases.get_release(db, release_id)
    assert release.kicker == "Communiqué de presse"
    assert release.title == "L'ONMT entame une tournée régionale pour amorcer le plan de relance"
    raw = prepare_release(db, release_id, settings).render_bytes(
        Recipient(email="press@example.org", language="fr"), message_id="<a1@onmt.example.org>",
        now=NOW)
    text, html = _parts(_parse(raw))
    assert "Madame, Monsieur," in text and "Madame, Monsieur," in html
    assert re.search(r"<strong[^>]*>une tournée dans les 12 régions du Royaume</strong>", html)
    assert "*une\ntournée dans les 12 régions du Royaume*" in text
    assert re.search(r"«<strong[^>]*>Il est important pour nous", html)
    block = ("CONTACTS PRESSE\n\nOffice National Marocain du Tourisme\nyoussef.alaoui@onmt.org.ma\n"
             "06 61 30 50 93\n\nMosaik Events & CO\nLoubna.debbbarh@mosaik.ma\n05 22 25 28 68\n")
    assert block in text
    assert 'href="mailto:youssef.alaoui@onmt.org.ma"' in html
    assert "Mosaik Events & CO</strong>" in html
    assert "Contact Presse" not in text


def test_bytes_match_what_the_standard_library_builds(db: Session, settings: Settings) -> None:
    """Parsing our bytes gives the headers and bodies an EmailMessage built the usual way has."""
    prepared = prepare_release(db, _import(db, settings, TOURNEE), settings)
    rendered = prepared.render(ELODIE, message_id="<ref@onmt.example.org>", now=NOW, blast_id=1)
    assert rendered.raw == prepared.render_bytes(ELODIE, message_id="<ref@onmt.example.org>",
                                                 now=NOW, blast_id=1)
    reference = EmailMessage(policy=policy.default.clone(max_line_length=998))
    for name in ("Date", "From", "To", "Subject", "Message-ID", "MIME-Version", "List-Unsubscribe",
                 "List-Unsubscribe-Post"):
        reference[name] = rendered.headers[name]
    reference.set_content(rendered.text)
    reference.add_alternative(rendered.html, subtype="html")
    ours, theirs = _parse(rendered.raw), _parse(reference.as_bytes())
    for name in ("Date", "From", "To", "Subject", "Message-ID", "List-Unsubscribe",
                 "List-Unsubscribe-Post"):
        assert str(ours[name]) == str(theirs[name]), name
    assert [part.rstrip("\n") for part in _parts(ours)] == [part.rstrip("\n") for part in _parts(theirs)]
    assert "Chère Élodie Martin," in rendered.text


def test_attachments_wrap_the_alternative_in_multipart_mixed(db: Session, settings: Settings) -> None:
    """With a PDF attached the message is multipart/mixed: the alternative first, then the file."""
    release_id = _import(db, settings, TASK_FORCE)
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 20
    releases.add_attachment(db, settings, release_id, filename="Dossier de presse é.pdf",
                            content_type="application/pdf", data=pdf, now=NOW)
    db.commit()
    raw = prepare_release(db, release_id, settings).render_bytes(ELODIE, message_id="<m@x.org>", now=NOW)
    message = _parse(raw)
    assert message.get_content_type() == "multipart/mixed"
    alternative, attachment = list(message.iter_parts())
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_filename() == "Dossier de presse é.pdf"
    assert attachment.get_content() == pdf
    assert "Dossier de presse é.pdf" in _parts(message)[0]


def test_attachment_limits(db: Session, settings: Settings) -> None:
    """Only PDFs and images within the size limit are accepted, checked by content."""
    release_id = _import(db, settings, TASK_FORCE)
    with pytest.raises(ValidationError, match="only PDF and images"):
        releases.add_attachment(db, settings, release_id, filename="x.exe",
                                content_type="application/x-msdownload", data=b"MZ", now=NOW)
    with pytest.raises(ValidationError, match="not a application/pdf"):
        releases.add_attachment(db, settings, release_id, filename="x.pdf",
                                content_type="application/pdf", data=b"<html>", now=NOW)
    small = Settings(**{**settings.__dict__, "attachment_max_bytes": 10})
    with pytest.raises(ValidationError, match="larger than 10 bytes"):
        releases.add_attachment(db, small, release_id, filename="a.png", content_type="image/png",
                                data=b"\x89PNG\r\n\x1a\n" + b"0" * 20, now=NOW)


def test_arabic_variant_renders_right_to_left(db: Session, settings: Settings) -> None:
    """An Arabic contact gets the Arabic variant: rtl, lang=ar, right-aligned, Arabic greeting."""
    base_id = _import(db, settings, TASK_FORCE)
    releases.create_release(
        db, settings, title="المكتب الوطني المغربي للسياحة يعبئ فريق عمله عبر العالم",
        body="**الدار البيضاء، 6 يوليوز 2022** – يجتمع مندوبو المكتب في الدار البيضاء.",
        language="ar", highlights=["اجتماع جميع المندوبين بالخارج"], variant_of=base_id, now=NOW)
    db.commit()
    prepared = prepare_release(db, base_id, settings)
    assert set(prepared.variants) == {"fr", "ar"}
    karim = Recipient(email="karim@hespress.example", contact_id=5, civility="M.",
                      first_name="كريم", last_name="بنعلي", language="ar-MA")
    message = _parse(prepared.render_bytes(karim, message_id="<ar@x.org>", now=NOW))
    text, html = _parts(message)
    assert message["Subject"] == "المكتب الوطني المغربي للسياحة يعبئ فريق عمله عبر العالم"
    assert '<html lang="ar" dir="rtl"' in html
    assert "text-align: right" in html
    assert "السيد كريم بنعلي المحترم،" in text and "السيد كريم بنعلي المحترم،" in html
    assert text.index("السيد كريم بنعلي المحترم،") < text.index("يجتمع مندوبو المكتب")
    english = Recipient(email="john@bbc.example", language="en")
    assert _parse(prepared.render_bytes(english, message_id="<en@x.org>", now=NOW))["Subject"] \
        .startswith("L'ONMT met en ordre")


@pytest.mark.parametrize(("language", "recipient", "expected"), [
    ("fr", Recipient("a@x.org", civility="Mme", first_name="Élodie", last_name="Martin"),
     "Chère Élodie Martin,"),
    ("fr", Recipient("a@x.org", civility="M.", first_name="Karim", last_name="Benali"),
     "Cher Karim Benali,"),
    ("fr", Recipient("a@x.org", first_name="Sam", last_name="Lévy"), "Bonjour Sam Lévy,"),
    ("fr", Recipient("a@x.org"), "Madame, Monsieur,"),
    ("en", Recipient("a@x.org", civility="Mme", first_name="Jane", last_name="Smith"),
     "Dear Ms Smith,"),
    ("en", Recipient("a@x.org"), "Dear Sir or Madam,"),
    ("es", Recipient("a@x.org", civility="Sra.", first_name="Ana", last_name="Ruiz"),
     "Estimada Ana Ruiz:"),
    ("ar", Recipient("a@x.org"), "سيدتي، سيدي،"),
])
def test_greeting_in_the_contact_language(language: str, recipient: Recipient, expected: str) -> None:
    """The greeting follows the variant's language, the civility and whether a name is known."""
    assert rendering.greeting_for(language, recipient) == expected


def test_embargo_in_subject_and_at_top_of_both_parts(db: Session, settings: Settings) -> None:
    """An embargoed release says so, in the office's time zone, in the subject and both parts."""
    release_id = _import(db, settings, TASK_FORCE,
                         embargo_until=datetime(2022, 7, 6, 9, 0, tzinfo=UTC))
    message = _parse(prepare_release(db, release_id, settings).render_bytes(
        ELODIE, message_id="<e@x.org>", now=NOW))
    notice = "EMBARGO : ne pas publier avant le 6 juillet 2022 à 10 h 00, heure de Casablanca"
    assert message["Subject"].startswith("[EMBARGO jusqu'au 6 juillet 2022, 10 h 00] L'ONMT")
    text, html = _parts(message)
    assert notice in text.replace("\n", " ")
    assert text.index("EMBARGO") < text.index("Chère")
    assert notice in html and html.index(notice) < html.index("Chère")
    lifted = prepare_release(db, release_id, settings, now=datetime(2022, 7, 6, 9, 1, tzinfo=UTC))
    assert lifted.subject.startswith("L'ONMT")


CVE_WORD = "=?utf-8?q?Launch=0D=0ABcc:_x@example.org?="


def test_encoded_word_in_title_or_name_never_becomes_a_header(db: Session, settings: Settings) -> None:
    """CVE-2024-6923: an encoded word hiding CR LF in a title or name stays text, even re-generated."""
    release = releases.create_release(db, settings, title=CVE_WORD, body="Texte.", now=NOW)
    db.commit()
    prepared = prepare_release(db, release.id, settings)
    victim = Recipient(email="v@example.org", first_name=CVE_WORD, last_name="\r\nBcc: y@example.org")
    raw = prepared.render_bytes(victim, message_id="<c@x.org>", now=NOW)
    for data in (raw, _parse(raw).as_bytes()):
        message = _parse(data)
        assert message["Bcc"] is None
        assert message["Subject"] == CVE_WORD.replace("=?", "= ?")
        assert "\n" not in message["To"] and "\r" not in message["Subject"]
        assert message["To"].addresses[0].addr_spec == "v@example.org"
        assert not [name for name in message.keys() if name.lower() == "bcc"]


def test_line_breaks_rejected_at_input(db: Session, settings: Settings) -> None:
    """CR/LF in the title, sender name or addresses is refused when the release is saved."""
    for fields in ({"title": "Launch\r\nBcc: x@example.org"},
                   {"title": "ok", "from_name": "Press\nBcc: x@example.org"},
                   {"title": "ok", "reply_to": "a@example.org\r\nBcc: x@example.org"}):
        with pytest.raises(ValidationError):
            releases.create_release(db, settings, body="Texte.", now=NOW, **fields)  # type: ignore[arg-type]


def test_dkim_signature_verifies(db: Session, settings: Settings, tmp_path: Path) -> None:
    """With a selector and key configured, each message carries a DKIM signature dkimpy accepts."""
    import base64
    import subprocess

    import dkim

    key_path = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key_path), "2048"], check=True, timeout=60,
                   capture_output=True)
    public = subprocess.run(["openssl", "rsa", "-in", str(key_path), "-pubout", "-outform", "DER"],
                            check=True, timeout=60, capture_output=True).stdout
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    signed = Settings(**{**settings.__dict__, "dkim_selector": "press",
                         "dkim_private_key_path": str(key_path)})
    raw = prepare_release(db, _import(db, signed, TOURNEE), signed).render_bytes(
        ELODIE, message_id="<d@x.org>", now=NOW)
    assert raw.startswith(b"DKIM-Signature: ")
    assert b"d=onmt.example.org" in raw.split(b"\r\n\r\n")[0]

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return record if name == b"press._domainkey.onmt.example.org." else b""

    assert dkim.verify(raw, dnsfunc=dns)
    assert not dkim.verify(raw.replace(b"Madame", b"Madame"[::-1]).replace(b"Ch=C3=A8re", b"Chere"),
                           dnsfunc=dns)


def test_template_error_reported_with_line() -> None:
    """A missing template variable is a RenderError naming the template and its line."""
    with pytest.raises(RenderError) as caught:
        rendering.render_templates({"subject": "x"})
    assert caught.value.template == "base.html"
    assert caught.value.line == 2


def test_unsubscribe_token_matches_itsdangerous(settings: Settings) -> None:
    """The fast token maker signs exactly what URLSafeSerializer.dumps would, and it verifies."""
    from itsdangerous import URLSafeSerializer

    from service.rendering.unsubscribe import SALT

    serializer = URLSafeSerializer(settings.secret_key, salt=SALT)
    for who, blast in [(42, 7), (42, None), (2**40, 3), ("a@x.org", 9), ("rédaction@exemple.ma", None)]:
        args = (who, blast, None) if isinstance(who, int) else (None, blast, who)
        assert make_token(settings, *args) == serializer.dumps([who, blast]), (who, blast)
    token = make_token(settings, 42, 7)
    assert verify_token(settings, token).contact_id == 42
    assert verify_token(settings, make_token(settings, None, None, "a@x.org")).email == "a@x.org"


def test_preview_prints_the_bytes_of_the_contact(db: Session, settings: Settings) -> None:
    """preview() renders as a stored contact receives it, in html, text or eml."""
    release_id = _import(db, settings, TASK_FORCE)
    db.add(Contact(email="Karim@Example.org", email_key="karim@example.org", civility="M.",
                   first_name="Karim", last_name="Benali", language="fr"))
    db.commit()
    eml = releases.preview(db, settings, release_id, email="karim@example.org", fmt="eml", now=NOW)
    assert isinstance(eml, bytes)
    assert "Cher Karim Benali," in _parts(_parse(eml))[0]
    text = releases.preview(db, settings, release_id, email="karim@example.org", fmt="text", now=NOW)
    assert isinstance(text, str) and "Cher Karim Benali," in text
    assert releases.validate_release(db, settings, release_id) == ["the release has no press contact"]


def test_ascii_address_refuses_non_ascii_part_before_the_at() -> None:
    """An address whose part before the @ is not ASCII has no ASCII form: RenderError, not a
    UnicodeEncodeError; an accented domain becomes punycode."""
    with pytest.raises(RenderError, match="part before @ must be ASCII"):
        ascii_address("josé@x.example")
    assert ascii_address("presse@médias.example") == "presse@xn--mdias-bsa.example"


def test_wire_form_is_the_message_dot_stuffed_and_ended(db: Session, settings: Settings,
                                                         tmp_path: Path) -> None:
    """render_bytes(wire=True), what the worker writes after DATA, is exactly what aiosmtplib
    would write for render_bytes(): every line that starts with "." gets another, then ".\\r\\n".
    Dots in the static body, in a personal line that quoted-printable wraps, and with DKIM on;
    and the message reads back from its wire form unchanged."""
    import subprocess

    from service.delivery.smtp import _unstuff

    path = tmp_path / "points.md"
    path.write_text(TASK_FORCE.read_text(encoding="utf-8")
                    + "\n\n.ma et .com : une ligne qui commence par un point.\n\n..et deux.\n",
                    encoding="utf-8")
    dotted = Recipient(email="k@example.org", contact_id=5, first_name="Karim",
                       last_name="B" + "." * 150, language="fr")
    key_path = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key_path), "2048"], check=True, timeout=60,
                   capture_output=True)
    signed = Settings(**{**settings.__dict__, "dkim_selector": "press",
                         "dkim_private_key_path": str(key_path)})
    release_id = _import(db, settings, path)  # one release, prepared under both settings
    for config in (settings, signed):
        prepared = prepare_release(db, release_id, config)
        for recipient in (ELODIE, dotted):
            raw = prepared.render_bytes(recipient, message_id="<w@x.org>", now=NOW, blast_id=3)
            wire = prepared.render_bytes(recipient, message_id="<w@x.org>", now=NOW, blast_id=3,
                                         wire=True)
            if config is signed:  # the signature carries its own time (t=): compare what follows
                wire, raw = (re.sub(rb"^DKIM-Signature:.*?\r\n(?=\S)", b"", m, flags=re.S)
                             for m in (wire, raw))
            assert wire == re.sub(rb"(?m)^\.", b"..", raw) + b".\r\n"
            assert _unstuff(wire) == raw
        assert b"\r\n..ma et .com" in wire and b"\r\n...et deux." in wire
        personal = [line for line in raw.split(b"\r\n") if line.startswith(b".") and b"Karim" not in line]
        assert any(set(line.rstrip(b"=,")) == {ord(".")} for line in personal)  # a wrapped name line


def test_every_personal_field_a_template_uses_is_filled(db: Session, settings: Settings) -> None:
    """The worker computes only the personal values the templates use; a template that uses all
    of them gets each one, cleaned, and HTML-escaped in the HTML part."""
    import dataclasses

    from service.rendering import mime

    prepared = prepare_release(db, _import(db, settings, TOURNEE), settings)
    variant = prepared.variants[prepared.default_language]
    text = ("Nom : @@cq.full_name@@ / @@cq.first_name@@ / @@cq.last_name@@\n"
            "Média : @@cq.outlet@@ <@@cq.email@@>\n@@cq.greeting@@ @@cq.unsubscribe_url@@\n")
    html_body = "<p>@@cq.full_name@@ chez @@cq.outlet@@</p>\n"
    variant.skeleton = dataclasses.replace(variant.skeleton, tail=mime.assemble_tail(
        static_headers=b"", text_pieces=mime.compile_body(text),
        html_pieces=mime.compile_body(html_body, html=True), attachments=[]))
    assert variant.skeleton.fields == set(mime.PERSONAL_FIELDS)
    assert variant.skeleton.html_fields == {"full_name", "outlet"}
    recipient = dataclasses.replace(ELODIE, outlet="Le Monde & <Co>\x07", last_name="Martin\r\nBcc: x")
    plain, html_part = _parts(_parse(prepared.render_bytes(recipient, message_id="<p@x.org>", now=NOW,
                                                           blast_id=2)))
    url = prepared.tokens.url(make_token(settings, 11, 2))
    assert plain == ("Nom : Élodie Martin Bcc: x / Élodie / Martin Bcc: x\n"
                     "Média : Le Monde & <Co> <elodie.martin@lemonde.example>\n"
                     f"Chère Élodie Martin Bcc: x, {url}\n")
    assert "<p>Élodie Martin Bcc: x chez Le Monde & <Co></p>" in html_part
    assert "&lt;Co&gt;" in prepared.render_bytes(recipient, message_id="<p@x.org>", now=NOW).decode()
