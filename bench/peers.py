"""What Communiqué is compared with: the Python ceiling (a bare aiosmtplib loop sending pre-built
bytes over pooled connections, one process), a peer, the `mailmerge` CLI (PyPI), and for the
delayed rows a bare chained-pipelining loop (what the delay line, the sink and this machine allow
at one round trip per message).

    python bench/peers.py ceiling --port 2525 --n 5000 --sessions 16    # prints seconds as JSON
    python bench/peers.py chained --port 2526 --n 3000 --sessions 8
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from release import build_message, load_release  # noqa: E402


async def _ceiling(port: int, count: int, sessions: int) -> float:
    import aiosmtplib

    data = build_message(load_release(), "Hélène", "journaliste@redaction.example")
    remaining = iter(range(count))
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30) for _ in range(sessions)]
    await asyncio.gather(*(client.connect() for client in clients))

    async def send_all(client: aiosmtplib.SMTP) -> None:
        for i in remaining:
            await client.sendmail("presse@onmt.example.org", [f"journaliste.{i}@redaction.example"],
                                  data)

    started = time.perf_counter()
    await asyncio.gather(*(send_all(client) for client in clients))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(client.quit() for client in clients))
    return elapsed


async def _chained(port: int, count: int, sessions: int) -> float:
    """Communiqué's exchange without Communiqué: pre-built bytes over `sessions` connections,
    each message's content followed in the same write by the next message's MAIL, RCPT and DATA
    (RFC 2920), so one round trip per message; no database, no wait for a record."""
    data = build_message(load_release(), "Hélène", "journaliste@redaction.example")
    data = re.sub(rb"\r?\n", b"\r\n", data)
    content = re.sub(rb"(?m)^\.", b"..", data) + (b"" if data.endswith(b"\r\n") else b"\r\n") + b".\r\n"
    remaining = iter(range(count))

    async def reply(reader: asyncio.StreamReader) -> bytes:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("the sink closed the connection")
            if line[3:4] != b"-":
                return line

    def envelope(i: int) -> bytes:
        return (b"MAIL FROM:<presse@onmt.example.org>\r\nRCPT TO:<journaliste.%d@redaction.example>"
                b"\r\nDATA\r\n" % i)

    async def replies(reader: asyncio.StreamReader, count: int) -> None:
        for _ in range(count):
            line = await reply(reader)
            if line[:1] not in (b"2", b"3"):
                raise RuntimeError(f"the sink refused: {line!r}")

    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(sessions)]
    for reader, writer in connections:
        await reply(reader)
        writer.write(b"EHLO bench.example\r\n")
        await reply(reader)

    async def send_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        current = next(remaining, None)
        if current is None:
            return
        writer.write(envelope(current))
        await replies(reader, 3)
        while current is not None:
            current = next(remaining, None)
            writer.write(content + (envelope(current) if current is not None else b""))
            await replies(reader, 4 if current is not None else 1)

    started = time.perf_counter()
    await asyncio.gather(*(send_all(*connection) for connection in connections))
    elapsed = time.perf_counter() - started
    for reader, writer in connections:
        writer.write(b"QUIT\r\n")
        await reply(reader)
        writer.close()
    return elapsed


def ceiling(port: int, count: int, sessions: int, timeout: float = 300, what: str = "ceiling") -> float:
    """Seconds for the bare loop (or `what` = "chained"), run in its own process so it has a core
    to itself."""
    result = subprocess.run(
        [sys.executable, str(Path(__file__)), what, "--port", str(port), "--n", str(count),
         "--sessions", str(sessions)], capture_output=True, text=True, timeout=timeout, check=True)
    return float(json.loads(result.stdout.strip().splitlines()[-1])["seconds"])


MAILMERGE_TEMPLATE = """TO: {{{{email}}}}
FROM: {sender}
SUBJECT: {subject}
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="boundary"

--boundary
Content-Type: text/plain; charset=utf-8

Bonjour {{{{first_name}}}},

{text}

--boundary
Content-Type: text/html; charset=utf-8

<html><body><p>Bonjour {{{{first_name}}}},</p>
{html}
</body></html>
--boundary--
"""


def mailmerge(port: int, count: int, timeout: float = 300) -> float:
    """Seconds for `mailmerge --no-dry-run --no-limit` to send `count` personal messages."""
    binary = shutil.which("mailmerge", path=str(Path(sys.executable).parent)) or shutil.which("mailmerge")
    if binary is None:
        raise RuntimeError("mailmerge is not installed (pip install -e '.[bench]')")
    from markdown_it import MarkdownIt

    release = load_release()
    with tempfile.TemporaryDirectory(prefix="bench-mailmerge-") as folder:
        root = Path(folder)
        body = str(release["body"]).replace("{", "(").replace("}", ")")
        (root / "template.txt").write_text(MAILMERGE_TEMPLATE.format(
            sender="Office National Marocain du Tourisme <presse@onmt.example.org>",
            subject=release["title"], text=body, html=MarkdownIt().render(body)), encoding="utf-8")
        with (root / "database.csv").open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["email", "first_name"])
            for i in range(count):
                writer.writerow([f"journaliste.{i}@redaction.example", "Hélène"])
        (root / "server.conf").write_text(
            f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\nratelimit = 0\n")
        started = time.perf_counter()
        subprocess.run([binary, "--no-dry-run", "--no-limit", "--output-format", "raw",
                        "--template", "template.txt", "--database", "database.csv",
                        "--config", "server.conf"], cwd=root, check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description="Peers of the benchmark")
    parser.add_argument("what", choices=["ceiling", "chained"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=16)
    args = parser.parse_args()
    loop = _ceiling if args.what == "ceiling" else _chained
    seconds = asyncio.run(asyncio.wait_for(loop(args.port, args.n, args.sessions), 300))
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main()
