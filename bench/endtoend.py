"""Communiqué end to end, through its own CLI as an operator would run it: a fresh database,
N contacts imported, the release stored, a blast created, `communique worker --until-idle` timed
(one process on SQLite, or several on a fresh PostgreSQL schema), peak RSS of each worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from release import SENDER, load_release, write_contacts  # noqa: E402

COMMUNIQUE = str(Path(sys.executable).parent / "communique")
# The worker's pool for the local sink (bench/run.py --connections; the bare loop gets the same).
# Each connection waits for its previous result to be recorded before the next DATA, so the pool
# also sets the size of the recorder's group commits: 64 keeps both busy (docs/operations.md).
CONNECTIONS = 64


class NotAvailable(Exception):
    """The code this row measures is not there (yet), or failed: reported, never a crash."""


@dataclass
class Result:
    messages: int
    create_seconds: float  # `blasts create` (audience expansion, and the ledger if it fills it)
    worker_seconds: float  # first worker start to last worker exit
    peak_rss_mb: float  # the largest worker's peak resident set
    sent: int
    cpu_seconds: float = 0.0  # user + system time of all workers
    sys_seconds: float = 0.0  # of which system time
    busy_cores: float = 0.0  # the whole machine while the workers ran (workers, database, sink, …)

    @property
    def seconds(self) -> float:
        return self.create_seconds + self.worker_seconds


def _environ(database_url: str, folder: Path, port: int) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("COMMUNIQUE_")}
    return {**keep,
            "COMMUNIQUE_ENV": "development",
            "COMMUNIQUE_DATABASE_URL": database_url,
            "COMMUNIQUE_INSTANCE_PATH": str(folder / "instance"),
            "COMMUNIQUE_SECRET_KEY": "bench-" + "k" * 40,
            "COMMUNIQUE_BASE_URL": "https://presse.onmt.example.org",
            "COMMUNIQUE_MAIL_FROM": SENDER,
            "COMMUNIQUE_SMTP_HOST": "127.0.0.1",
            "COMMUNIQUE_SMTP_PORT": str(port),
            "COMMUNIQUE_SMTP_CONNECTIONS": str(CONNECTIONS),
            "COMMUNIQUE_DOMAIN_CONCURRENCY": str(CONNECTIONS),
            "COMMUNIQUE_WORKER_POLL_SECONDS": "0.1",
            "COMMUNIQUE_LOG_LEVEL": "WARNING"}


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    try:
        result = subprocess.run([COMMUNIQUE, *args], env=env, cwd=cwd, capture_output=True,
                                text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NotAvailable(f"`communique {args[0]}`: {exc}") from exc
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        raise NotAvailable(f"`communique {' '.join(args[:2])}`: {last[:160]}")
    return result.stdout


def _last_json(output: str) -> dict:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    raise NotAvailable(f"no JSON in the output: {output[-160:]!r}")


def _store_release(database_url: str) -> int:
    """No `communique releases` command is needed for this: the row the web form would write."""
    from service.db import make_engine, make_session_factory, session_scope
    from service.models import Release, ReleaseStatus

    data = load_release()
    engine = make_engine(database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            release = Release(slug=f"bench-{uuid.uuid4().hex[:8]}", language="fr",
                              status=ReleaseStatus.ready, kicker=str(data["kicker"]),
                              title=str(data["title"]), highlights=list(data["highlights"]),  # type: ignore[call-overload]
                              dateline=str(data["dateline"]), body=str(data["body"]),
                              about="L'Office National Marocain du Tourisme (ONMT) promeut le Maroc.",
                              press_contacts=[{"name": "Service de presse",
                                               "email": "presse@onmt.example.org"}],
                              created_at=datetime.now(UTC))
            session.add(release)
            session.flush()
            return release.id
    finally:
        engine.dispose()


def _count_sent(database_url: str) -> int:
    from sqlalchemy import func, select

    from service.db import make_engine
    from service.models import MessageStatus, QueuedMessage

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(QueuedMessage)
                                         .where(QueuedMessage.status == MessageStatus.sent)) or 0)
    finally:
        engine.dispose()


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat (Linux)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _run_workers(env: dict[str, str], cwd: Path, processes: int,
                 timeout: float) -> tuple[float, float, float, float, float]:
    """Start `processes` x `communique worker --until-idle`; seconds until the last exits, the
    largest peak RSS (os.wait4 gives each child's own ru_maxrss), their CPU and system seconds,
    and how many of the machine's cores were busy meanwhile (everything on it, not only ours)."""
    ticks_before = _cpu_ticks()
    started = time.perf_counter()
    children = [subprocess.Popen([COMMUNIQUE, "worker", "--until-idle"], env=env, cwd=cwd,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for _ in range(processes)]
    peak_kb, cpu, system, failures = 0, 0.0, 0.0, []
    deadline = time.monotonic() + timeout
    try:
        for child in children:
            while True:
                pid, status, usage = os.wait4(child.pid, os.WNOHANG)
                if pid:
                    child.returncode = os.waitstatus_to_exitcode(status)
                    peak_kb = max(peak_kb, usage.ru_maxrss)
                    cpu += usage.ru_utime + usage.ru_stime
                    system += usage.ru_stime
                    if child.returncode != 0:
                        failures.append((child.stderr.read().decode(errors="replace")  # type: ignore[union-attr]
                                         .strip().splitlines() or ["?"])[-1][:160])
                    break
                if time.monotonic() > deadline:
                    raise NotAvailable(f"worker still running after {timeout:.0f} s")
                time.sleep(0.01)
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                child.wait(5)
            if child.stderr is not None:
                child.stderr.close()
    if failures:
        raise NotAvailable(f"`communique worker --until-idle`: {failures[0]}")
    busy, total = (after - before for after, before in zip(_cpu_ticks(), ticks_before, strict=True))
    busy_cores = busy / total * (os.cpu_count() or 1) if total else 0.0
    return time.perf_counter() - started, peak_kb / 1024, cpu, system, busy_cores


def prepare_blast(database_url: str, folder: Path, port: int, count: int,
                  extra_env: dict[str, str] | None = None) -> tuple[dict[str, str], float]:
    """A fresh database with `count` contacts and a running blast to all of them; returns the
    worker's environment (with `extra_env` on top) and the seconds `blasts create` took."""
    env = {**_environ(database_url, folder, port), **(extra_env or {})}
    _cli(["init"], env, folder)
    csv_path = folder / "contacts.csv"
    write_contacts(csv_path, count)
    _cli(["contacts", "import", str(csv_path), "--list", "bench", "--json"], env, folder)
    release_id = _store_release(database_url)
    started = time.perf_counter()
    created = _last_json(_cli(["blasts", "create", "--release", str(release_id), "--list", "bench",
                               "--json"], env, folder))
    create_seconds = time.perf_counter() - started
    if created.get("recipients") not in (None, count):
        raise NotAvailable(f"blast has {created.get('recipients')} recipients, expected {count}")
    return env, create_seconds


def _blast(database_url: str, folder: Path, port: int, count: int, workers: int,
           timeout: float, extra_env: dict[str, str] | None = None) -> Result:
    env, create_seconds = prepare_blast(database_url, folder, port, count, extra_env)
    worker_seconds, peak, cpu, system, busy_cores = _run_workers(env, folder, workers, timeout)
    sent = _count_sent(database_url)
    if sent != count:
        raise NotAvailable(f"worker exited with {sent} of {count} messages sent")
    return Result(count, create_seconds, worker_seconds, peak, sent, cpu, system, busy_cores)


def sqlite_blast(port: int, count: int, timeout: float = 300,
                 extra_env: dict[str, str] | None = None) -> Result:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as folder:
        return _blast(f"sqlite:///{Path(folder) / 'communique.db'}", Path(folder), port, count, 1,
                      timeout, extra_env)


@contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A fresh schema on the PostgreSQL server, dropped afterwards; yields its URL."""
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # any driver error means the same: no PostgreSQL for this row
        admin.dispose()
        raise NotAvailable(f"PostgreSQL at {url}: {type(exc).__name__}") from exc
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def postgres_blast(url: str, port: int, count: int, workers: int = 2, timeout: float = 300,
                   extra_env: dict[str, str] | None = None) -> Result:
    with postgres_schema(url) as database_url, tempfile.TemporaryDirectory(prefix="bench-e2e-") as folder:
        return _blast(database_url, Path(folder), port, count, workers, timeout, extra_env)
