"""The claim statement alone: what the `NOT_LIMITED` check costs a queue without limits.

python -m bench.claim [--backends sqlite,postgresql] [--backlog 20000] [--claims 1500] [--batch 10]

A worker's claim is one statement. This times it in a loop (claim `--batch` jobs, commit) on a
backlog, alternating claim by claim between the shipped statement and the same statement built
without the `NOT_LIMITED` check (as before global limits), so both see the same load and the same
backlog; then again with a limit on another queue (`job_limits` not empty). Prints JSON: median
and 90th percentile milliseconds per claim transaction for each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any
from unittest import mock

from sqlalchemy import delete, true

from bench.common import database, machine
from ledgerflow import App, JobSpec
from ledgerflow.db.tables import job_executions, jobs
from ledgerflow.engine import leases
from ledgerflow.engine.leases import LeaseSQL


def _summary(timings: list[float]) -> dict[str, float]:
    timings = sorted(timings)
    return {
        "median_ms": round(statistics.median(timings) * 1000, 3),
        "p90_ms": round(timings[int(len(timings) * 0.9)] * 1000, 3),
    }


def _ab(app: App, claims: int, batch: int) -> dict[str, Any]:
    shipped = LeaseSQL(app.db, 60)
    with mock.patch.object(leases, "NOT_LIMITED", true()):
        without_check = LeaseSQL(app.db, 60)
    timings: dict[str, list[float]] = {"with_check": [], "without_check": []}
    for i in range(claims):
        name, sql = ("with_check", shipped) if i % 2 == 0 else ("without_check", without_check)
        started = time.perf_counter()
        with app.db.begin() as conn:
            sql.claim(conn, worker_id="bench", queues=["default"], tasks=["bench.noop"], limit=batch)
        timings[name].append(time.perf_counter() - started)
    out: dict[str, Any] = {name: _summary(t) for name, t in timings.items()}
    out["median_ratio"] = round(out["with_check"]["median_ms"] / out["without_check"]["median_ms"], 3)
    return out


def _fresh_backlog(app: App, backlog: int) -> None:
    with app.db.begin() as conn:
        conn.execute(delete(job_executions))
        conn.execute(delete(jobs))
    app.enqueue_many([JobSpec(task="bench.noop", args=(i,)) for i in range(backlog)])


def run(backends: list[str], backlog: int, claims: int, batch: int) -> dict[str, Any]:
    if claims * batch > backlog:
        raise SystemExit(f"--claims x --batch ({claims * batch}) must not exceed --backlog ({backlog})")
    out: dict[str, Any] = {}
    for backend in backends:
        with database(backend) as url:
            app = App(database_url=url, log_level="WARNING")
            app.migrate()
            _fresh_backlog(app, backlog)
            result = {"no_limits": _ab(app, claims, batch)}
            app.limits.set("queue", "mail", concurrency=3)
            _fresh_backlog(app, backlog)
            result["limit_on_another_queue"] = _ab(app, claims, batch)
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
