"""One command for every benchmark: the wire limit, the Python ceiling, a peer, Communiqué end to
end (one worker on SQLite, two on PostgreSQL), the same SQLite blast through a delay line of
10 ms each way (bench/delay_proxy.py: a 20 ms round trip, as to a real relay) with 8 and 32
connections, CSV import and preview latency, all with the same ~11 KB French release and the same
sink on 127.0.0.1. Prints a Markdown table (medians of --runs interleaved runs, with ratios to the
limit and to the ceiling; the delayed rows to their ideal, connections ÷ round trip) and writes
the raw numbers to bench/results/<time>.json.

    .venv/bin/python bench/run.py                      # N = 20,000, 3 runs
    .venv/bin/python bench/run.py --n 2000 --runs 1 --import-rows 20000   # a quick check
    .venv/bin/python bench/run.py --rows delay8,delay32 --n 3000         # only those rows

A row whose code is missing or fails is reported as "not available" with the reason."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import delay_proxy  # noqa: E402
import endtoend  # noqa: E402
import peers  # noqa: E402
import sinks  # noqa: E402
from release import build_message, load_release  # noqa: E402

RESULTS = BENCH / "results"
LIMIT, CEILING = "limit", "ceiling"


@dataclass
class Row:
    key: str
    label: str
    unit: str  # "msgs/s", "rows/s", "ms"
    values: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)
    problem: str | None = None
    note: str = ""
    ideal: float | None = None  # msgs/s of one round trip per message (the delayed rows)

    def add(self, value: float, **extra: float) -> None:
        self.values.append(value)
        for name, number in extra.items():
            self.extra.setdefault(name, []).append(number)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def median_of(self, name: str) -> float | None:
        numbers = self.extra.get(name)
        return statistics.median(numbers) if numbers else None


def _attempt(row: Row, measure: Callable[[], None]) -> None:
    """Run one measurement; a failure makes the row "not available", never stops the others."""
    if row.problem is not None:
        return
    try:
        measure()
    except endtoend.NotAvailable as exc:
        row.problem = str(exc)
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        row.problem = f"{type(exc).__name__}: {str(exc)[:160]}"


def _script_output(name: str, args: list[str], timeout: float) -> str:
    path = BENCH / name
    if not path.exists():
        raise endtoend.NotAvailable(f"bench/{name} is not there yet")
    env = {k: v for k, v in os.environ.items() if k != "COMMUNIQUE_TEST_POSTGRES_URL"}
    result = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True,
                            timeout=timeout, env=env, cwd=BENCH.parent)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise endtoend.NotAvailable(f"bench/{name} failed: {last[:160]}")
    return result.stdout


def measure_import(row: Row, rows: int, timeout: float) -> None:
    """bench/import_contacts.py (the contacts engineer's) on a fresh SQLite database."""
    output = _script_output("import_contacts.py", ["--rows", str(rows)], timeout)
    match = re.search(r"sqlite(?:, new list)?: (\d+) rows in ([\d.]+) s", output)
    if match is None:
        raise endtoend.NotAvailable(f"unexpected output from bench/import_contacts.py: {output[-120:]!r}")
    peak = re.search(r"sqlite(?:, new list)?:.*peak RSS so far (\d+) MB", output)
    row.add(int(match.group(1)) / float(match.group(2)), seconds=float(match.group(2)),
            **({"peak_rss_mb": float(peak.group(1))} if peak else {}))


def measure_render(row: Row, messages: int, timeout: float) -> None:
    """bench/render_latency.py (the rendering engineer's): median and p95 of rendering one personal
    message from the prepared release, read from its --json file (microseconds per sample release;
    the first sample is the one our release is built from)."""
    with tempfile.TemporaryDirectory(prefix="bench-render-") as folder:
        path = Path(folder) / "render.json"
        _script_output("render_latency.py", ["--messages", str(messages), "--json", str(path)], timeout)
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            first = data[sorted(data)[0]]["render_bytes"]
            median_ms, p95_ms = float(first["median_us"]) / 1000, float(first["p95_us"]) / 1000
        except (OSError, KeyError, IndexError, ValueError) as exc:
            raise endtoend.NotAvailable(f"unexpected bench/render_latency.py JSON: {exc!r}") from exc
    row.add(median_ms, p95=p95_ms)


def measure_web_preview(row: Row, requests: int, timeout: float) -> None:
    """bench/preview.py: GET /releases/<id>/preview through the Flask test client."""
    output = _script_output("preview.py", ["--requests", str(requests)], timeout)
    data = json.loads(output.strip().splitlines()[-1])
    row.add(float(data["web_median_ms"]), p95=float(data["web_p95_ms"]))


def _delay_key(connections: int) -> str:
    return f"delay{connections}"


def _chained_key(connections: int) -> str:
    return f"chained{connections}"


def run(args: argparse.Namespace) -> dict[str, Row]:
    n, sessions, connections = args.n, args.sessions, args.connections
    endtoend.CONNECTIONS = connections
    mailmerge_n = min(n, args.mailmerge_n or n)
    size = len(build_message(load_release(), "Hélène", "journaliste@redaction.example"))
    rows = {row.key: row for row in [
        Row(LIMIT, f"Postfix smtp-source → smtp-sink, {sessions} connections (the wire limit)", "msgs/s"),
        Row(CEILING, f"bare aiosmtplib loop, pre-built bytes, {connections} connections (Python ceiling)",
            "msgs/s"),
        Row("mailmerge", f"mailmerge CLI (PyPI), {mailmerge_n:,} messages", "msgs/s"),
        Row("sqlite", "Communiqué end to end, 1 worker, SQLite", "msgs/s"),
        Row("postgres1", "Communiqué end to end, 1 worker, PostgreSQL", "msgs/s"),
        Row("postgres", f"Communiqué end to end, {args.pg_workers} workers, PostgreSQL", "msgs/s"),
        Row("import", f"CSV import, {args.import_rows:,} rows (bench/import_contacts.py)", "rows/s"),
        Row("render", "preview: one personal message rendered (bench/render_latency.py)", "ms"),
        Row("web", "preview: GET /releases/<id>/preview, Flask test client (bench/preview.py)", "ms"),
    ]}
    round_trip = 2 * args.delay
    delay_n = args.delay_n or n
    for pool in args.delay_connections:
        row = rows[_delay_key(pool)] = Row(
            _delay_key(pool), f"Communiqué end to end, 1 worker, SQLite, {pool} connections, "
            f"{round_trip * 1000:.0f} ms round trip (bench/delay_proxy.py), {delay_n:,} messages", "msgs/s")
        row.ideal = pool / round_trip
        row.note = (f"ideal {pool} ÷ {round_trip * 1000:.0f} ms = {row.ideal:,.0f} msgs/s, "
                    f"target ≥ 0.8 × = {0.8 * row.ideal:,.0f}")
        loop_row = rows[_chained_key(pool)] = Row(
            _chained_key(pool), f"bare chained-pipelining loop, pre-built bytes, {pool} connections, "
            f"{round_trip * 1000:.0f} ms round trip (what the delay line allows)", "msgs/s")
        loop_row.ideal = row.ideal
        loop_row.note = "one round trip per message, no database (bench/peers.py chained)"
    rows = {key: rows[key] for key in sorted(rows, key=lambda key: (key in ("import", "render", "web")))}
    for key in ("sqlite", "postgres1", "postgres"):
        rows[key].note = f"blast create + worker --until-idle, {connections} connections per worker"
    if args.rows:
        unknown = set(args.rows) - rows.keys()
        if unknown:
            raise SystemExit(f"unknown rows: {', '.join(sorted(unknown))} (rows: {', '.join(rows)})")
        rows = {key: row for key, row in rows.items() if key in args.rows}
    budget = args.timeout
    with sinks.running_sink() as sink, _proxy_if(rows, sink.port, args.delay) as proxy:
        if sink.kind != "smtp-sink" and LIMIT in rows:
            rows[LIMIT].problem = "Postfix could not be fetched (apt-get download postfix); aiosmtpd sink"
        measured_trip = delay_proxy.round_trip(proxy.port) if proxy is not None else None
        skip = Row("skip", "", "")  # what an unselected row measures into: nothing
        skip.problem = "not selected"

        def row_of(key: str) -> Row:
            return rows.get(key, skip)

        for run_index in range(args.runs):
            print(f"run {run_index + 1}/{args.runs} …", file=sys.stderr)
            _attempt(row_of(LIMIT), lambda: rows[LIMIT].add(
                n / sinks.smtp_source(sink.port, n, sessions, size, budget)))
            _attempt(row_of(CEILING), lambda: rows[CEILING].add(
                n / peers.ceiling(sink.port, n, connections, budget)))
            _attempt(row_of("mailmerge"), lambda: rows["mailmerge"].add(
                mailmerge_n / peers.mailmerge(sink.port, mailmerge_n, budget)))

            def blast(row: Row, result: endtoend.Result) -> None:
                row.add(result.messages / result.seconds,
                        worker_rate=result.messages / result.worker_seconds,
                        peak_rss_mb=result.peak_rss_mb, create_seconds=result.create_seconds,
                        cpu_us=result.cpu_seconds / result.messages * 1e6,
                        busy_cores=result.busy_cores)

            _attempt(row_of("sqlite"), lambda: blast(rows["sqlite"], endtoend.sqlite_blast(
                sink.port, n, budget)))
            for key, workers in (("postgres1", 1), ("postgres", args.pg_workers)):
                if key not in rows:
                    continue
                if args.postgres_url:
                    _attempt(rows[key], lambda key=key, workers=workers: blast(  # type: ignore[misc]
                        rows[key], endtoend.postgres_blast(args.postgres_url, sink.port, n, workers,
                                                           budget)))
                else:
                    rows[key].problem = "no PostgreSQL URL (--postgres-url or COMMUNIQUE_TEST_POSTGRES_URL)"
            for pool in args.delay_connections:
                key = _delay_key(pool)
                if proxy is None:
                    continue
                # The worker's own settings: its pool, and as many connections to one domain (the
                # bench's 97 domains would otherwise hold it at COMMUNIQUE_DOMAIN_CONCURRENCY).
                pool_env = {"COMMUNIQUE_SMTP_CONNECTIONS": str(pool),
                            "COMMUNIQUE_DOMAIN_CONCURRENCY": str(pool)}
                _attempt(row_of(key), lambda key=key, pool_env=pool_env: blast(  # type: ignore[misc]
                    rows[key], endtoend.sqlite_blast(proxy.port, delay_n, budget, pool_env)))
                if measured_trip is not None and key in rows:
                    rows[key].extra.setdefault("measured_round_trip_ms", []).append(measured_trip * 1000)
                if _chained_key(pool) in rows:
                    _attempt(rows[_chained_key(pool)], lambda pool=pool: rows[_chained_key(pool)].add(  # type: ignore[misc]
                        delay_n / peers.ceiling(proxy.port, delay_n, pool, budget, what="chained")))
    for _run in range(args.runs):
        _attempt(row_of("import"), lambda: measure_import(rows["import"], args.import_rows, budget))
        _attempt(row_of("render"), lambda: measure_render(rows["render"], args.render_messages, budget))
        _attempt(row_of("web"), lambda: measure_web_preview(rows["web"], args.preview_requests, budget))
    return rows


@contextmanager
def _proxy_if(rows: dict[str, Row], port: int, delay: float) -> Iterator[delay_proxy.Proxy | None]:
    """The delay line in front of the sink, while the bench runs, when a delayed row is wanted."""
    if not any(row.ideal for row in rows.values()):
        yield None
        return
    with delay_proxy.running_proxy(port, delay) as proxy:
        yield proxy


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    return f"{value:,.2f}" if unit == "ms" else f"{value:,.0f}"


def table(rows: dict[str, Row], runs: int) -> str:
    limit = rows[LIMIT].median if LIMIT in rows else None
    ceiling = rows[CEILING].median if CEILING in rows else None
    lines = [f"| measurement (median of {runs}) | value | × wire limit | × Python ceiling | peak RSS "
             "| notes |",
             "|---|---:|---:|---:|---:|---|"]
    for row in rows.values():
        if row.problem is not None and row.median is None:
            lines.append(f"| {row.label} | not available | | | | {row.problem} |")
            continue
        value = row.median
        versus_limit = versus_ceiling = ""
        if row.unit == "msgs/s" and value is not None and not row.ideal:
            versus_limit = f"{value / limit:.2f}" if limit else ""
            versus_ceiling = f"{value / ceiling:.2f}" if ceiling else ""
        rss = row.median_of("peak_rss_mb")
        notes = [row.note] if row.note else []
        if row.ideal and value is not None and row.median_of("worker_rate") is None:
            notes.append(f"× ideal {value / row.ideal:.2f}")
        elif row.ideal and value is not None:
            alone = row.median_of("worker_rate") or value
            notes.append(f"× ideal {value / row.ideal:.2f} end to end, {alone / row.ideal:.2f} worker alone")
            if row.median_of("measured_round_trip_ms"):
                notes.append(f"round trip measured through the proxy "
                             f"{row.median_of('measured_round_trip_ms'):.1f} ms (SMTP NOOP)")
        if row.median_of("worker_rate") is not None:
            notes.append(f"worker alone {row.median_of('worker_rate'):,.0f} msgs/s, "
                         f"worker CPU {row.median_of('cpu_us'):,.0f} µs/msg, "
                         f"machine {row.median_of('busy_cores') or 0:.2f} of {os.cpu_count()} cores busy")
        if row.median_of("p95") is not None:
            notes.append(f"p95 {row.median_of('p95'):.2f} ms")
        if row.problem:
            notes.append(f"some runs failed: {row.problem}")
        lines.append(f"| {row.label} | {_number(value, row.unit)} {row.unit} | {versus_limit} | "
                     f"{versus_ceiling} | {f'{rss:.0f} MB' if rss else ''} | {'; '.join(notes)} |")
    return "\n".join(lines)


def ratios(rows: dict[str, Row]) -> str:
    """The issue's targets as ratios of medians of the same run (end to end, and worker alone)."""
    def median(key: str, name: str | None = None) -> float | None:
        if key not in rows:
            return None
        return rows[key].median if name is None else rows[key].median_of(name)

    lines = []
    for label, (top, bottom), target in (
            ("1 worker (SQLite) / bare aiosmtplib loop", ("sqlite", CEILING), "≥ 0.8"),
            ("1 worker (SQLite) / smtp-source", ("sqlite", LIMIT), "≥ 0.2"),
            ("1 worker (SQLite) / mailmerge", ("sqlite", "mailmerge"), "≥ 10"),
            ("2 workers (PostgreSQL) / 1 worker (PostgreSQL)", ("postgres", "postgres1"), "≥ 1.7"),
            ("2 workers (PostgreSQL) / 1 worker (SQLite)", ("postgres", "sqlite"), "≥ 1.7")):
        a, b = median(top), median(bottom)
        if not (a and b):
            continue
        line = f"- {label}: {a / b:.2f} end to end"
        a_alone, b_alone = median(top, "worker_rate"), median(bottom, "worker_rate")
        if a_alone:
            line += f", {a_alone / (b_alone or b):.2f} worker alone"
        lines.append(line + f" (target {target})")
    for row in rows.values():
        if row.ideal and row.median:
            alone = row.median_of("worker_rate") or row.median
            if row.key.startswith("chained"):
                lines.append(f"- {row.label.split(' (')[0]} / (connections ÷ round trip): "
                             f"{row.median / row.ideal:.2f}")
                continue
            lines.append(f"- {row.label.split(' (')[0]} / (connections ÷ round trip = {row.ideal:,.0f} "
                         f"msgs/s): {row.median / row.ideal:.2f} end to end, {alone / row.ideal:.2f} "
                         f"worker alone (target ≥ 0.8)")
            loop = median(row.key.replace("delay", "chained"))
            if loop:
                lines.append(f"  - the same / bare chained loop through the same delay line: "
                             f"{row.median / loop:.2f} end to end, {alone / loop:.2f} worker alone")
    busy = median("postgres1", "busy_cores")
    if busy:
        # Two workers can use at most every core: if one worker (with its database backends, the
        # sink and the kernel) already keeps `busy` cores busy, two cannot go faster than this.
        lines.append(f"- bound on 2 workers / 1 worker on this machine: {os.cpu_count()} cores / "
                     f"{busy:.2f} cores busy with 1 worker (PostgreSQL) = {(os.cpu_count() or 1) / busy:.2f}")
    return "\n".join(lines)


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="messages per throughput run")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs; medians are shown")
    parser.add_argument("--sessions", type=int, default=16, help="smtp-source's SMTP sessions")
    parser.add_argument("--connections", type=int, default=endtoend.CONNECTIONS,
                        help="SMTP connections of the bare aiosmtplib loop and of Communiqué's worker")
    parser.add_argument("--mailmerge-n", type=int, default=0,
                        help="messages for mailmerge; default N, as the issue asks (at ~300/s a "
                             "minute per run at N = 20,000; fewer makes its start-up weigh more)")
    parser.add_argument("--pg-workers", type=int, default=2)
    parser.add_argument("--postgres-url", default=os.environ.get("COMMUNIQUE_TEST_POSTGRES_URL", ""))
    parser.add_argument("--import-rows", type=int, default=100_000)
    parser.add_argument("--preview-requests", type=int, default=200)
    parser.add_argument("--render-messages", type=int, default=5000)
    parser.add_argument("--delay", type=float, default=0.010,
                        help="seconds the delay proxy adds in each direction (round trip = twice)")
    parser.add_argument("--delay-connections", type=_numbers, default=[8, 32],
                        help="worker pool sizes of the delayed rows, comma-separated")
    parser.add_argument("--delay-n", type=int, default=0,
                        help="messages of the delayed rows; default N (at 400/s, 50 s per run at "
                             "N = 20,000 with 8 connections)")
    parser.add_argument("--rows", type=lambda text: [key.strip() for key in text.split(",") if key.strip()],
                        default=[], help="only these rows, comma-separated keys: limit, ceiling, "
                                         "mailmerge, sqlite, postgres1, postgres, delay8, chained8, "
                                         "delay32, chained32, "
                                         "import, render, web (default: all)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed to each process")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = run(args)
    markdown = table(rows, args.runs) + "\n\n" + ratios(rows)
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps({
        "at": stamp, "arguments": vars(args), "seconds": time.perf_counter() - started,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average": os.getloadavg(), "platform": platform.platform()},
        "message_bytes": len(build_message(load_release(), "Hélène", "journaliste@redaction.example")),
        "rows": {key: {"label": row.label, "unit": row.unit, "median": row.median,
                       "values": row.values, "extra": row.extra, "problem": row.problem,
                       **({"ideal": row.ideal} if row.ideal else {})}
                 for key, row in rows.items()},
        "table": markdown}, indent=2, ensure_ascii=False))
    print(f"\nraw numbers: {path.relative_to(BENCH.parent)}", file=sys.stderr)


if __name__ == "__main__":
    main()
