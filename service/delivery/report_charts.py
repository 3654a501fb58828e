"""The blast report's charts as SVG, drawn on the server with pygal: no script in them (pygal's
tooltips script is left out: the content security policy allows none, and a printed chart has
no use for it), served as images."""

from __future__ import annotations

import re
import sys
from types import ModuleType
from typing import Any

from service.delivery.report import Report

# pygal always writes its configuration as a <script> in <defs>, even with js=[]: taken out.
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>|<script\b[^>]*/>", re.DOTALL)

CHARTS = ("deliveries", "opens", "outlets", "media_types")
LABELS = {
    "en": {"deliveries": "Deliveries per minute", "opens": "People's opens, first 72 hours",
           "outlets": "Per outlet", "media_types": "Per media type", "delivered": "Delivered",
           "opened": "Opened (people)", "clicked": "Clicked", "hour": "Hours after sending",
           "none": "(none)"},
    "fr": {"deliveries": "Remises par minute", "opens": "Ouvertures (personnes), 72 premières heures",
           "outlets": "Par média", "media_types": "Par type de média", "delivered": "Remis",
           "opened": "Ouverts (personnes)", "clicked": "Cliqués", "hour": "Heures après l'envoi",
           "none": "(aucun)"},
}
_MAX_BARS = 15


def _pygal() -> ModuleType:
    """pygal, imported here (the worker and the CLI never draw charts), without the import hook
    it adds for its map plugins (unused here): the hook has no find_spec, so Python 3.11 warns
    (ImportWarning) on every later import, which the tests turn into errors."""
    import pygal

    sys.meta_path[:] = [finder for finder in sys.meta_path
                        if type(finder).__module__ != "pygal" or type(finder).__name__ != "PluginImportFixer"]
    return pygal


def _config(title: str) -> Any:
    pygal = _pygal()
    return pygal.Config(js=[], disable_xml_declaration=True, title=title, width=800, height=360,
                        show_legend=True, legend_at_bottom=True, explicit_size=False,
                        style=pygal.style.CleanStyle, truncate_label=-1, print_values=False)


def chart_svg(report: Report, name: str, language: str = "en") -> str:
    """One chart of the report as an SVG document; KeyError for an unknown chart."""
    pygal = _pygal()

    words = LABELS.get(language, LABELS["en"])
    if name == "deliveries":
        chart = pygal.Bar(_config(words["deliveries"]), x_label_rotation=30,
                          show_minor_x_labels=False)
        minutes = report.deliveries_per_minute
        chart.x_labels = [minute.strftime("%H:%M") for minute, _ in minutes]
        chart.x_labels_major_every = max(1, len(minutes) // 12)
        chart.add(words["delivered"], [count for _, count in minutes])
    elif name == "opens":
        chart = pygal.Bar(_config(words["opens"]), x_title=words["hour"], show_minor_x_labels=False)
        chart.x_labels = [str(hour) for hour in range(len(report.opens_per_hour))]
        chart.x_labels_major_every = 6
        chart.add(words["opened"], report.opens_per_hour)
    elif name in ("outlets", "media_types"):
        group = report.groups["outlet" if name == "outlets" else "media_type"]
        values = list(group.items())[:_MAX_BARS]
        chart = pygal.HorizontalBar(_config(words[name]))
        chart.x_labels = [value or words["none"] for value, _ in values]
        for key in ("delivered", "opened", "clicked"):
            chart.add(words[key], [getattr(figures, key) for _, figures in values])
    else:
        raise KeyError(name)
    return _SCRIPT.sub("", str(chart.render(is_unicode=True)))
