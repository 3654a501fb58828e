"""Profile one `communique worker --until-idle` sending N messages to smtp-sink, with py-spy
(samples of the thread holding the GIL, all threads; raw collapsed stacks), pyinstrument or
cProfile.

    .venv/bin/python bench/profile_worker.py --n 20000 --output /tmp/w.spy  # py-spy, every thread
    .venv/bin/python bench/profile_worker.py --n 20000 --profiler none     # just the time
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import endtoend  # noqa: E402
import sinks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--profiler", choices=["py-spy", "pyinstrument", "cprofile", "none"],
                        default="py-spy")
    parser.add_argument("--postgres-url", default="")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--output", default="", help="where the profile goes (py-spy: collapsed stacks)")
    parser.add_argument("--timeout", type=float, default=500)
    args = parser.parse_args()
    communique = endtoend.COMMUNIQUE
    with sinks.running_sink() as sink, tempfile.TemporaryDirectory(prefix="bench-prof-") as folder:
        if args.postgres_url:
            schema = endtoend.postgres_schema(args.postgres_url)
            database_url = schema.__enter__()
        else:
            schema, database_url = None, f"sqlite:///{Path(folder) / 'communique.db'}"
        try:
            env, create_seconds = endtoend.prepare_blast(database_url, Path(folder), sink.port, args.n)
            if args.profiler == "py-spy":  # samples every thread (claims and records run in two)
                command = [str(Path(sys.executable).parent / "py-spy"), "record", "--threads",
                           "--rate", "200", "--gil", "--format", "raw",
                           "-o", args.output or "/tmp/worker.spy",
                           "--", communique, "worker", "--until-idle"]
            elif args.profiler == "pyinstrument":
                command = [str(Path(sys.executable).parent / "pyinstrument"), "-r", "text",
                           *(["-o", args.output] if args.output else []), communique,
                           "worker", "--until-idle"]
            elif args.profiler == "cprofile":
                command = [sys.executable, "-m", "cProfile", "-s", "tottime", communique, "worker",
                           "--until-idle"]
            else:
                command = [communique, "worker", "--until-idle"]
            started = time.perf_counter()
            children = [subprocess.Popen(command, env=env, cwd=folder) for _ in range(args.workers)]
            for child in children:
                child.wait(args.timeout)
            seconds = time.perf_counter() - started
            sent = endtoend._count_sent(database_url)
            print(f"create {create_seconds:.2f} s; worker {seconds:.2f} s; {sent} sent; "
                  f"{args.n / seconds:,.0f} msgs/s (worker alone), "
                  f"{args.n / (seconds + create_seconds):,.0f} msgs/s end to end; "
                  f"load {os.getloadavg()}", file=sys.stderr)
        finally:
            if schema is not None:
                schema.__exit__(None, None, None)


if __name__ == "__main__":
    main()
