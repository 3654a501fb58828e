"""The sink every sender writes to, and the wire limit: Postfix's `smtp-sink` and `smtp-source`,
unpacked from the Debian package into bench/.cache (no daemon, no install). Falls back to an
aiosmtpd sink when Postfix cannot be had (then there is no wire-limit row)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
POSTFIX = CACHE / "postfix"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postfix_tools() -> tuple[Path, Path] | None:
    """(smtp-sink, smtp-source), fetched with `apt-get download postfix` + `dpkg -x` once."""
    sink, source = POSTFIX / "usr/sbin/smtp-sink", POSTFIX / "usr/sbin/smtp-source"
    if not sink.exists():
        if not (shutil.which("apt-get") and shutil.which("dpkg")):
            return None
        CACHE.mkdir(parents=True, exist_ok=True)
        debs = sorted(CACHE.glob("postfix_*.deb"))
        if not debs:
            subprocess.run(["apt-get", "download", "postfix"], cwd=CACHE, capture_output=True,
                           timeout=120, check=False)
            debs = sorted(CACHE.glob("postfix_*.deb"))
        if not debs:
            return None
        subprocess.run(["dpkg", "-x", str(debs[-1]), str(POSTFIX)], check=True, timeout=60)
    return (sink, source) if sink.exists() and source.exists() else None


def _postfix_env() -> dict[str, str]:
    return {**os.environ, "LD_LIBRARY_PATH": str(POSTFIX / "usr/lib/postfix")}


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sink exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class Sink:
    kind: str  # "smtp-sink" or "aiosmtpd"
    port: int
    process: subprocess.Popen[bytes]


def stop(process: subprocess.Popen[bytes], timeout: float = 5) -> None:
    """Stop one process we started, by its PID: SIGTERM, then SIGKILL."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


@contextmanager
def running_sink() -> Iterator[Sink]:
    """A fast SMTP sink on 127.0.0.1 that accepts and discards everything (PIPELINING, 8BITMIME)."""
    port = free_port()
    tools = postfix_tools()
    if tools is not None:
        command = [str(tools[0]), f"127.0.0.1:{port}", "1024"]
        if os.geteuid() == 0:
            command[1:1] = ["-u", "nobody"]
        process = subprocess.Popen(command, env=_postfix_env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        kind = "smtp-sink"
    else:
        process = subprocess.Popen(
            [sys.executable, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink",
             "-l", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kind = "aiosmtpd"
    try:
        _wait_for_port(port, process)
        yield Sink(kind, port, process)
    finally:
        stop(process)


def smtp_source(port: int, messages: int, sessions: int, size: int, timeout: float = 120) -> float:
    """Seconds for Postfix's smtp-source to send `messages` of `size` bytes over `sessions`
    connections kept open (-d), the wire limit of this machine."""
    tools = postfix_tools()
    if tools is None:
        raise RuntimeError("Postfix's smtp-source is not available (apt-get download postfix failed)")
    command = [str(tools[1]), "-d", "-s", str(sessions), "-m", str(messages), "-l", str(size),
               "-f", "presse@onmt.example.org", "-t", "journaliste@redaction.example",
               f"127.0.0.1:{port}"]
    started = time.perf_counter()
    subprocess.run(command, env=_postfix_env(), check=True, timeout=timeout,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started
