"""What taking an index off a fresh job's enqueue would save, and what its readers would lose
(issue 14, docs/benchmarks.md "Indexes written per enqueue"; not part of `make bench`).

python -m bench.index_reads [--backends sqlite,postgresql] [--rounds 3] [--reps 5] [--calls 500]
                            [--jobs 1000000] [--waiting 100000] [--parts reads,enqueue,pages]

Variants of the indexes a plain job enters at enqueue besides the claim index (applied with
plain DDL to a migrated database; `as_is` is the schema of the tree):

* `as_is`: `ix_jobs_state_task_queue` (state, task, queue), `ix_jobs_state_id` (state, id),
  `ix_jobs_created_at` (created_at);
* `no_created_at`: `ix_jobs_created_at` dropped (its readers: the enqueue-time filters of
  listings, searches and bulk actions);
* `merged`: the two state indexes merged into `ix_jobs_state_id` (SQLite: state, id, task,
  queue; PostgreSQL: state, id INCLUDE task, queue), one entry fewer per enqueue, claim and
  completion; the name kept so that `tables.STATE_INDEX` still resolves.

Parts, each variant interleaved with the others round by round:

* `reads`: `jobs` jobs (the `waiting` newest available, 5,000 dead, the rest completed; 10
  tasks x 3 queues; one job a second, so the history spans `jobs` seconds) written by SQL; the
  reads of every query a fresh job's indexes serve, through the application's own functions
  (metrics' counts of every state, the alert check's and queue summary's counts, listings by
  state, the limits' running counts, autostop's dead per task, the enqueue-time filters of
  listing, search count and bulk count): ms per call (SQLite: CPU of this process, where it
  runs; PostgreSQL: wall, the work is the server's), median of `reps` per round;
  PostgreSQL after `VACUUM ANALYZE` (autovacuum's work), SQLite without `ANALYZE` (nothing in
  ledgerflow runs it);
* `enqueue`: `calls` one-call enqueues (`App.enqueue`) and one bulk enqueue of 5,000
  (`App.enqueue_many`, `Task.prepare` outside the timing) per round, on a store per variant:
  CPU µs per call or job of this process (SQLite's work included; PostgreSQL: the client's
  only, the server's saving is `bench.indexes`'s);
* `pages` (SQLite): which b-trees one `App.enqueue` commit writes to the log, per enqueue
  (frames of the commit mapped to their b-tree by `dbstat`).
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import sqlite3
import statistics
import struct
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import database, machine

VARIANTS = ("as_is", "no_created_at", "merged")
_AS_IS = {
    "ix_jobs_state_task_queue": "CREATE INDEX ix_jobs_state_task_queue ON jobs (state, task, queue)",
    "ix_jobs_state_id": "CREATE INDEX ix_jobs_state_id ON jobs (state, id)",
    "ix_jobs_created_at": "CREATE INDEX ix_jobs_created_at ON jobs (created_at)",
}
_COLUMNS = (
    "task, queue, priority, state, args, kwargs, attempt, max_attempts, timeout, has_dependencies, "
    "scheduled_at, created_at, finished_at, errors"
)


def layout(conn: Any, backend: str, variant: str) -> None:
    """Put the three indexes of `variant` in place (driver connection, autocommit)."""
    for name in _AS_IS:
        conn.execute(f"DROP INDEX IF EXISTS {name}")
    wanted = dict(_AS_IS)
    if variant == "no_created_at":
        del wanted["ix_jobs_created_at"]
    elif variant == "merged":
        del wanted["ix_jobs_state_task_queue"]
        wanted["ix_jobs_state_id"] = (
            "CREATE INDEX ix_jobs_state_id ON jobs (state, id, task, queue)"
            if backend == "sqlite"
            else "CREATE INDEX ix_jobs_state_id ON jobs (state, id) INCLUDE (task, queue)"
        )
    for sql in wanted.values():
        conn.execute(sql)
    if backend == "postgresql":
        conn.execute("VACUUM ANALYZE jobs")


def _driver(url: str, backend: str) -> Any:
    if backend == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None, timeout=60)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn
    import psycopg

    return psycopg.connect(url, autocommit=True)


def seed(conn: Any, backend: str, jobs: int, waiting: int) -> None:
    """`jobs` jobs one second apart ending now: the `waiting` newest available, 5,000 dead
    before them, the rest completed."""
    done, dead = jobs - waiting - 5000, jobs - waiting
    if backend == "sqlite":
        stamp = "strftime('%Y-%m-%d %H:%M:%f000', 'now', '-' || (? - x) || ' seconds')"
        conn.execute(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) "
            f"INSERT INTO jobs ({_COLUMNS}) SELECT 'app.task_' || (x % 10), 'queue_' || (x % 3), 100, "
            "CASE WHEN x <= ? THEN 'completed' WHEN x <= ? THEN 'dead' ELSE 'available' END, "
            f"'[0]', '{{}}', 1, 5, 30.0, 0, {stamp}, {stamp}, CASE WHEN x <= ? THEN {stamp} END, '[]' FROM n",
            (jobs, done, dead, jobs, jobs, dead, jobs),
        )
        return
    stamp = "now() - (%(n)s - x) * interval '1 second'"
    conn.execute(
        f"INSERT INTO jobs ({_COLUMNS}) SELECT 'app.task_' || mod(x, 10), 'queue_' || mod(x, 3), 100, "
        "CASE WHEN x <= %(done)s THEN 'completed' WHEN x <= %(dead)s THEN 'dead' ELSE 'available' END, "
        f"'[0]', '{{}}', 1, 5, 30.0, false, {stamp}, {stamp}, CASE WHEN x <= %(dead)s THEN {stamp} END, "
        "'[]' FROM generate_series(1, %(n)s) AS x",
        {"n": jobs, "done": done, "dead": dead},
    )


def reads(app: Any) -> dict[str, Callable[[], Any]]:
    """Every read a fresh job's state and enqueue-time indexes serve, as the application runs it."""
    from sqlalchemy import func, select

    from ledgerflow.api.listing import list_jobs
    from ledgerflow.db.tables import jobs
    from ledgerflow.engine.limits import running_by_limit
    from ledgerflow.engine.search import BulkActions, JobFilter, count_matching
    from ledgerflow.engine.states import CLAIMABLE, JobState

    store, db = app.store, app.db
    now = datetime.now(UTC)
    five_days = now - timedelta(days=5)
    window = JobFilter(enqueued_after=five_days, enqueued_before=five_days + timedelta(hours=1))
    old = JobFilter(enqueued_before=now - timedelta(days=7))

    def dead_per_task() -> Any:  # autostop's check
        with db.read() as conn:
            query = select(jobs.c.task, func.count()).where(jobs.c.state == JobState.DEAD)
            return conn.execute(query.group_by(jobs.c.task)).all()

    return {
        "counts, every state (metrics scrape)": lambda: store.counts(),
        "counts, claimable + dead (alert check)": lambda: store.counts([*CLAIMABLE, JobState.DEAD]),
        "queue summary": lambda: store.queue_summary(),
        "list available, newest 50": lambda: list_jobs(db, state="available"),
        "list dead, newest 50": lambda: list_jobs(db, state="dead"),
        "running per limit": lambda: running_by_limit(db),
        "dead per task (autostop)": dead_per_task,
        "list enqueued in a 1 h window 5 days ago": lambda: list_jobs(db, filt=window),
        "search count, 1 h window": lambda: count_matching(db, window),
        "bulk count, enqueued over 7 days ago": lambda: BulkActions(store).count(old, "delete"),
    }


def run_reads(backends: list[str], rounds: int, reps: int, jobs: int, waiting: int) -> dict[str, Any]:
    from ledgerflow import App

    out: dict[str, Any] = {}
    for backend in backends:
        with database(backend) as url:
            app = App(database_url=url, log_level="WARNING")
            app.migrate()
            driver = _driver(url, backend)
            seed(driver, backend, jobs, waiting)
            timings: dict[str, dict[str, list[float]]] = {v: collections.defaultdict(list) for v in VARIANTS}
            # SQLite runs in this process: its CPU; PostgreSQL's work is the server's: wall
            clock = time.process_time if backend == "sqlite" else time.perf_counter
            for r in range(rounds):
                order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
                for variant in order:
                    layout(driver, backend, variant)
                    app.db.engine.dispose()  # no connection keeps a plan of the old layout
                    for name, call in reads(app).items():
                        call()  # warm
                        times = []
                        for _ in range(reps):
                            started = clock()
                            call()
                            times.append((clock() - started) * 1000)
                        timings[variant][name].append(statistics.median(times))
            layout(driver, backend, "as_is")
            driver.close()
            app.close()
        out[backend] = {v: {name: _spread(ms, 2) for name, ms in per.items()} for v, per in timings.items()}
    return out


def run_enqueue(backends: list[str], rounds: int, calls: int) -> dict[str, Any]:
    from contextlib import ExitStack

    from bench.apps import noop
    from ledgerflow import App

    out: dict[str, Any] = {}
    for backend in backends:
        with ExitStack() as stack:
            apps = {}
            for variant in VARIANTS:
                url = stack.enter_context(database(backend))
                app = App(database_url=url, log_level="WARNING")
                stack.callback(app.close)
                app.migrate()
                driver = _driver(url, backend)
                layout(driver, backend, variant)
                driver.close()
                for i in range(100):
                    app.enqueue(noop.prepare(f"warm-{i}"))
                apps[variant] = app
            cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
            bulk: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for r in range(rounds):
                order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
                for variant in order:
                    app = apps[variant]
                    gc.collect()
                    started = time.process_time()
                    for i in range(calls):
                        app.enqueue(noop.prepare(f"{r}-{i}"))
                    cpu[variant].append((time.process_time() - started) / calls * 1e6)
                    specs = [noop.prepare(f"bulk-{r}-{i}") for i in range(5000)]
                    gc.collect()
                    started = time.process_time()
                    app.enqueue_many(specs)
                    bulk[variant].append((time.process_time() - started) / len(specs) * 1e6)
            out[backend] = {
                v: {"one_call_cpu_us": _spread(cpu[v], 1), "bulk_cpu_us_per_job": _spread(bulk[v], 2)}
                for v in VARIANTS
            }
    return out


def run_pages(commits: int = 300) -> dict[str, dict[str, float]]:
    """SQLite, per variant: 4 KiB pages per `App.enqueue` commit, by b-tree."""
    from bench.apps import noop
    from ledgerflow import App

    out: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        with database("sqlite") as url:
            app = App(database_url=url, log_level="WARNING")
            app.migrate()
            driver = _driver(url, "sqlite")
            layout(driver, "sqlite", variant)
            for i in range(2000):
                app.enqueue(noop.prepare(f"warm-{i}"))
            path = url.removeprefix("sqlite:///")
            wal = path + "-wal"
            driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the log grows from empty: no frame rewritten
            driver.execute("BEGIN")  # a reader keeps the log from being reset meanwhile
            driver.execute("SELECT count(*) FROM jobs").fetchone()
            page = 4096
            written: list[list[int]] = []
            for i in range(commits):
                before = os.path.getsize(wal)
                app.enqueue(noop.prepare(f"m{i}"))
                with open(wal, "rb") as f:
                    f.seek(before)
                    data = f.read()
                offsets = range(0, len(data), page + 24)
                written.append([struct.unpack(">I", data[o : o + 4])[0] for o in offsets])
            driver.execute("COMMIT")
            names: dict[int, str] = {}
            seen: collections.Counter[str] = collections.Counter()
            for frames in written:
                for p in frames:
                    if p not in names:
                        row = driver.execute("SELECT name FROM dbstat WHERE pageno = ?", (p,)).fetchone()
                        names[p] = row[0] if row else "(freed)"
                    seen[names[p]] += 1
            out[variant] = {n: round(k / commits, 2) for n, k in seen.most_common()}
            out[variant]["(all)"] = round(sum(seen.values()) / commits, 2)
            driver.close()
            app.close()
    return out


def _spread(values: list[float], digits: int) -> str:
    """median (min-max) n=..."""
    m, lo, hi = (round(v, digits) for v in (statistics.median(values), min(values), max(values)))
    return f"{m} ({lo}-{hi}) n={len(values)}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.index_reads")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--waiting", type=int, default=100_000)
    parser.add_argument("--parts", default="reads,enqueue,pages")
    args = parser.parse_args()
    backends, parts = args.backends.split(","), args.parts.split(",")
    result: dict[str, Any] = {"machine": machine(), "load": os.getloadavg()}
    if "pages" in parts:
        result["pages_per_enqueue"] = run_pages()
    if "enqueue" in parts:
        result["enqueue_cpu_us"] = run_enqueue(backends, max(args.rounds, 5), args.calls)
    if "reads" in parts:
        result["reads_ms"] = run_reads(backends, args.rounds, args.reps, args.jobs, args.waiting)
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
