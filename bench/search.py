"""Job search at scale: how long each kind of search and bulk count takes over N stored jobs.

    python -m bench.search --jobs 1000000 [--backend sqlite|postgresql|both] [--repeat 5]

Loads N jobs into a fresh database (migrated), shaped like a year of operation: enqueued over
365 days, 90 % completed, 5 % dead with errors (a few rare ones), the rest waiting; args hold a
customer name (5,000 names) and a unique invoice number, kwargs an amount and a memo. It fills
the job search indexes as the workers' maintenance loop does (`index_pending`), then times
each search through the same code the API, CLI and dashboard use (`listing.list_jobs` with a
`JobFilter`, a page of 50) and the dry-run count a bulk action shows first, and prints one JSON document: the
median and worst of `--repeat` runs per query, in milliseconds, after one warm-up run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select

from bench.common import database, machine
from ledgerflow import App, JobFilter, JobSpec, JobState
from ledgerflow.api import listing
from ledgerflow.db.migrate import migrate
from ledgerflow.db.tables import jobs
from ledgerflow.engine.search import count_matching, index_pending

S = JobState
CHUNK = 5_000
NAMES = 5_000
ERRORS = [
    ("TimeoutError", "bank API did not answer within 30s"),
    ("ConnectionError", "connection reset by peer while uploading the statement"),
    ("ValueError", "amount does not match the invoice total"),
]
RARE_ERROR = ("PermissionError", "account FROZEN-7731 by the compliance team")


def _rows(count: int, now: datetime, rng: random.Random) -> Any:
    start = now - timedelta(days=365)
    step = timedelta(days=365) / count
    for i in range(count):
        created = start + step * i
        roll = rng.random()
        state = S.COMPLETED if roll < 0.90 else S.DEAD if roll < 0.95 else S.AVAILABLE
        errors: list[dict[str, Any]] = []
        if state == S.DEAD:
            kind, message = RARE_ERROR if i % 1000 == 7 else rng.choice(ERRORS)
            errors = [
                {"attempt": 1, "type": kind, "message": message, "traceback": None, "at": created.isoformat()}
            ]
        finished = created + timedelta(seconds=rng.uniform(0.05, 30)) if state != S.AVAILABLE else None
        yield {
            "task": rng.choice(["send_invoice", "sync_bank", "export_row", "ocr_receipt"]),
            "queue": rng.choice(["default", "mail", "exports"]),
            "priority": 5,
            "state": str(state),
            "args": [f"customer-{rng.randrange(NAMES):05d} Trading", f"INV-{i:07d}"],
            "kwargs": {
                "amount": rng.randrange(100, 1_000_000),
                "memo": rng.choice(["monthly fee", "refund", "deposit"]),
            },
            "attempt": 1 if state != S.AVAILABLE else 0,
            "max_attempts": 1,
            "timeout": 60.0,
            "scheduled_at": created,
            "created_at": created,
            "started_at": created if state != S.AVAILABLE else None,
            "finished_at": finished,
            "errors": errors,
        }


def load(app: App, count: int, now: datetime) -> float:
    """Insert `count` jobs in chunks (the search indexes are filled afterwards by `catch_up`,
    as workers' maintenance does after a restore); returns the seconds taken."""
    rng = random.Random(15)
    started = time.perf_counter()
    batch: list[dict[str, Any]] = []
    for row in _rows(count, now, rng):
        batch.append(row)
        if len(batch) == CHUNK:
            _insert(app, batch)
            batch = []
            print(f"  {row['args'][1]}", file=sys.stderr, end="\r")
    if batch:
        _insert(app, batch)
    with app.db.begin() as conn:
        app.db.lift_limits(conn)
        conn.exec_driver_sql("ANALYZE" if app.db.is_sqlite else "ANALYZE jobs")
    return time.perf_counter() - started


def catch_up(app: App) -> dict[str, Any]:
    """Fill the job search index up to the newest job, as workers' maintenance does
    (`index_pending`, 2,000 jobs a transaction), then ANALYZE it (autovacuum would); wall
    seconds and CPU per job indexed (this process)."""
    wall, cpu, done = time.perf_counter(), time.process_time(), 0
    while step := index_pending(app.db, budget=10.0):
        done += step
        print(f"  indexed {done}", file=sys.stderr, end="\r")
    cpu = time.process_time() - cpu
    with app.db.begin() as conn:
        conn.exec_driver_sql("ANALYZE" if app.db.is_sqlite else "ANALYZE job_search, job_error_search")
    return {
        "indexed": done,
        "seconds": round(time.perf_counter() - wall, 1),
        "cpu_us_per_job": round(cpu / done * 1e6, 1) if done else None,
    }


def _insert(app: App, batch: list[dict[str, Any]]) -> None:
    with app.db.begin() as conn:
        app.db.lift_limits(conn)
        conn.execute(insert(jobs), batch)


def queries(now: datetime, count: int) -> dict[str, Callable[[App], Any]]:
    day = timedelta(days=1)
    middle = now - timedelta(days=180)

    def page(**kwargs: Any) -> Callable[[App], Any]:
        return lambda app: listing.list_jobs(app.db, limit=50, filt=JobFilter(**kwargs))

    def count_of(action: str, **kwargs: Any) -> Callable[[App], Any]:
        return lambda app: app.store.bulk(action, JobFilter(**kwargs), dry_run=True)  # type: ignore[arg-type]

    return {
        "text: one invoice number (1 hit)": page(text=f"INV-{count // 2:07d}"),
        "text: one customer (~1 in 5,000)": page(text="customer-01234"),
        "text: a memo every third job holds": page(text="refund"),
        "text: in every job (a kwargs key)": page(text="amount"),
        "text: no match": page(text="no-such-text"),
        "error: rare (1 in 20,000 jobs)": page(error="FROZEN-7731"),
        "error: a third of the dead jobs": page(error="timeout"),
        "error + state dead + queue": page(error="connection reset", states=(S.DEAD,), queue="mail"),
        "enqueued in one hour, half a year ago": page(
            enqueued_after=middle, enqueued_before=middle + day / 24
        ),
        "finished in one day, half a year ago": page(finished_after=middle, finished_before=middle + day),
        "text + enqueued in one month": page(
            text="customer-01234", enqueued_after=middle, enqueued_before=middle + 30 * day
        ),
        "dashboard match count (up to 10,000): one customer": lambda app: count_matching(
            app.db, JobFilter(text="customer-01234")
        ),
        "dashboard match count (up to 10,000): in every job": lambda app: count_matching(
            app.db, JobFilter(text="amount")
        ),
        "bulk dry-run count: retry dead of one error": count_of(
            "retry", error="FROZEN-7731", states=(S.DEAD,)
        ),
        "bulk dry-run count: delete completed, older than 300 days": count_of(
            "delete", states=(S.COMPLETED,), enqueued_before=now - 300 * day
        ),
    }


def measure(app: App, fn: Callable[[App], Any], repeat: int) -> dict[str, Any]:
    fn(app)  # warm-up: plans cached, pages in memory
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn(app)
        times.append((time.perf_counter() - t) * 1000)
    if isinstance(result, int):
        found = result
    else:
        found = result.count if hasattr(result, "count") and not isinstance(result, list) else len(result)
    return {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1), "rows": found}


def enqueue_ab(backend: str, rounds: int = 5, bulk: int = 5_000, single: int = 500) -> dict[str, Any]:
    """Enqueue cost without (schema at 0013) and with migration 0015's search index, A/B
    interleaved `rounds` times: `enqueue_many` of `bulk` jobs (1,000 a call) and `single` one-job
    `enqueue` calls; jobs/s (median) and CPU microseconds per job (median, this process)."""
    figures: dict[str, dict[str, list[float]]] = {}
    with database(backend) as url_a, database(backend) as url_b:
        apps = {"without_0015": App(database_url=url_a, log_level="WARNING")}
        apps["with_0015"] = App(database_url=url_b, log_level="WARNING")
        try:
            migrate(apps["without_0015"].db, "0013")
            apps["with_0015"].migrate()
            for n in range(rounds):
                for label in sorted(apps, reverse=n % 2 == 1):  # alternate which goes first
                    app, got = apps[label], figures.setdefault(label, {})
                    specs = [
                        JobSpec(
                            task="t", args=(f"customer-{i:05d} Trading", f"INV-{i:07d}"), kwargs={"memo": "x"}
                        )
                        for i in range(bulk)
                    ]
                    wall, cpu = time.perf_counter(), time.process_time()
                    for start in range(0, bulk, 1000):
                        app.enqueue_many(specs[start : start + 1000])
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    got.setdefault("bulk_jobs_per_s", []).append(bulk / wall)
                    got.setdefault("bulk_cpu_us_per_job", []).append(cpu / bulk * 1e6)
                    wall, cpu = time.perf_counter(), time.process_time()
                    for spec in specs[:single]:
                        app.enqueue(spec)
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    got.setdefault("single_jobs_per_s", []).append(single / wall)
                    got.setdefault("single_cpu_us_per_job", []).append(cpu / single * 1e6)
        finally:
            for app in apps.values():
                app.close()
    return {
        "rounds": rounds,
        **{
            label: {k: round(statistics.median(v), 1) for k, v in got.items()}
            for label, got in figures.items()
        },
    }


def run(backend: str, count: int, repeat: int, url: str | None = None) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        url = url or stack.enter_context(database(backend))
        app = stack.enter_context(contextlib.closing(App(database_url=url, log_level="WARNING")))
        app.migrate()
        with app.db.read() as conn:
            loaded = conn.execute(select(func.count()).select_from(jobs)).scalar_one()
            newest = conn.execute(select(func.max(jobs.c.created_at))).scalar()
        out: dict[str, Any] = {"backend": backend, "jobs": count}
        if loaded:  # a database loaded by an earlier run (--database): its jobs, its time
            count, now = loaded, newest + timedelta(seconds=1)
            out["jobs"] = loaded
        else:
            now = datetime.now(UTC)
            out["load_seconds"] = round(load(app, count, now), 1)
        out["catch_up"] = catch_up(app)
        out["queries"] = {name: measure(app, fn, repeat) for name, fn in queries(now, count).items()}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database", help="keep the jobs in this database (loaded once, reused)")
    parser.add_argument("--enqueue-only", action="store_true", help="only the enqueue A/B")
    parser.add_argument("--no-enqueue", action="store_true", help="skip the enqueue A/B")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    out: dict[str, Any] = {"machine": machine()}
    if not args.no_enqueue:
        out["enqueue_ab"] = {b: enqueue_ab(b) for b in backends}
    if not args.enqueue_only:
        out["runs"] = [run(b, args.jobs, args.repeat, args.database) for b in backends]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
