"""The per-message cost of engagement tracking: `render_bytes(wire=True)` of the same recipients
with a release prepared without and with tracking, interleaved rounds (the machine drifts; read
the ratio), for each sample release. Tracking adds one HMAC (the token) and the few short lines
that carry it (pixel, each rewritten href on a line of its own), encoded per message.

    .venv/bin/python bench/tracking_cost.py [--messages 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.config import Settings  # noqa: E402
from service.db import make_engine, make_session_factory, upgrade_schema  # noqa: E402
from service.releases import store as releases  # noqa: E402
from service.rendering.prepare import Recipient, prepare_release  # noqa: E402

SAMPLES = ROOT.parent / "shared" / "samples" / "releases"
NOW = datetime(2022, 7, 5, 8, 0, tzinfo=UTC)
WORKER_BUDGET_US = 1e6 / 3000  # the worker sends ~3,000 messages a second


def _run(prepared, recipients: list[Recipient]) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for index, recipient in enumerate(recipients):
        prepared.render_bytes(recipient, message_id=f"<{index}@bench.example>", now=NOW,
                              blast_id=1, wire=True)
    return (time.perf_counter() - start) / len(recipients) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="tracking-bench-")
    settings = Settings(env="test", database_url=f"sqlite:///{folder}/bench.db", instance_path=folder,
                        secret_key="bench-" + "x" * 40, base_url="https://press.example.org",
                        mail_from="Office National Marocain du Tourisme <presse@onmt.example.org>")
    engine = make_engine(settings.database_url)
    upgrade_schema(engine)
    session = make_session_factory(engine)()
    recipients = [Recipient(email=f"journaliste{i}@media.example", contact_id=i + 1,
                            civility="Mme" if i % 2 else "M.", first_name="Élodie",
                            last_name=f"Martin{i}", outlet="Le Monde", language="fr")
                  for i in range(args.messages)]
    print("| sample | size off / on | µs/msg off | µs/msg on | on/off | extra µs as % of the "
          "worker's 333 µs/msg |")
    print("|---|---:|---:|---:|---:|---:|")
    for path in sorted(SAMPLES.glob("*.md")):
        release = releases.create_release(session, settings, body=path.read_text(encoding="utf-8"),
                                          now=NOW)
        session.commit()
        off = prepare_release(session, release.id, settings)
        on = prepare_release(session, release.id, settings, track=True)
        sizes = [len(p.render_bytes(recipients[0], message_id="<0@b.example>", now=NOW,
                                    blast_id=1)) for p in (off, on)]
        times: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            times["off"].append(_run(off, recipients))
            times["on"].append(_run(on, recipients))
        median_off, median_on = statistics.median(times["off"]), statistics.median(times["on"])
        print(f"| {path.stem} | {sizes[0]} / {sizes[1]} B | {median_off:.1f} | {median_on:.1f} | "
              f"{median_on / median_off:.2f} | {(median_on - median_off) / WORKER_BUDGET_US:.1%} |")
    session.close()
    engine.dispose()


if __name__ == "__main__":
    main()
