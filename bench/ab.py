"""Quick side-by-side check while tuning: the bare aiosmtplib loop and one Communiqué worker,
interleaved, same sink, same N; prints each pair and the ratio (this machine drifts, ratios less).
`--pipelining both` also runs the worker with COMMUNIQUE_SMTP_PIPELINING=off (aiosmtplib's public
path only) right after the pipelined one, so the fast path is measured against it.
`--tracking both` runs each worker with a blast without, then with, engagement tracking
(COMMUNIQUE_TRACKING_DEFAULT), to measure what the pixel and tracked links cost per message.

    .venv/bin/python bench/ab.py --n 10000 --pairs 2 --pipelining both
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import endtoend  # noqa: E402
import peers  # noqa: E402
import sinks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--postgres-url", default="")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra worker setting, e.g. COMMUNIQUE_BATCH_SIZE=1000 (repeatable)")
    parser.add_argument("--skip-ceiling", action="store_true")
    parser.add_argument("--pipelining", choices=("auto", "off", "both"), default="auto",
                        help="COMMUNIQUE_SMTP_PIPELINING for the worker; both: auto, then off")
    parser.add_argument("--tracking", choices=("off", "on", "both"), default="off",
                        help="engagement tracking on the blast; both: off, then on")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    modes = ("auto", "off") if args.pipelining == "both" else (args.pipelining,)
    trackings = ("off", "on") if args.tracking == "both" else (args.tracking,)
    with sinks.running_sink() as sink:
        for _ in range(args.pairs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            ceiling = 1.0 if args.skip_ceiling else args.n / peers.ceiling(
                sink.port, args.n, endtoend.CONNECTIONS, 300)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            ceiling_cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            ceiling_sys = after.ru_stime - before.ru_stime
            for mode, tracking in ((m, t) for m in modes for t in trackings):
                env = {"COMMUNIQUE_SMTP_PIPELINING": mode,
                       "COMMUNIQUE_TRACKING_DEFAULT": "true" if tracking == "on" else "false", **extra}
                if args.postgres_url:
                    result = endtoend.postgres_blast(args.postgres_url, sink.port, args.n, args.workers,
                                                     300, env)
                else:
                    result = endtoend.sqlite_blast(sink.port, args.n, 300, env)
                worker = result.messages / result.worker_seconds
                total = result.messages / result.seconds
                print(f"pipelining {mode:<4} tracking {tracking:<3}  ceiling {ceiling:,.0f}/s  "
                      f"worker alone {worker:,.0f}/s "
                      f"({worker / ceiling:.2f}x)  end to end {total:,.0f}/s ({total / ceiling:.2f}x)  "
                      f"create {result.create_seconds:.2f}s  rss {result.peak_rss_mb:.0f} MB  "
                      f"busy {result.busy_cores:.2f} cores  load {os.getloadavg()[0]:.1f}  CPU µs/msg: "
                      f"ceiling {ceiling_cpu / args.n * 1e6:.0f} (sys {ceiling_sys / args.n * 1e6:.0f}), "
                      f"worker {result.cpu_seconds / args.n * 1e6:.0f} "
                      f"(sys {result.sys_seconds / args.n * 1e6:.0f})", flush=True)
                time.sleep(0.5)


if __name__ == "__main__":
    main()
