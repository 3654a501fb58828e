"""A delay line between a sender and the sink, as to a real relay: a TCP proxy on 127.0.0.1 that
holds every chunk for `delay` seconds in each direction (10 ms each way = a 20 ms round trip).

Each chunk is forwarded at its arrival time + delay, in order, by one timer per direction that
writes every chunk then due: the delay does not add up from chunk to chunk and the proxy does
not limit throughput (a delay line, not a rate limit). Backpressure only when the far side stops
reading (its write buffer past 1 MB pauses reading on the near side).

    python bench/delay_proxy.py --target 2525 --delay 0.010     # prints {"port": …} when ready

bench/run.py starts it as its own process (`running_proxy`) and stops it by PID when done; it
also stops by itself when the process that started it is gone."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

HIGH_WATER = 1 << 20


class _Direction:
    """One direction of one proxied connection: chunks waiting for their time, oldest first."""

    __slots__ = ("loop", "delay", "target", "source", "chunks", "timer", "ending", "gone")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop, self.delay = loop, delay
        self.target: asyncio.Transport | None = None  # where the chunks go (None until connected)
        self.source: asyncio.Transport | None = None  # where they come from (paused on backpressure)
        self.chunks: deque[tuple[float, bytes]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.ending = ""  # "eof" or "close": the source ended; do that to the target once all are out
        self.gone = False  # the target is closed: drop what comes

    def push(self, data: bytes) -> None:
        if self.gone:
            return
        self.chunks.append((self.loop.time() + self.delay, data))
        if self.timer is None:
            self.timer = self.loop.call_at(self.chunks[0][0], self.flush)

    def end(self, how: str) -> None:
        if how == "close" or not self.ending:
            self.ending = how
        if self.timer is None:
            self.flush()

    def connected(self, target: asyncio.Transport) -> None:
        self.target = target
        if self.timer is None and (self.chunks or self.ending):
            self.flush()

    def flush(self) -> None:
        self.timer = None
        target = self.target
        if target is None:  # not connected yet: connected() flushes
            return
        now, chunks = self.loop.time(), self.chunks
        while chunks and chunks[0][0] <= now:
            data = chunks.popleft()[1]
            if not target.is_closing():
                target.write(data)
        if chunks:
            self.timer = self.loop.call_at(chunks[0][0], self.flush)
        elif self.ending and not target.is_closing():
            if self.ending == "eof" and target.can_write_eof():
                target.write_eof()
            else:
                target.close()

    def cancel(self) -> None:
        self.gone = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.chunks.clear()


class _Side(asyncio.Protocol):
    """One socket of a proxied pair: what it receives goes into `inbound` (towards the other
    socket); `outbound` writes the other socket's chunks to it."""

    def __init__(self, inbound: _Direction, outbound: _Direction) -> None:
        self.inbound, self.outbound = inbound, outbound
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.inbound.source = transport
        self.outbound.connected(transport)

    def data_received(self, data: bytes) -> None:
        self.inbound.push(data)

    def eof_received(self) -> bool:
        self.inbound.end("eof")
        return True  # our write side stays open until the other direction is done

    def connection_lost(self, exc: Exception | None) -> None:
        self.outbound.cancel()
        self.inbound.end("close")  # the other socket closes once this one's chunks are out

    def pause_writing(self) -> None:  # the far side does not keep up: stop reading the near side
        source = self.outbound.source
        if source is not None and not source.is_closing():
            source.pause_reading()

    def resume_writing(self) -> None:
        source = self.outbound.source
        if source is not None and not source.is_closing():
            source.resume_reading()


async def _serve(target_port: int, delay: float, port: int = 0) -> None:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def client_side() -> asyncio.Protocol:
        upstream, downstream = _Direction(loop, delay), _Direction(loop, delay)
        client = _Side(upstream, downstream)

        async def connect_upstream() -> None:
            try:
                await loop.create_connection(lambda: _Side(downstream, upstream), "127.0.0.1",
                                             target_port)
            except OSError:
                downstream.end("close")

        task = loop.create_task(connect_upstream())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return client

    server = await loop.create_server(client_side, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    parent = os.getppid()
    async with server:
        while not stop.is_set():  # bounded: also ends when whoever started it is gone
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                if os.getppid() != parent:
                    return


@dataclass
class Proxy:
    port: int
    delay: float
    process: subprocess.Popen[str]


@contextmanager
def running_proxy(target_port: int, delay: float = 0.010, timeout: float = 10) -> Iterator[Proxy]:
    """The proxy in its own process (so its CPU is not the bench's), stopped by PID on exit."""
    process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--target",
                                str(target_port), "--delay", str(delay)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while not line and time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline()
        if not line:
            raise RuntimeError("the delay proxy did not start")
        yield Proxy(int(json.loads(line)["port"]), delay, process)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


def round_trip(port: int, samples: int = 20, timeout: float = 10) -> float:
    """Median seconds of an SMTP NOOP through the proxy (greeting and EHLO first), measured."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        reader.readline()  # 220
        sock.sendall(b"EHLO bench.example\r\n")
        while (reader.readline() or b"250 ")[3:4] == b"-":
            pass
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            sock.sendall(b"NOOP\r\n")
            reader.readline()
            times.append(time.perf_counter() - started)
        sock.sendall(b"QUIT\r\n")
        reader.readline()
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=int, required=True, help="the sink's port on 127.0.0.1")
    parser.add_argument("--delay", type=float, default=0.010, help="seconds added in each direction")
    parser.add_argument("--port", type=int, default=0, help="where to listen (0: any free port)")
    args = parser.parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(_serve(args.target, args.delay, args.port))


if __name__ == "__main__":
    main()
