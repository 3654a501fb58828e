"""Logging setup: one line per event, text or JSON (COMMUNIQUE_LOG_FORMAT), each carrying the
request id, blast id and delivery id in effect; known secrets are masked before anything is written.

Code adds ids without knowing about handlers: a block of work on one blast, or one line.

    with log_context(blast_id=blast_id):      # the worker preparing a release, judging a blast
        prepared = prepare_release(...)
    bind(log, blast_id=job.blast_id, delivery_id=job.id).exception("message %s: rendering failed", job.id)

The request log sets request_id. In the worker, ids are attached per blast or on rare lines, never
per message on the hot path (a context per message would cost more than the log line saves).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import IO, Any

from service.config import Settings

log = logging.getLogger(__name__)

CONTEXT_FIELDS = ("request_id", "blast_id", "delivery_id")
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MASK = "***"

_context: ContextVar[Mapping[str, Any]] = ContextVar("communique_log_context",
                                                     default=MappingProxyType({}))


@contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Attach ids (blast_id=..., delivery_id=..., request_id=...) to every record logged inside;
    nests, and each asyncio task keeps its own copy."""
    token = _context.set({**_context.get(), **{k: v for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> Mapping[str, Any]:
    return _context.get()


class ContextAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that always carries the given ids (they win over the surrounding log_context)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def bind(logger: logging.Logger, **ids: Any) -> ContextAdapter:
    return ContextAdapter(logger, ids)


class ContextFilter(logging.Filter):
    """Copies the ids in effect onto each record and masks known secret values in its message."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if len(s) >= 4)

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        if self.secrets:
            message = record.getMessage()
            masked = message
            for secret in self.secrets:
                masked = masked.replace(secret, _MASK)
            if masked != message:
                record.msg, record.args = masked, None
        return True


def _ids(record: logging.LogRecord) -> dict[str, Any]:
    return {name: value for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "at": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            **_ids(record),
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ids)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = _ids(record)
        record.ids = " [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]" if ids else ""
        return super().format(record)


def secret_values(settings: Settings) -> tuple[str, ...]:
    return (settings.secret_key, settings.smtp_password, settings.webhook_secret,
            settings.events_secret, settings.metrics_token)


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Install our one handler on the root logger (replacing a previous one of ours)."""
    handler: logging.Handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter(secret_values(settings)))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_communique", False):
            root.removeHandler(existing)
    handler._communique = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    return handler
