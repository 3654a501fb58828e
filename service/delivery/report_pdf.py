"""The blast report as a PDF (one or two pages): the release title, the figures, the charts and
the top outlets, through the same WeasyPrint path as the release PDF (rendering/pdf.py)."""

from __future__ import annotations

import base64

import jinja2

from service.delivery.report import Report
from service.delivery.report_charts import chart_svg
from service.errors import RenderError
from service.rendering.pdf import PAGES, render_pdf

WORDS = {
    "en": {"report": "Blast report", "sent": "sent", "delivered": "delivered", "bounced": "bounced",
           "opened": "opened (people)", "machines": "opened by machines only", "clicked": "clicked",
           "outlets": "Top outlets", "outlet": "Outlet", "links": "Top links"},
    "fr": {"report": "Rapport d'envoi", "sent": "envoyés", "delivered": "remis", "bounced": "rejetés",
           "opened": "ouverts (personnes)", "machines": "ouverts par des machines seulement",
           "clicked": "cliqués", "outlets": "Principaux médias", "outlet": "Média",
           "links": "Liens les plus cliqués"},
}
_TOP_OUTLETS = 15
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(PAGES), autoescape=True,
                          undefined=jinja2.StrictUndefined, auto_reload=False)


def report_pdf(report: Report, language: str = "en") -> bytes:
    language = language if language in WORDS else "en"
    charts = ["data:image/svg+xml;base64,"
              + base64.b64encode(chart_svg(report, name, language).encode("utf-8")).decode("ascii")
              for name in ("deliveries", "opens", "outlets", "media_types")]
    try:
        source = _env.get_template("reports/report_print.html").render(
            report=report, words=WORDS[language], language=language, charts=charts,
            outlets=list(report.groups["outlet"].items())[:_TOP_OUTLETS])
    except jinja2.TemplateError as exc:
        raise RenderError(f"the report layout cannot be rendered: {exc}") from exc
    return render_pdf(source)
