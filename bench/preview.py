"""Latency of the web preview request (GET /releases/<id>/preview, logged in) through the Flask
test client on a fresh SQLite database holding the benchmark release: median and p95 in ms.

    python bench/preview.py --requests 200      # prints a JSON line
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

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))


def web_preview_latency(requests: int = 200, warmup: int = 5) -> dict[str, float]:
    import endtoend

    from service import create_app
    from service.accounts.users import create_user
    from service.config import Settings
    from service.db import make_engine, make_session_factory, session_scope, upgrade_schema

    with tempfile.TemporaryDirectory(prefix="bench-preview-") as folder:
        url = f"sqlite:///{Path(folder) / 'communique.db'}"
        engine = make_engine(url)
        upgrade_schema(engine)
        with session_scope(make_session_factory(engine)) as session:
            user = create_user(session, email="bench@onmt.example.org", password="bench-" + "p" * 20,
                               role="admin", now=datetime.now(UTC))
            user_id = user.id
        engine.dispose()
        release_id = endtoend._store_release(url)
        settings = Settings(env="test", database_url=url, instance_path=str(Path(folder) / "instance"),
                            secret_key="bench-" + "k" * 40, base_url="https://presse.onmt.example.org",
                            log_level="WARNING")
        app = create_app(settings)
        client = app.test_client()
        with client.session_transaction() as session:
            session["user_id"] = user_id
        timings = []
        try:
            for i in range(warmup + requests):
                started = time.perf_counter()
                response = client.get(f"/releases/{release_id}/preview")
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise endtoend.NotAvailable(f"GET /releases/{release_id}/preview: "
                                                f"{response.status_code}")
                if i >= warmup:
                    timings.append(elapsed)
        finally:
            app.extensions["communique"].engine.dispose()
    timings.sort()
    return {"web_median_ms": statistics.median(timings),
            "web_p95_ms": timings[min(len(timings) - 1, int(len(timings) * 0.95))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(web_preview_latency(args.requests)))


if __name__ == "__main__":
    main()
