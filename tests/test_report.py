"""The blast report: figures from the ledger and the recorded opens and clicks, the same on the
page, in the API, from the CLI and in the CSV; charts as script-free SVG, in French too."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from test_tracking import PERSON, _html, _paths, _send
from webutil import make_user, sign_in

from service.accounts.api_keys import create_api_key
from service.cli import main
from service.delivery.report import blast_report
from service.delivery.report_charts import chart_svg
from service.models import Engagement, MessageStatus, QueuedMessage
from service.rendering.tracking import verify_link_token

BILAN = "https://onmt.example.org/bilan?annee=2026&m=7"


def _engage(db, settings, smtpd, client) -> None:  # type: ignore[no-untyped-def]
    """Karim: a scanner fetches every link on arrival, then he opens twice and clicks; Amina:
    Apple's proxy only; Sara asked not to be tracked."""
    karim = _html(smtpd, "karim@medias24.example.ma")
    [pixel] = _paths(karim, "o")
    clicks = _paths(karim, "c")
    for path in clicks:
        client.get(path, headers={"User-Agent": PERSON})
    db.execute(update(QueuedMessage).where(QueuedMessage.email == "karim@medias24.example.ma")
               .values(sent_at=datetime.now(UTC) - timedelta(hours=2)))
    db.commit()
    client.get(pixel, headers={"User-Agent": PERSON})
    client.get(pixel, headers={"User-Agent": PERSON})
    [bilan] = [p for p in clicks if (verify_link_token(settings, p.split("/")[3]) or (0, ""))[1] == BILAN]
    assert client.get(bilan, headers={"User-Agent": PERSON}).status_code == 302
    [amina_pixel] = _paths(_html(smtpd, "amina@lematin.example.ma"), "o")
    client.get(amina_pixel, headers={"User-Agent": "Mozilla/5.0"},
               environ_base={"REMOTE_ADDR": "17.1.2.3"})


def test_report_figures_match_the_ledger_everywhere(db, smtp_settings, smtpd, client, runner):  # type: ignore[no-untyped-def]
    """Sent, delivered, opened by people and by machines only, clicked, per outlet; the top link
    and the journalist who opened; the API, the CLI and the CSV say the same."""
    blast_id = _send(db, smtp_settings, track=True)
    _engage(db, smtp_settings, smtpd, client)
    db.expire_all()
    report = blast_report(db, blast_id)
    data = report.as_dict()
    sent = db.scalar(select(func.count()).select_from(QueuedMessage).where(
        QueuedMessage.blast_id == blast_id, QueuedMessage.status == MessageStatus.sent))
    person_rows = db.scalar(select(func.count(func.distinct(Engagement.queued_message_id))).where(
        Engagement.blast_id == blast_id, Engagement.is_machine.is_(False)))
    totals = data["totals"]
    assert (totals["recipients"], totals["sent"], totals["delivered"]) == (3, sent, sent) == (3, 3, 3)
    assert totals["opened"] == person_rows == 1 and totals["clicked"] == 1
    assert totals["opened_by_machines"] == 1  # Amina: Apple's proxy only
    assert totals["rates"]["opened"] == round(1 / 3, 4)
    outlets = {entry["value"]: entry for entry in data["groups"]["outlet"]}
    assert outlets["Medias24"]["opened"] == 1 and outlets["Le Matin"]["opened"] == 0
    assert outlets["Le Matin"]["opened_by_machines"] == 1
    assert data["groups"]["language"][0]["value"] == "fr"
    assert data["top_links"][0] == {"url": BILAN, "people": 1, "clicks": 1, "machine_clicks": 1}
    [opener] = data["openers"]
    assert opener["email"] == "karim@medias24.example.ma" and opener["opens"] == 2
    assert sum(data["opens_per_hour"]) == 1 and sum(m["count"] for m in data["deliveries_per_minute"]) == 3

    _key, token = create_api_key(db, "reader", now=datetime.now(UTC), scopes=["read"])
    db.commit()
    response = client.get(f"/api/v1/blasts/{blast_id}/report", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and response.get_json() == data
    assert client.get("/api/v1/blasts/999/report",
                      headers={"Authorization": f"Bearer {token}"}).status_code == 404
    result = runner.invoke(main, ["blasts", "report", str(blast_id), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == data
    text = runner.invoke(main, ["blasts", "report", str(blast_id)])
    assert "opened 1 (33.3%)" in text.output and BILAN in text.output

    make_user(db, "presse@onmt.example.org")
    db.commit()
    sign_in(client, "presse@onmt.example.org")
    assert f"/blasts/{blast_id}/report" in client.get(f"/blasts/{blast_id}").get_data(as_text=True)
    page = client.get(f"/blasts/{blast_id}/report")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Medias24" in html and "Karim Tazi" in html
    assert f'src="/blasts/{blast_id}/report/opens.svg"' in html
    for chart in ("deliveries", "opens", "outlets", "media_types"):
        svg = client.get(f"/blasts/{blast_id}/report/{chart}.svg")
        assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"
        assert svg.get_data(as_text=True).startswith("<svg") and "<script" not in svg.get_data(as_text=True)
    csv_text = client.get(f"/blasts/{blast_id}/report.csv").get_data(as_text=True)
    assert csv_text.splitlines()[1].startswith("total,,3,3,3,0,0,1,1,1")
    assert "karim@medias24.example.ma" in csv_text


def test_charts_read_in_french_and_english(db, smtp_settings, smtpd, client) -> None:  # type: ignore[no-untyped-def]
    """The chart titles follow the reader's language."""
    blast_id = _send(db, smtp_settings, track=False)
    report = blast_report(db, blast_id)
    assert "Ouvertures" in chart_svg(report, "opens", "fr")
    assert "Per outlet" in chart_svg(report, "outlets", "en")
    assert report.as_dict()["totals"]["opened"] == 0 and not report.track


@pytest.mark.skipif(not (shutil.which("pdftoppm") and shutil.which("pdftotext")),
                    reason="poppler-utils missing: run scripts/setup-system")
def test_report_as_pdf_has_the_title_figures_and_outlets(db, smtp_settings, smtpd, client,  # type: ignore[no-untyped-def]
                                                          artifacts):
    """The report PDF (French for a French-speaking user): the release title, the figures, the
    top outlets; its first page rendered to PNG among the test artifacts."""
    blast_id = _send(db, smtp_settings, track=True)
    _engage(db, smtp_settings, smtpd, client)
    make_user(db, "presse@onmt.example.org")
    db.commit()
    sign_in(client, "presse@onmt.example.org")
    response = client.get(f"/blasts/{blast_id}/report.pdf")
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    pdf_file = artifacts / "blast-report.pdf"
    pdf_file.write_bytes(response.data)
    text = subprocess.run(["pdftotext", "-enc", "UTF-8", str(pdf_file), "-"], check=True,
                          capture_output=True).stdout.decode()
    assert "Marrakech accueille" in text and "envoyés" in text
    assert "Medias24" in text and "ouverts (personnes)" in text
    for old in artifacts.glob("blast-report-*.png"):
        old.unlink()
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(pdf_file), str(artifacts / "blast-report")],
                   check=True)
    assert (artifacts / "blast-report-1.png").stat().st_size > 10_000
    assert int(subprocess.run(["pdfinfo", str(pdf_file)], check=True, capture_output=True).stdout
               .decode().split("Pages:")[1].split()[0]) <= 2
