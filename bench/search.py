"""Job search at scale: how long each kind of search and bulk count takes over N stored jobs.

    python -m bench.search --jobs 1000000 [--backend sqlite|postgresql|both] [--repeat 5]

Loads N jobs into a fresh database (migrated, so with the search indexes of migration 0012),
shaped like a year of operation: enqueued over 365 days, 90 % completed, 5 % dead with
errors (a few rare ones), the rest waiting; args hold a customer name (5,000 names) and a
unique invoice number, kwargs an amount and a memo. Then it times each search through the
same code the API, CLI and dashboard use (`listing.list_jobs` with a `JobFilter`, a page of
50) and the dry-run count a bulk action shows first, and prints one JSON document: the
median and worst of `--repeat` runs per query, in milliseconds, after one warm-up run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

import ledgerflow.db
from bench.common import database, machine
from ledgerflow import App, JobFilter, JobSpec, JobState
from ledgerflow.api import listing
from ledgerflow.db.tables import jobs
from ledgerflow.engine.search import count_matching

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


def _search_migration() -> Any:
    path = Path(ledgerflow.db.__file__).parent / "migrations" / "versions" / "0012_job_search.py"
    spec = importlib.util.spec_from_file_location("job_search_migration", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(app: App, count: int, now: datetime) -> float:
    """Insert `count` jobs in chunks, PostgreSQL's text index built once at the end (as a
    restore would); returns the seconds taken."""
    rng = random.Random(15)
    started = time.perf_counter()
    search = _search_migration()
    if not app.db.is_sqlite:  # SQLite has no text index (it scans)
        with app.db.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_jobs_search")
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
        if not app.db.is_sqlite:
            conn.exec_driver_sql(search.POSTGRES_INDEX)
        conn.exec_driver_sql("ANALYZE" if app.db.is_sqlite else "ANALYZE jobs")
    return time.perf_counter() - started


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


def write_cost(backend: str, count: int = 20_000, rounds: int = 3) -> dict[str, Any]:
    """Seconds to enqueue `count` plain jobs (`enqueue_many`, 1,000 a call) with the search
    index and without it (dropped), best of `rounds`: what PostgreSQL's index costs each write."""
    out: dict[str, Any] = {"jobs": count}
    with database(backend) as url:
        app = App(database_url=url, log_level="WARNING")
        try:
            app.migrate()
            for label in ("with_index_s", "without_index_s"):
                best = None
                for _ in range(rounds):
                    t = time.perf_counter()
                    for start in range(0, count, 1000):
                        app.enqueue_many(
                            [
                                JobSpec(task="t", args=(f"customer-{i:05d} Trading", f"INV-{i:07d}"))
                                for i in range(start, start + 1000)
                            ]
                        )
                    took = time.perf_counter() - t
                    best = took if best is None else min(best, took)
                out[label] = round(best or 0.0, 2)
                with app.db.begin() as conn:
                    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_jobs_search")
        finally:
            app.close()
    out["jobs_per_second_with"] = round(count / out["with_index_s"])
    out["jobs_per_second_without"] = round(count / out["without_index_s"])
    return out


def run(backend: str, count: int, repeat: int) -> dict[str, Any]:
    with database(backend) as url:
        app = App(database_url=url, log_level="WARNING")
        try:
            app.migrate()
            now = datetime.now(UTC)
            load_seconds = load(app, count, now)
            results = {name: measure(app, fn, repeat) for name, fn in queries(now, count).items()}
        finally:
            app.close()
    return {"backend": backend, "jobs": count, "load_seconds": round(load_seconds, 1), "queries": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write-cost-only", action="store_true", help="only time enqueue with/without index")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    out: dict[str, Any] = {"machine": machine(), "write_cost": {b: write_cost(b) for b in backends}}
    if not args.write_cost_only:
        out["runs"] = [run(b, args.jobs, args.repeat) for b in backends]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
