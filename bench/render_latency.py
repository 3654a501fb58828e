"""Rendering latency: median and p95 of `render_bytes` for one personal message once the
release is prepared, and of `prepare_release` itself (both samples, a fresh SQLite database).

    .venv/bin/python bench/render_latency.py [--messages 5000] [--prepares 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
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
from service.rendering.prepare import Recipient, new_message_id, prepare_release  # noqa: E402

SAMPLES = ROOT.parent / "shared" / "samples" / "releases"
NOW = datetime(2022, 7, 5, 8, 0, tzinfo=UTC)


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_us": round(statistics.median(ordered) * 1e6, 1),
            "p95_us": round(ordered[int(len(ordered) * 0.95) - 1] * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--prepares", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="render-bench-")
    settings = Settings(env="test", database_url=f"sqlite:///{folder}/bench.db", instance_path=folder,
                        secret_key="bench-" + "x" * 40, base_url="https://press.example.org",
                        mail_from="Office National Marocain du Tourisme <presse@onmt.example.org>")
    engine = make_engine(settings.database_url)
    upgrade_schema(engine)
    session = make_session_factory(engine)()
    results = {}
    for path in sorted(SAMPLES.glob("*.md")):
        release = releases.create_release(session, settings, body=path.read_text(encoding="utf-8"),
                                          now=NOW)
        session.commit()
        prepare_times = []
        for _ in range(args.prepares):
            session.expire_all()
            start = time.perf_counter()
            prepared = prepare_release(session, release.id, settings)
            prepare_times.append(time.perf_counter() - start)
        render_times = []
        size = 0
        for index in range(args.messages):
            recipient = Recipient(email=f"journaliste{index}@media.example", contact_id=index + 1,
                                  civility="Mme" if index % 2 else "M.", first_name="Élodie",
                                  last_name=f"Martin{index}", outlet="Le Monde", language="fr")
            message_id = new_message_id(settings)
            start = time.perf_counter()
            raw = prepared.render_bytes(recipient, message_id=message_id, now=NOW, blast_id=1)
            render_times.append(time.perf_counter() - start)
            size = len(raw)
        results[path.stem] = {"message_bytes": size, "render_bytes": _percentiles(render_times),
                              "prepare_release": _percentiles(prepare_times)}
    print("| sample | message size | render_bytes median / p95 (µs) | prepare_release median / p95 (µs) |")
    print("|---|---:|---:|---:|")
    for name, row in results.items():
        print(f"| {name} | {row['message_bytes']} B | {row['render_bytes']['median_us']} / "
              f"{row['render_bytes']['p95_us']} | {row['prepare_release']['median_us']} / "
              f"{row['prepare_release']['p95_us']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    session.close()
    engine.dispose()


if __name__ == "__main__":
    main()
