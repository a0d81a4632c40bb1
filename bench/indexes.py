"""What each index of `jobs` costs an enqueue and a claim + completion (not part of `make bench`).

python -m bench.indexes [--backends sqlite,postgresql] [--jobs 20000] [--reps 3] [--schema-only]

On a fresh migrated database, for the schema as it is and with each index of `jobs` dropped in
turn (after a warm-up round; variants interleaved, each one first in some round; `reps`
rounds; `--schema-only`: no index dropped, to compare two trees), the same three phases run
on `jobs` alone with plain SQL: `jobs` one-row enqueues, a claim of every job in batches of 20
(state, attempt, lease columns) and their completion in batches of 20 (state, finished_at,
lease cleared).

SQLite: one transaction per enqueue (as `enqueue`), CPU µs per job of this process (SQLite runs
in it) and bytes written to the write-ahead log per job. PostgreSQL: batches of 500 rows under
`EXPLAIN (ANALYZE, WAL)`: the server's execution time and WAL bytes per job (other sessions'
WAL on a shared server does not count). An index's cost is the baseline minus its variant.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.common import database

_COLUMNS = (
    "task, queue, priority, state, args, kwargs, max_attempts, timeout, scheduled_at, created_at, errors"
)
_CLAIM = (
    "state = 'running', attempt = attempt + 1, started_at = {now}, worker_id = 'w', "
    "lease_token = {token}, lease_expires_at = {later}"
)
_COMPLETE = "state = 'completed', finished_at = {now}, lease_token = NULL, lease_expires_at = NULL"


def _indexes(cur: Any, backend: str) -> dict[str, str]:
    """name → CREATE statement of every index of `jobs` but the primary key."""
    if backend == "sqlite":
        rows = cur.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs'")
    else:
        rows = cur.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs' AND indexname <> 'pk_jobs'"
        )
    return {name: sql for name, sql in rows.fetchall() if sql}


def _sqlite_round(path: str, jobs: int) -> dict[str, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    wal = path + "-wal"
    out: dict[str, float] = {}

    def phase(name: str, run: Callable[[], None]) -> None:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        started = time.process_time()
        run()
        out[name + "_cpu_us"] = (time.process_time() - started) / jobs * 1e6
        out[name + "_wal_bytes"] = os.path.getsize(wal) / jobs

    now = datetime.now(UTC).replace(tzinfo=None)
    stamp = now.isoformat(" ")
    later = (now + timedelta(seconds=60)).isoformat(" ")

    def enqueue() -> None:
        sql = (
            f"INSERT INTO jobs ({_COLUMNS}) "
            "VALUES ('noop', 'default', 0, 'available', ?, '{}', 3, 60.0, ?, ?, '[]')"
        )
        for i in range(jobs):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql, (json.dumps([f"inv-{i:07d}", f"Customer {i % 5000}"]), stamp, stamp))
            conn.execute("COMMIT")

    def batches(values: str) -> Callable[[], None]:
        def run() -> None:
            first = conn.execute("SELECT min(id) FROM jobs").fetchone()[0]
            for low in range(first, first + jobs, 20):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(f"UPDATE jobs SET {values} WHERE id >= ? AND id < ?", (low, low + 20))
                conn.execute("COMMIT")

        return run

    phase("enqueue", enqueue)
    phase("claim", batches(_CLAIM.format(now=f"'{stamp}'", token=7, later=f"'{later}'")))
    phase("complete", batches(_COMPLETE.format(now=f"'{stamp}'")))
    conn.execute("DELETE FROM jobs")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return out


def _explained(cur: Any, sql: str) -> tuple[float, int]:
    """Execution ms and WAL bytes of one statement."""
    plan = cur.execute("EXPLAIN (ANALYZE, WAL, FORMAT JSON) " + sql).fetchone()[0][0]
    return plan["Execution Time"], int(plan["Plan"].get("WAL Bytes", 0))


def _postgres_round(url: str, jobs: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("SET synchronous_commit = off")
        step = 500

        def phase(name: str, statement: Callable[[int], str]) -> None:
            ms = wal = 0.0
            for low in range(0, jobs, step):
                took, written = _explained(cur, statement(low))
                ms, wal = ms + took, wal + written
            out[name + "_server_us"] = ms * 1000 / jobs
            out[name + "_wal_bytes"] = wal / jobs

        phase(
            "enqueue",
            lambda low: (
                f"INSERT INTO jobs ({_COLUMNS}) SELECT 'noop', 'default', 0, 'available', "
                "jsonb_build_array('inv-' || lpad(g::text, 7, '0'), 'Customer ' || g % 5000), '{}', 3, 60.0, "
                f"now(), now(), '[]' FROM generate_series({low}, {low + 499}) g"
            ),
        )
        first = cur.execute("SELECT min(id) FROM jobs").fetchone()[0]
        ranged = "UPDATE jobs SET {values} WHERE id >= {low} AND id < {high}"
        claim = _CLAIM.format(now="now()", token=7, later="now() + interval '60 s'")
        phase("claim", lambda low: ranged.format(values=claim, low=first + low, high=first + low + step))
        complete = _COMPLETE.format(now="now()")
        phase(
            "complete", lambda low: ranged.format(values=complete, low=first + low, high=first + low + step)
        )
        cur.execute("DELETE FROM jobs")
        cur.execute("VACUUM jobs")
    return out


def _round(path: str, url: str, backend: str, jobs: int) -> dict[str, float]:
    if backend == "sqlite":
        return _sqlite_round(path, jobs)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("VACUUM ANALYZE jobs")
    return _postgres_round(url, jobs)


def run(backend: str, jobs: int, reps: int, each: bool = True) -> dict[str, Any]:
    from ledgerflow.db.database import Database
    from ledgerflow.db.migrate import migrate

    with database(backend) as url:
        db = Database(url)
        migrate(db)
        db.dispose()
        raw = url.removeprefix("sqlite:///")
        connect: Callable[[], Any] = (
            (lambda: sqlite3.connect(raw, isolation_level=None))
            if backend == "sqlite"
            else (lambda: psycopg.connect(url, autocommit=True))
        )
        with connect() as admin:
            defs = _indexes(admin, backend)
        names = ["(all)", *defs] if each else ["(all)"]
        results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        _round(raw, url, backend, jobs)  # warm-up: a fresh file grows, later rounds reuse its pages
        for rep in range(reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:  # each variant first once
                with connect() as admin:
                    if name != "(all)":
                        admin.execute(f"DROP INDEX {name}")
                results[name].append(_round(raw, url, backend, jobs))
                with connect() as admin:
                    if name != "(all)":
                        admin.execute(defs[name])
        return {
            name: {key: round(statistics.median(r[key] for r in runs), 1) for key in runs[0]}
            for name, runs in results.items()
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--schema-only", action="store_true", help="the schema as it is, no index dropped")
    args = parser.parse_args()
    report: dict[str, Any] = {"load": os.getloadavg(), "jobs": args.jobs, "reps": args.reps}
    for backend in args.backends.split(","):
        report[backend] = run(backend, args.jobs, args.reps, each=not args.schema_only)
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
