"""The worker speaks STARTTLS, implicit TLS and AUTH to a real relay, as configured."""

from __future__ import annotations

import dataclasses
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from smtp_server import RecordingHandler, free_port
from sqlalchemy import select
from test_delivery import start

from service.delivery.worker import run_worker
from service.models import MessageStatus, QueuedMessage

USER, PASSWORD = "relay-user", "s3cret-relay-pass"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    return cert, key


class Authenticator:
    def __init__(self) -> None:
        self.logins: list[str] = []

    def __call__(self, server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        if isinstance(auth_data, LoginPassword) and auth_data.login.decode() == USER \
                and auth_data.password.decode() == PASSWORD:
            self.logins.append(USER)
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


def _relay(certificate: tuple[Path, Path], *, implicit: bool):  # type: ignore[no-untyped-def]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    handler, authenticator, port = RecordingHandler(), Authenticator(), free_port()
    options = {"ssl_context": context} if implicit else {"tls_context": context,
                                                          "require_starttls": True}
    # aiosmtpd counts only STARTTLS as TLS for AUTH; under implicit TLS the whole session is.
    controller = Controller(handler, hostname="127.0.0.1", port=port, authenticator=authenticator,
                            auth_required=True, auth_require_tls=not implicit, ready_timeout=10,
                            **options)
    controller.start()
    return controller, handler, authenticator, port


@pytest.mark.sqlite_only
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
@pytest.mark.parametrize("pipelining", [False, True], ids=["one-command-at-a-time", "pipelined"])
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_worker_sends_over_tls_with_auth(db, settings, certificate, mode, pipelining):  # type: ignore[no-untyped-def]
    """With COMMUNIQUE_SMTP_TLS and credentials set, every message goes over TLS after AUTH, and
    a relay that offers PIPELINING gets it over TLS too."""
    controller, handler, authenticator, port = _relay(certificate, implicit=mode == "implicit")
    handler.pipelining = pipelining
    try:
        relay = dataclasses.replace(settings, smtp_host="127.0.0.1", smtp_port=port, smtp_tls=mode,
                                    smtp_username=USER, smtp_password=PASSWORD,
                                    smtp_ca_file=str(certificate[0]), smtp_connections=2)
        start(db, relay, 5)
        worker = run_worker(relay, until_idle=True, include_due=False)
        assert worker.sent_count == 5
        assert sorted(handler.recipient_counts().values()) == [1] * 5
        assert authenticator.logins and set(authenticator.logins) == {USER}
        assert handler.pipelined_count == (5 if pipelining else 0)
    finally:
        controller.stop()


@pytest.mark.sqlite_only
def test_untrusted_certificate_is_refused(db, settings, certificate):  # type: ignore[no-untyped-def]
    """Without the relay's CA, STARTTLS fails verification: the row is deferred, nothing is sent."""
    controller, handler, _authenticator, port = _relay(certificate, implicit=False)
    try:
        relay = dataclasses.replace(settings, smtp_host="127.0.0.1", smtp_port=port,
                                    smtp_tls="starttls", smtp_username=USER, smtp_password=PASSWORD,
                                    smtp_connections=1, retry_base_seconds=3600)
        blast = start(db, relay, 1)
        stop = threading.Event()
        timer = threading.Timer(3.0, stop.set)
        timer.start()
        try:
            run_worker(relay, stop_event=stop, include_due=False)
        finally:
            timer.cancel()
        assert handler.messages == []
        db.expire_all()
        row = db.scalar(select(QueuedMessage).where(QueuedMessage.blast_id == blast.id))
        assert row is not None and row.status == MessageStatus.deferred
        assert "certificate" in (row.last_smtp_reply or "").lower()
    finally:
        controller.stop()
