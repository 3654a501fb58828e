"""The worker's per-message shortcuts give exactly what the plain code gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from zoneinfo import ZoneInfo

from service.rendering import _date_header


def test_date_header_is_format_datetime_for_every_instant_and_zone() -> None:
    """The remembered Date header equals email.utils.format_datetime across seconds, zones and
    naive times, in any order."""
    start = datetime(2026, 3, 29, 0, 59, 59, 900_000, tzinfo=UTC)
    casablanca, paris = ZoneInfo("Africa/Casablanca"), ZoneInfo("Europe/Paris")
    moments = []
    for step in range(0, 3000, 70):
        moment = start + timedelta(milliseconds=step)
        moments += [moment, moment.astimezone(paris), moment.astimezone(casablanca),
                    moment.replace(tzinfo=None), moment]
    for moment in moments + moments[::-1]:
        assert _date_header(moment) == format_datetime(moment)
