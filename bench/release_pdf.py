"""WeasyPrint's time per release PDF: the French sample and an Arabic variant, rendered afresh
(no cache) `--runs` times each after one warm-up; also the first render in the process
(imports, fonts) and a cache hit.

    .venv/bin/python bench/release_pdf.py [--runs 10]
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
from service.rendering import pdf  # noqa: E402
from service.rendering.prepare import release_context  # noqa: E402

SAMPLES = ROOT.parent / "shared" / "samples" / "releases"
if not SAMPLES.is_dir():
    SAMPLES = ROOT / "service" / "demo" / "releases"
NOW = datetime(2022, 7, 5, 8, 0, tzinfo=UTC)
ARABIC_BODY = "\n\n".join(
    ["**الدار البيضاء، 6 يوليوز 2022** – يجتمع مندوبو المكتب الوطني المغربي للسياحة في الدار البيضاء "
     "لوضع خطة عمل ترويجية وتجارية للمواسم المقبلة."]
    + ["ستنطلق حملات ترويجية في الأسواق الرئيسية بشراكة مع شركات الطيران ووكالات الأسفار، "
       "وسيتم تعزيز الحضور الرقمي للوجهة المغربية لدى المهنيين والجمهور الواسع."] * 6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(env="test", database_url=f"sqlite:///{folder}/bench.db",
                            instance_path=f"{folder}/instance", secret_key="bench-" + "x" * 40)
        engine = make_engine(settings.database_url)
        upgrade_schema(engine)
        session = make_session_factory(engine)()
        french = releases.create_release(
            session, settings, body=(SAMPLES / "onmt-task-force-2022-07-06.md").read_text(encoding="utf-8"),
            now=NOW)
        arabic = releases.create_release(
            session, settings, title="المكتب الوطني المغربي للسياحة يعبئ فريق عمله عبر العالم",
            body=ARABIC_BODY, language="ar", highlights=["اجتماع جميع المندوبين بالخارج"],
            variant_of=french.id, now=NOW)
        session.commit()
        started = time.perf_counter()
        pdf.render_pdf(pdf.print_html(release_context(french, settings, now=None)))
        print(f"first render in the process (import, fonts): {(time.perf_counter() - started) * 1000:.0f} ms")
        for release in (french, arabic):
            context = release_context(release, settings, now=None)
            seconds = []
            for _ in range(args.runs):
                started = time.perf_counter()
                data = pdf.render_pdf(pdf.print_html(context))
                seconds.append(time.perf_counter() - started)
            median_ms = statistics.median(seconds) * 1000
            print(f"{release.language}: {len(data) // 1024} KB; median {median_ms:.0f} ms,"
                  f" max {max(seconds) * 1000:.0f} ms over {args.runs} renders")
        pdf.release_pdf(french, settings, release_context(french, settings, now=None), now=None)
        started = time.perf_counter()
        pdf.release_pdf(french, settings, release_context(french, settings, now=None), now=None)
        print(f"cache hit (fr, with release_context): {(time.perf_counter() - started) * 1000:.1f} ms")
        session.close()
        engine.dispose()


if __name__ == "__main__":
    main()
