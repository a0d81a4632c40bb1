"""The claim statement alone: what the `NOT_LIMITED` check costs an unlimited queue.

python -m bench.claim [--backends sqlite,postgresql] [--backlog 20000] [--claims 1500] [--batch 10]

A worker's claim is one statement; this times it in a loop (claim `--batch` jobs, commit) on a
backlog, with no limit anywhere and with a limit on another queue (so `job_limits` is not empty).
Run it with an older checkout on `PYTHONPATH` to compare (it only uses `LeaseSQL.claim`). Prints
JSON: median and 90th percentile milliseconds per claim transaction, and jobs claimed per second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from bench.common import database, machine
from ledgerflow import App, JobSpec
from ledgerflow.engine.leases import LeaseSQL


def _measure(app: App, claims: int, batch: int) -> dict[str, float]:
    sql = LeaseSQL(app.db, 60)
    timings: list[float] = []
    taken = 0
    for _ in range(claims):
        started = time.perf_counter()
        with app.db.begin() as conn:
            taken += len(
                sql.claim(conn, worker_id="bench", queues=["default"], tasks=["bench.noop"], limit=batch)
            )
        timings.append(time.perf_counter() - started)
    timings.sort()
    return {
        "median_ms": round(statistics.median(timings) * 1000, 3),
        "p90_ms": round(timings[int(len(timings) * 0.9)] * 1000, 3),
        "jobs_per_second": round(taken / sum(timings), 1),
    }


def run(backends: list[str], backlog: int, claims: int, batch: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for backend in backends:
        with database(backend) as url:
            app = App(database_url=url, log_level="WARNING")
            app.migrate()
            app.enqueue_many([JobSpec(task="bench.noop", args=(i,)) for i in range(backlog)])
            result = {"no_limits": _measure(app, claims, batch)}
            limits = getattr(app, "limits", None)
            if limits is not None:  # a checkout with global limits: one on another queue
                limits.set("queue", "mail", concurrency=3)
                result["limit_on_another_queue"] = _measure(app, claims, batch)
            out[backend] = result
            app.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.claim")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--claims", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=10)
    args = parser.parse_args()
    report = {
        "machine": machine(),
        "backlog": args.backlog,
        "claims": args.claims,
        "batch": args.batch,
        "results": run(args.backends.split(","), args.backlog, args.claims, args.batch),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
