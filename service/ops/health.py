"""Blueprint "ops": /healthz (alive), /readyz (database, migrations, relay), /metrics (Prometheus)."""

from __future__ import annotations

import hmac
import logging
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlalchemy import Engine, case, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import current_revision, head_revision
from service.inbound.listing import inbound_counts_by_kind
from service.models import DeliveryLog, MessageStatus, QueuedMessage

log = logging.getLogger(__name__)

bp = Blueprint("ops", __name__)

READY_TTL_SECONDS = 5.0  # a readiness result is served this long before a background refresh
READY_FIRST_WAIT_SECONDS = 3.0  # the very first /readyz waits at most this for the first check
PROBE_TIMEOUT_SECONDS = 2.0  # connect + banner + EHLO to the relay
SEND_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DUE_STATUSES = (MessageStatus.queued, MessageStatus.deferred)


# ---- readiness ------------------------------------------------------------------------------
def check_database(engine: Engine) -> str | None:
    """None when the database answers and its schema is at the newest migration, else why not."""
    try:
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        return f"unreachable ({type(getattr(exc, 'orig', None) or exc).__name__})"
    head = head_revision()
    if revision != head:
        return f"schema at revision {revision or 'none'}, expected {head} (run `communique init`)"
    return None


def check_relay(settings: Settings, timeout: float = PROBE_TIMEOUT_SECONDS) -> str | None:
    """None when the SMTP relay accepts a connection, greets and answers EHLO, else why not."""
    smtp_class = smtplib.SMTP_SSL if settings.smtp_tls == "implicit" else smtplib.SMTP
    try:
        with smtp_class(settings.smtp_host, settings.smtp_port, timeout=timeout) as smtp:
            code, _reply = smtp.ehlo()
            if code != 250:
                return f"EHLO answered {code}"
            smtp.quit()
    except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
        return f"unreachable ({type(exc).__name__}: {exc})"[:200]
    return None


@dataclass
class Readiness:
    """Serves the last check result; refreshes it in a background thread when it gets stale, so a
    probe never waits on a slow database or relay (except the very first, bounded one)."""

    checks: dict[str, Callable[[], str | None]]
    ttl_seconds: float = READY_TTL_SECONDS
    result: dict[str, str | None] | None = None
    checked_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _refreshing: threading.Thread | None = None

    def run_checks(self) -> dict[str, str | None]:
        result = {name: check() for name, check in self.checks.items()}
        for name, problem in result.items():
            if problem is not None:
                log.warning("readiness: %s is down: %s", name, problem)
        with self._lock:
            self.result, self.checked_at = result, time.monotonic()
            self._refreshing = None
        return result

    def refresh_in_background(self) -> threading.Thread:
        with self._lock:
            if self._refreshing is None:
                self._refreshing = threading.Thread(target=self.run_checks, name="readiness",
                                                    daemon=True)
                self._refreshing.start()
            return self._refreshing

    def current(self, wait_seconds: float = READY_FIRST_WAIT_SECONDS) -> dict[str, str | None]:
        if self.result is None:
            self.refresh_in_background().join(wait_seconds)
        elif time.monotonic() - self.checked_at > self.ttl_seconds:
            self.refresh_in_background()
        if self.result is None:
            return {name: "not checked yet" for name in self.checks}
        return self.result


# ---- metrics --------------------------------------------------------------------------------
class LedgerCollector(Collector):
    """Reads the ledger at scrape time, so every process (web, workers) reports the same truth."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory

    def collect(self) -> Iterator[Any]:
        with self.session_factory() as session:
            yield from self._messages(session)
            yield from self._delivery_logs(session)
            yield self._inbound(session)

    def _messages(self, session: Session) -> Iterator[Any]:
        by_blast = GaugeMetricFamily(
            "communique_blast_messages", "Ledger rows of each blast by status.",
            labels=["blast_id", "status"])
        depth = {status.value: 0 for status in MessageStatus}
        rows = session.execute(select(QueuedMessage.blast_id, QueuedMessage.status, func.count())
                               .group_by(QueuedMessage.blast_id, QueuedMessage.status)
                               .order_by(QueuedMessage.blast_id))
        for blast_id, status, count in rows:
            depth[status] = depth.get(status, 0) + count
            if status in (MessageStatus.sent, MessageStatus.deferred, MessageStatus.failed,
                          MessageStatus.bounced):
                by_blast.add_metric([str(blast_id), status], count)
        yield by_blast
        queue = GaugeMetricFamily("communique_queue_depth", "Ledger rows by status.",
                                  labels=["status"])
        for status, count in depth.items():
            queue.add_metric([status], count)
        yield queue
        now = datetime.now(UTC)
        due_at = func.coalesce(QueuedMessage.next_attempt_at, QueuedMessage.created_at)
        oldest = session.scalar(select(func.min(due_at))
                                .where(QueuedMessage.status.in_(DUE_STATUSES), due_at <= now))
        if isinstance(oldest, str):  # SQLite may hand back the aggregate's text as stored
            oldest = datetime.fromisoformat(oldest)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        yield GaugeMetricFamily("communique_oldest_due_message_age_seconds",
                                "How long the oldest due message has waited (0 when none).", value=age)

    def _inbound(self, session: Session) -> CounterMetricFamily:
        inbound = CounterMetricFamily(
            "communique_inbound_messages", "Messages received by `communique inbound`, by kind.",
            labels=["kind"])
        for kind, count in inbound_counts_by_kind(session).items():
            inbound.add_metric([kind], count)
        return inbound

    def _delivery_logs(self, session: Session) -> Iterator[Any]:
        codes = CounterMetricFamily("communique_smtp_replies", "SMTP attempts by reply code.",
                                    labels=["code"])
        for code, count in session.execute(select(DeliveryLog.smtp_code, func.count())
                                           .group_by(DeliveryLog.smtp_code)
                                           .order_by(DeliveryLog.smtp_code)):
            codes.add_metric(["none" if code is None else str(code)], count)
        yield codes
        outcomes = CounterMetricFamily("communique_delivery_attempts", "SMTP attempts by outcome.",
                                       labels=["outcome"])
        for outcome, count in session.execute(select(DeliveryLog.outcome, func.count())
                                              .group_by(DeliveryLog.outcome)
                                              .order_by(DeliveryLog.outcome)):
            outcomes.add_metric([outcome], count)
        yield outcomes
        duration = DeliveryLog.duration_seconds
        columns = [func.sum(case((duration <= bound, 1), else_=0)) for bound in SEND_LATENCY_BUCKETS]
        row = session.execute(select(func.count(duration), func.coalesce(func.sum(duration), 0.0),
                                     *columns)).one()
        total, total_seconds, cumulative = row[0], row[1], row[2:]
        buckets = [(str(bound), int(count or 0)) for bound, count in zip(SEND_LATENCY_BUCKETS,
                                                                         cumulative, strict=True)]
        yield HistogramMetricFamily(
            "communique_send_duration_seconds", "Time of one SMTP attempt (delivery_logs).",
            buckets=[*buckets, ("+Inf", int(total))], sum_value=float(total_seconds))


@dataclass
class Ops:
    """Per-app state: the readiness cache and the metrics registry (no global registry, so several
    apps in one process, as in the tests, never share or collide)."""

    readiness: Readiness
    registry: CollectorRegistry
    webhook_requests: Counter


def init_app(app: Flask) -> None:
    from service.http.context import Runtime

    runtime: Runtime = app.extensions["communique"]
    registry = CollectorRegistry()
    registry.register(LedgerCollector(runtime.session_factory))
    webhook_requests = Counter("communique_webhook_requests", "Incoming webhook requests by outcome.",
                               ["outcome"], registry=registry)
    readiness = Readiness({
        "database": lambda: check_database(runtime.engine),
        "smtp": lambda: check_relay(runtime.settings),
    })
    app.extensions["communique_ops"] = Ops(readiness, registry, webhook_requests)
    app.register_blueprint(bp)


def _ops() -> Ops:
    return current_app.extensions["communique_ops"]  # type: ignore[no-any-return]


def count_webhook(outcome: str) -> None:
    """Count one incoming webhook request (call from a request: "accepted", "replayed",
    "rejected", ...). Counted per process; the ledger metrics are not."""
    _ops().webhook_requests.labels(outcome=outcome).inc()


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive and serving; touches nothing else."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Which checks are down for anyone (a probe needs no more); why, only for a caller with the
    metrics token: error texts name hosts, ports and versions."""
    result = _ops().readiness.current()
    down = {name: problem for name, problem in result.items() if problem is not None}
    if down:
        if _has_metrics_token():
            return jsonify(status="unavailable", down=down), 503
        return jsonify(status="unavailable", down=sorted(down)), 503
    return jsonify(status="ok", checks=sorted(result)), 200


def _has_metrics_token() -> bool:
    """The request carries `Authorization: Bearer <COMMUNIQUE_METRICS_TOKEN>` (never true when no
    token is set; production refuses to start without one)."""
    from service.http.context import current_settings

    token = current_settings().metrics_token
    given = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


@bp.get("/metrics")
def metrics() -> Response | tuple[Response, int, dict[str, str]]:
    from service.http.context import current_settings

    if current_settings().metrics_token and not _has_metrics_token():
        return (jsonify(errors=[{"reason": "a valid bearer token is required"}]), 401,
                {"WWW-Authenticate": 'Bearer realm="metrics"'})
    try:
        body = generate_latest(_ops().registry)
    except SQLAlchemyError as exc:
        log.warning("metrics: database unavailable (%s)", type(exc).__name__)
        return jsonify(errors=[{"reason": "database unavailable"}]), 503, {}
    return Response(body, mimetype=CONTENT_TYPE_LATEST)
