"""Settings: the one object that reads the environment (COMMUNIQUE_* variables, optional .env)."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from limits import parse_many

from service.errors import ConfigError

PREFIX = "COMMUNIQUE_"
SMTP_TLS_MODES = ("none", "starttls", "implicit")
SMTP_PIPELINING_MODES = ("auto", "off")
LOG_FORMATS = ("text", "json")
RATE_LIMIT_STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+unix")


@dataclass(frozen=True)
class Settings:
    """Every knob of the service. Field `foo_bar` is read from `COMMUNIQUE_FOO_BAR`."""

    env: str = "development"  # "production" refuses to start without real secrets
    database_url: str = "sqlite:///instance/communique.db"
    instance_path: str = "instance"
    secret_key: str = field(default="", repr=False)
    base_url: str = "http://127.0.0.1:8000"
    mail_from: str = "Communiqué <communique@example.com>"
    timezone: str = "Africa/Casablanca"
    default_language: str = "fr"

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_tls: str = "none"
    smtp_username: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_ca_file: str = ""  # CA bundle to trust for a relay with a private certificate
    smtp_timeout_seconds: float = 30.0
    smtp_connections: int = 8
    smtp_messages_per_connection: int = 1000
    smtp_pipelining: str = "auto"  # auto: RFC 2920 when the relay offers it; off: aiosmtplib's own path
    send_rate: float = 0.0  # messages per second, 0 = unlimited
    domain_concurrency: int = 8  # connections in flight to one recipient domain
    batch_size: int = 200
    lease_seconds: int = 300
    retry_base_seconds: int = 120
    retry_max_age_seconds: int = 72 * 3600
    error_pause_threshold: float = 0.5  # share of failed attempts in the window that pauses a blast
    error_window: int = 50
    worker_poll_seconds: float = 1.0
    scheduler_interval_seconds: float = 15.0

    dkim_selector: str = ""
    dkim_domain: str = ""
    dkim_private_key_path: str = ""

    attachment_max_bytes: int = 10 * 1024 * 1024
    upload_max_bytes: int = 20 * 1024 * 1024
    webhook_secret: str = field(default="", repr=False)
    webhook_tolerance_seconds: int = 300
    webhook_max_bytes: int = 2 * 1024 * 1024
    events_url: str = ""  # outgoing signed webhooks, off when empty
    events_secret: str = field(default="", repr=False)
    require_approval: bool = False
    undo_seconds: int = 20  # a web "send now" waits this long with an Undo button; 0 = off
    test_sends_per_hour: int = 50  # test-send addresses per user per hour
    metrics_token: str = field(default="", repr=False)  # required in production

    # ---- hardening: sessions, proxies, rate limits ---------------------------
    session_idle_minutes: int = 480  # a web session unused this long is over (signed cookie age)
    trusted_proxies: int = 0  # reverse proxies in front whose X-Forwarded-* headers are believed
    rate_limit_storage_url: str = field(default="memory://", repr=False)  # redis://… across workers
    api_rate_limit: str = "300/minute"  # per API key
    api_ip_rate_limit: str = "600/minute"  # per client address, all API requests
    api_auth_failure_rate_limit: str = "30/minute"  # per client address, requests with a bad key
    login_failure_limit: int = 10  # failed logins per account and client address in 5 minutes
    login_ip_failure_limit: int = 50  # failed logins per client address in 5 minutes

    # ---- SMTP hardening (issue 14): keep these together ----------------------------------------
    smtp_data_timeout_seconds: float = 600.0  # the reply to the final dot (RFC 5321 §4.5.3.2.6)
    smtp_allow_plaintext_auth: bool = False  # AUTH without TLS to a relay off loopback
    dkim_keys: str = ""  # per From domain: "domain=selector:/path/key.pem,..." or a folder

    # ---- inbound mail (issue 15): bounces, complaints, unsubscribes by mail, replies -----------
    bounce_address: str = ""  # VERP envelope sender base, e.g. bounces@press.example.org; off when empty
    soft_bounce_limit: int = 3  # temporary failures on separate blasts before a contact is bounced
    tracking_default: bool = False  # a new blast records opens and clicks unless told otherwise
    tracking_scanner_seconds: int = 30  # an open or click this soon after delivery is a machine's
    inbound_max_bytes: int = 10 * 1024 * 1024  # largest message the inbound listener accepts
    reply_address: str = ""  # Reply-To base, e.g. replies@press.example.org; off when empty
    replies_forward_to: str = ""  # where replies are forwarded; empty: the release's reply-to or From
    inbound_imap_url: str = field(default="", repr=False)  # imaps://user:password@host/INBOX to poll
    inbound_imap_folder: str = "Processed"  # where polled messages are moved once processed
    inbound_imap_poll_seconds: float = 60.0

    log_level: str = "INFO"
    log_format: str = "text"

    # ---- derived values -------------------------------------------------
    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def mail_from_address(self) -> str:
        return parseaddr(self.mail_from)[1]

    @property
    def mail_from_name(self) -> str:
        return parseaddr(self.mail_from)[0]

    @property
    def message_id_domain(self) -> str:
        return self.mail_from_address.rpartition("@")[2] or "localhost"

    @property
    def is_https(self) -> bool:
        return self.base_url.startswith("https://")


    @property
    def dkim_keys_by_domain(self) -> dict[str, tuple[str, str]]:
        """COMMUNIQUE_DKIM_KEYS as {domain: (selector, key path)}. A folder holds one
        `<domain>.<selector>.pem` per key (e.g. news.example.org.press2025.pem)."""
        return _dkim_keys(self.dkim_keys)

    def startup_warnings(self) -> list[str]:
        """What a production operator should hear about once, at start-up (the worker logs it)."""
        warnings = []
        if self.env == "production" and not self.is_https:
            warnings.append(f"{PREFIX}BASE_URL is not https: messages carry no List-Unsubscribe-Post "
                            "(RFC 8058 one-click needs an https link)")
        return warnings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
        """Parse COMMUNIQUE_* variables; a bad value raises ConfigError naming the variable."""
        if environ is None:
            if dotenv:
                from dotenv import dotenv_values

                file_values = {k: v for k, v in dotenv_values(".env").items() if v is not None}
                environ = {**file_values, **os.environ}
            else:
                environ = os.environ
        values: dict[str, Any] = {}
        known = {f.name: f for f in dataclasses.fields(cls)}
        for name, fld in known.items():
            raw = environ.get(PREFIX + name.upper())
            if raw is None:
                continue
            values[name] = _parse(PREFIX + name.upper(), raw.strip(), fld.type)
        settings = cls(**values)
        if not settings.secret_key:
            settings = dataclasses.replace(settings, secret_key=_development_secret(settings))
        settings.validate()
        return settings

    def validate(self) -> None:
        def fail(name: str, reason: str) -> None:
            raise ConfigError(f"{PREFIX}{name.upper()}: {reason}")

        if self.env not in ("development", "production", "test"):
            fail("env", f"must be development, production or test, not {self.env!r}")
        if not self.database_url.startswith(("sqlite:", "postgresql")):
            fail("database_url", "must be a sqlite:/// or postgresql:// URL")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            fail("timezone", f"unknown time zone {self.timezone!r}")
        if not 0 < self.smtp_port < 65536:
            fail("smtp_port", f"{self.smtp_port} is not a TCP port")
        if self.smtp_tls not in SMTP_TLS_MODES:
            fail("smtp_tls", f"must be one of {', '.join(SMTP_TLS_MODES)}")
        if self.smtp_pipelining not in SMTP_PIPELINING_MODES:
            fail("smtp_pipelining", f"must be auto or off, not {self.smtp_pipelining!r}")
        if self.smtp_ca_file and not Path(self.smtp_ca_file).is_file():
            fail("smtp_ca_file", f"{self.smtp_ca_file} is not a readable file")
        if self.smtp_password and not self.smtp_username:
            fail("smtp_username", "is required when COMMUNIQUE_SMTP_PASSWORD is set")
        for name in ("smtp_connections", "batch_size", "lease_seconds", "retry_base_seconds",
                     "domain_concurrency", "smtp_messages_per_connection", "error_window"):
            if getattr(self, name) < 1:
                fail(name, "must be at least 1")
        if not 0 <= self.undo_seconds <= 600:
            fail("undo_seconds", "must be between 0 (no undo) and 600 seconds")
        if self.test_sends_per_hour < 1:
            fail("test_sends_per_hour", "must be at least 1")
        if self.send_rate < 0:
            fail("send_rate", "must be 0 (unlimited) or a positive number of messages per second")
        if not 0 < self.error_pause_threshold <= 1:
            fail("error_pause_threshold", "must be between 0 and 1")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            fail("base_url", "must be an absolute http(s) URL such as https://press.example.org")
        if "@" not in self.mail_from_address or any(c in self.mail_from for c in "\r\n"):
            fail("mail_from", "must be an address such as 'Press office <press@example.org>'")
        if self.webhook_secret and not self.webhook_secret.startswith("whsec_"):
            fail("webhook_secret", "must be a Standard Webhooks secret in the whsec_… form")
        if self.log_format not in LOG_FORMATS:
            fail("log_format", "must be text or json")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            fail("log_level", "must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        if bool(self.dkim_selector) != bool(self.dkim_private_key_path):
            fail("dkim_selector", "DKIM needs both a selector and COMMUNIQUE_DKIM_PRIVATE_KEY_PATH")
        self._validate_smtp_hardening(fail)
        self._validate_inbound(fail)
        if self.env == "production" and len(self.secret_key) < 32:
            fail("secret_key", "production needs a random secret of at least 32 characters")
        self._validate_hardening(fail)

    def _validate_hardening(self, fail: Callable[[str, str], None]) -> None:
        if not 1 <= self.session_idle_minutes <= 60 * 24 * 31:
            fail("session_idle_minutes", "must be between 1 and 44640 (31 days)")
        if not 0 <= self.trusted_proxies <= 10:
            fail("trusted_proxies", "must be the number of reverse proxies in front (0 to 10)")
        if urlsplit(self.rate_limit_storage_url).scheme not in RATE_LIMIT_STORAGE_SCHEMES:
            fail("rate_limit_storage_url", "must be memory:// or a redis://host:port[/db] URL")
        for name in ("api_rate_limit", "api_ip_rate_limit", "api_auth_failure_rate_limit"):
            try:
                parsed = parse_many(getattr(self, name))
            except ValueError:
                parsed = []
            if not parsed:
                fail(name, f"{getattr(self, name)!r} is not a limit such as '300/minute'")
        for name in ("login_failure_limit", "login_ip_failure_limit"):
            if getattr(self, name) < 1:
                fail(name, "must be at least 1")
        if self.env == "production" and len(self.metrics_token) < 16:
            fail("metrics_token", "production needs a bearer token of at least 16 characters "
                                  "for /metrics and /readyz details")

    def _validate_inbound(self, fail: Callable[[str, str], None]) -> None:
        for name, example in (("bounce_address", "bounces"), ("reply_address", "replies")):
            address = getattr(self, name)
            if address and not _is_plain_address(address, plus=False):
                fail(name, f"must be a plain ASCII address without '+', such as "
                     f"{example}@press.example.org")
        if self.inbound_imap_url:
            parts = urlsplit(self.inbound_imap_url)
            try:
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError:
                fail("inbound_imap_url", "has a bad port")
            if parts.scheme not in ("imap", "imaps") or not parts.hostname or not parts.username:
                fail("inbound_imap_url", "must be imaps://user:password@host/INBOX")
        if not self.inbound_imap_folder.strip() or not self.inbound_imap_folder.isprintable():
            fail("inbound_imap_folder", "must name a folder, such as Processed")
        if self.inbound_imap_poll_seconds < 1:
            fail("inbound_imap_poll_seconds", "must be at least 1 second")
        if self.replies_forward_to and not _is_plain_address(self.replies_forward_to, plus=True):
            fail("replies_forward_to", "must be a plain ASCII address, such as "
                 "press-office@example.org")
        if self.soft_bounce_limit < 1:
            fail("soft_bounce_limit", "must be at least 1")
        if self.tracking_scanner_seconds < 0:
            fail("tracking_scanner_seconds", "must be 0 or more")
        if self.inbound_max_bytes < 1024:
            fail("inbound_max_bytes", "must be at least 1024 bytes")

    def _validate_smtp_hardening(self, fail: Any) -> None:
        if self.smtp_data_timeout_seconds <= 0:
            fail("smtp_data_timeout_seconds", "must be a positive number of seconds")
        if (self.smtp_tls == "none" and (self.smtp_username or self.smtp_password)
                and not self.smtp_allow_plaintext_auth and not _is_loopback(self.smtp_host)):
            fail("smtp_tls", f"none would send the SMTP password in clear to {self.smtp_host}: use "
                 "starttls or implicit, or set COMMUNIQUE_SMTP_ALLOW_PLAINTEXT_AUTH=true")
        try:
            keys = self.dkim_keys_by_domain
        except ValueError as exc:
            fail("dkim_keys", str(exc))
            return
        for domain, (_selector, path) in keys.items():
            if not Path(path).is_file():
                fail("dkim_keys", f"the key for {domain}, {path}, is not a readable file")


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _dkim_keys(value: str) -> dict[str, tuple[str, str]]:
    value = value.strip()
    if not value:
        return {}
    keys: dict[str, tuple[str, str]] = {}
    if "=" not in value and Path(value).is_dir():
        for key_file in sorted(Path(value).glob("*.pem")):
            domain, _, selector = key_file.stem.rpartition(".")
            if domain and selector:
                keys[domain.lower()] = (selector, str(key_file))
        return keys
    for item in filter(None, (part.strip() for part in value.split(","))):
        domain, _, rest = item.partition("=")
        selector, _, path = rest.partition(":")
        if not (domain.strip() and selector.strip() and path.strip()):
            raise ValueError(f"{item!r} is not domain=selector:/path/to/key.pem")
        keys[domain.strip().lower()] = (selector.strip(), path.strip())
    return keys


def _parse(variable: str, raw: str, kind: Any) -> Any:
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(f"{variable}: {raw!r} is not a number") from None
    if kind == "bool":
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{variable}: {raw!r} is not a boolean (use true or false)")
    return raw


def _development_secret(settings: Settings) -> str:
    """Outside production, keep a random secret in the instance folder so sessions survive restarts."""
    if settings.env == "production":
        raise ConfigError(f"{PREFIX}SECRET_KEY: required in production (no default)")
    path = Path(settings.instance_path) / "secret-key"
    try:
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        path.write_text(key)
        path.chmod(0o600)
        return key
    except OSError as exc:
        raise ConfigError(f"{PREFIX}SECRET_KEY: not set, and {path} cannot hold one ({exc})") from exc


def _is_plain_address(address: str, *, plus: bool) -> bool:
    local, _, domain = address.rpartition("@")
    return bool(local and "." in domain and (plus or "+" not in local) and address.isascii()
                and "@" not in local and not any(c in address for c in ' <>\r\n"'))
