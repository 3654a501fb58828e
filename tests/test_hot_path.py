"""The worker's shortcuts: the per-message ones give exactly what the plain code gives, and a
start imports only what sending needs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from zoneinfo import ZoneInfo

from service.rendering.prepare import _date_header


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


def test_a_worker_starts_without_the_web_or_contact_stacks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`communique worker` imports what sending needs and no more: Flask, the CSV import and the
    contact validators (langcodes, email-validator, pycountry) cost about 0.2 s of every start."""
    import os
    import subprocess
    import sys

    probe = ("import sys, service.cli as cli; cli.main.get_command(None, 'worker'); "
             "import service.delivery.worker, service.delivery.scheduler; "
             "print(sorted(m for m in ('flask', 'langcodes', 'email_validator', 'pycountry', "
             "'service.contacts.store', 'service.contacts.importing') if m in sys.modules))")
    env = {**os.environ, "COMMUNIQUE_INSTANCE_PATH": str(tmp_path)}
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                            timeout=60, check=True).stdout
    assert output.strip() == "[]"


def test_utf8_header_encoding_is_the_standard_librarys() -> None:
    """mime.header_encode_utf8 gives what Charset("utf-8").header_encode gives, B or Q form."""
    import random
    from email.charset import Charset

    from service.rendering.mime import header_encode_utf8

    names = ["Élodie Martin", "Hélène Aït-Ben Haddou", "محمد الإدريسي", "José Núñez", "ü", "a b_c=d?e",
             "Zoë O'Brien (Le Monde)", "日本語の名前", "😀 emoji", "É" * 40, "x" * 60 + "é"]
    rng = random.Random(7)
    alphabet = "abcdeé à_=?()\"'-.,ñüçاﻻ中😀\t"
    names += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 50))) for _ in range(500)]
    utf8 = Charset("utf-8")
    for name in names:
        assert header_encode_utf8(name) == utf8.header_encode(name), name
