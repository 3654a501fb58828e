"""IMAP polling: bounces and replies that land in a hosted mailbox are received from a real
Dovecot (Debian's dovecot-imapd, installed by scripts/setup-system) that the test starts
unprivileged on a loopback port; processed messages are moved to a folder, the others stay."""

from __future__ import annotations

import dataclasses
import grp
import imaplib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import settings_environ
from smtp_server import free_port
from test_inbound import contact, inbound, ledger_row, sample
from test_inbound_replies import OFFICE, REPLIES, forwarded, reply_to_of, send_blast

from service.cli import main
from service.config import Settings
from service.inbound.imap import run_poller
from service.models import ContactStatus, InboundKind, MessageStatus

DOVECOT = Path("/usr/sbin/dovecot")
USER, PASSWORD = "bounces", "s3cret pass"
START_SECONDS = 15.0

CONFIG = """protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%u
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={user} gid={group} home={root}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service auth {{
  user = {user}
}}
service auth-worker {{
  user = {user}
}}
"""


class Dovecot:
    def __init__(self) -> None:
        # Unprivileged: as ourselves, or as nobody when the tests run as root.
        if os.geteuid() == 0:
            self.user, self.group = "nobody", grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
        else:
            self.user, self.group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
        self.root = Path(tempfile.mkdtemp(prefix="communique-dovecot-"))
        self.root.chmod(0o755)
        self.port = free_port()
        (self.root / "dovecot.conf").write_text(CONFIG.format(
            root=self.root, user=self.user, group=self.group, port=self.port))
        (self.root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, self.user, self.group)
            for path in self.root.iterdir():
                shutil.chown(path, self.user, self.group)
        as_user = {"user": self.user, "group": self.group, "extra_groups": []} if os.geteuid() == 0 else {}
        self.process = subprocess.Popen([str(DOVECOT), "-F", "-c", str(self.root / "dovecot.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **as_user)
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                self.client().logout()
                break
            except (OSError, imaplib.IMAP4.error):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("dovecot did not start") from None
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"imap://{USER}:s3cret%20pass@127.0.0.1:{self.port}/INBOX"

    def client(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        client.login(USER, PASSWORD)
        return client

    def append(self, raw: bytes) -> None:
        client = self.client()
        try:
            assert client.append("INBOX", None, None, raw)[0] == "OK"
        finally:
            client.logout()

    def folder(self, name: str) -> list[tuple[bytes, bytes]]:
        """(flags, message) of each message in a folder."""
        client = self.client()
        try:
            status, _data = client.select(name, readonly=True)
            if status != "OK":
                return []
            _status, found = client.uid("SEARCH", "ALL")
            out = []
            for uid in found[0].split():
                _status, fetched = client.uid("FETCH", uid.decode(), "(FLAGS BODY.PEEK[])")
                head, body = next(part for part in fetched if isinstance(part, tuple))
                out.append((head, body))
            return out
        finally:
            client.logout()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    if not DOVECOT.exists():
        pytest.skip("dovecot is not installed (scripts/setup-system installs dovecot-imapd)")
    server = Dovecot()
    yield server
    server.stop()


@pytest.fixture
def imap_settings(smtp_settings: Settings, dovecot: Dovecot) -> Settings:
    return dataclasses.replace(smtp_settings, bounce_address="bounces@press.example.org",
                               reply_address=REPLIES, inbound_imap_url=dovecot.url,
                               inbound_imap_poll_seconds=1)


def delivered(raw: bytes, address: str) -> bytes:
    """The message as a hosted mailbox stores it: the envelope recipient in Delivered-To."""
    return f"Delivered-To: {address}\r\n".encode() + raw


def test_a_polled_mailbox_is_received_and_moved_to_the_done_folder(  # type: ignore[no-untyped-def]
        db, imap_settings, smtpd, dovecot) -> None:
    """A DSN, a journalist's reply and a forged DSN in the mailbox: the DSN bounces its ledger
    row, the reply is stored and forwarded, the forgery changes nothing; all three move to the
    done folder, the inbox is left empty."""
    send_blast(db, imap_settings, 3)
    verp = [m.mail_from for m in smtpd.handler.messages if m.rcpt_tos == ["j1@example.net"]][0]
    reply_to = reply_to_of(smtpd, "j0@example.net")
    dovecot.append(delivered(sample("postfix_hard.eml", verp=verp, rcpt="j1@example.net"), verp))
    dovecot.append(delivered(sample("reply_fr.eml", verp=reply_to, rcpt="j0@example.net"), reply_to))
    dovecot.append(delivered(sample("exim.eml", verp="bounces@press.example.org",
                                    rcpt="j2@example.net"), "bounces@press.example.org"))
    assert run_poller(imap_settings, once=True) == 3
    assert ledger_row(db, "j1@example.net").status == MessageStatus.bounced
    assert contact(db, "j1@example.net").status == ContactStatus.bounced
    assert contact(db, "j2@example.net").status == ContactStatus.active
    assert [(m.kind, m.action) for m in inbound(db)] == [
        (InboundKind.hard_bounce, "ledger row and contact bounced"),
        (InboundKind.reply, f"stored, forwarded to {OFFICE}"),
        (InboundKind.hard_bounce, "none: no valid token")]
    assert [m.rcpt_tos for m in forwarded(smtpd)] == [[OFFICE]]
    assert dovecot.folder("INBOX") == []
    assert len(dovecot.folder("Processed")) == 3


def test_a_message_that_cannot_be_processed_stays_unread_in_the_mailbox(  # type: ignore[no-untyped-def]
        db, imap_settings, smtpd, dovecot) -> None:
    """When the relay cannot take a reply's forward now, the message stays in the inbox, unread
    and unstored; the next poll receives it and moves it."""
    send_blast(db, imap_settings, 1)
    reply_to = reply_to_of(smtpd, "j0@example.net")
    dovecot.append(delivered(sample("reply_ar.eml", verp=reply_to, rcpt="j0@example.net"), reply_to))
    smtpd.handler.fail(OFFICE, 451, "4.3.0 try later", times=1)
    assert run_poller(imap_settings, once=True) == 0
    ((flags, _body),) = dovecot.folder("INBOX")
    assert b"\\Seen" not in flags and inbound(db) == []
    assert run_poller(imap_settings, once=True) == 1
    assert dovecot.folder("INBOX") == [] and len(dovecot.folder("Processed")) == 1
    assert inbound(db)[0].action == f"stored, forwarded to {OFFICE}"


def test_communique_inbound_imap_once(db, imap_settings, smtpd, dovecot) -> None:  # type: ignore[no-untyped-def]
    """`communique inbound --imap --once` polls the mailbox once; a wrong password is an error
    that names the failure, not a traceback."""
    send_blast(db, imap_settings, 1)
    verp = smtpd.handler.messages[0].mail_from
    dovecot.append(delivered(sample("gmail.eml", verp=verp, rcpt="j0@example.net"), verp))
    result = CliRunner(env=settings_environ(imap_settings)).invoke(main, ["inbound", "--imap", "--once"])
    assert result.exit_code == 0, result.output
    assert "1 messages processed" in result.output
    assert contact(db, "j0@example.net").status == ContactStatus.bounced
    wrong = dataclasses.replace(imap_settings, inbound_imap_url=dovecot.url.replace("s3cret", "wrong"))
    result = CliRunner(env=settings_environ(wrong)).invoke(main, ["inbound", "--imap", "--once"])
    assert result.exit_code == 1 and "polling the mailbox failed" in result.output
