"""Where a ledgerflow worker's time goes per processed job, on PostgreSQL (not part of `make bench`).

python -m bench.profile [--jobs 10000] [--reps 5]

* Server side: a private PostgreSQL (same binaries and settings as the shared one, plus
  `pg_stat_statements`) records every statement of 2 workers x 4 processing `jobs` no-op
  jobs: calls, rows and execution time per statement, hence round trips and server time
  per job. The same for idle-latency jobs (one at a time) shows the wake-up path.
* Client side: py-spy samples one of the two worker processes during the same run; samples
  are grouped by what they were doing (SQLAlchemy compilation, psycopg, JSON, logging...).
* Run-to-run swings: `reps` runs on one database without vacuum (dead rows pile up as they
  do with autovacuum off), then `reps` runs each on a fresh database, with the claim
  statement's buffers (EXPLAIN ANALYZE) before and after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from bench.fair import Ledgerflow, spread, stop, wait_until
from bench.stamp import Stamps, count_lines

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PORT = 5499

#: Samples whose innermost frame is a wait: (name, marks in that frame).
WAITS = [
    (
        "waiting: PostgreSQL's answer (psycopg socket wait)",
        ("Connection.wait (psycopg", "psycopg/waiting.py"),
    ),
    ("idle: event loop select()", ("select (selectors.py",)),
    ("idle: task and database threads waiting for work", ("pool.py:47)", "concurrent/futures/thread.py:81)")),
]
#: What a busy sample was doing: the first rule (in this order) matching any of its frames wins.
CATEGORIES = [
    ("JSON encode/decode", ("json/encoder.py", "json/decoder.py", "json/__init__.py")),
    ("logging (structlog)", ("structlog/",)),
    ("SQLAlchemy statement compilation", ("sqlalchemy/sql/compiler.py", "sqlalchemy/sql/cache_key.py")),
    ("psycopg: waiting for the server", ("psycopg/waiting.py", "psycopg/generators.py")),
    ("psycopg: other", ("psycopg/",)),
    ("SQLAlchemy result rows", ("sqlalchemy/engine/result.py", "sqlalchemy/engine/cursor.py")),
    ("SQLAlchemy execute (other)", ("sqlalchemy/",)),
    ("ledgerflow engine (Python)", ("ledgerflow/engine/",)),
    ("asyncio event loop", ("asyncio/",)),
    ("thread pool / futures", ("concurrent/futures", "threading.py")),
]


@contextlib.contextmanager
def private_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on PORT with pg_stat_statements; yields its admin URL."""
    data = Path(tempfile.mkdtemp(prefix="lf-pgss-"))
    shutil.chown(data, "postgres", "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    initdb = [*as_pg, PG_BIN / "initdb", "-D", data / "db", "-A", "trust", "-U", "postgres"]
    subprocess.run(initdb, check=True, capture_output=True)
    options = (
        f"-p {PORT} -k {data} -c listen_addresses=127.0.0.1 -c shared_preload_libraries=pg_stat_statements "
        "-c pg_stat_statements.track=all -c autovacuum=off -c shared_buffers=128MB -c max_connections=100"
    )
    pg_ctl = [*as_pg, PG_BIN / "pg_ctl", "-D", data / "db"]
    subprocess.run(
        [*pg_ctl, "-o", options, "-l", data / "log", "-w", "start"], check=True, capture_output=True
    )
    url = f"postgresql://postgres@127.0.0.1:{PORT}/postgres"
    try:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_stat_statements")
        yield url
    finally:
        subprocess.run(
            [*as_pg, PG_BIN / "pg_ctl", "-D", data / "db", "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(data, ignore_errors=True)


def statements(admin: str, dbname: str, per: int) -> dict[str, Any]:
    """pg_stat_statements of one database: per-statement calls, rows and time, per `per` jobs."""
    with psycopg.connect(admin) as c:
        rows = c.execute(
            "SELECT s.query, s.calls, s.rows, s.total_exec_time FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s ORDER BY s.total_exec_time DESC",
            (dbname,),
        ).fetchall()
    rows = [r for r in rows if not r[0].startswith(HARNESS)]
    nested = [r for r in rows if r[0].startswith(NESTED)]
    sent = [r for r in rows if not r[0].startswith(NESTED)]
    server_ms = sum(r[3] for r in sent)
    return {
        "statements_per_job": round(sum(r[1] for r in sent) / per, 3),
        "fk_checks_per_job": round(sum(r[1] for r in nested) / per, 3),
        "transactions_per_job": round(sum(r[1] for r in rows if r[0].upper().startswith("COMMIT")) / per, 3),
        "server_ms_per_job": round(server_ms / per, 4),
        "note": "executemany statements are pipelined by psycopg: counted per row, not one round trip each",
        "statements": [
            {
                "query": " ".join(r[0].split())[:160],
                "calls_per_job": round(r[1] / per, 3),
                "rows_per_call": round(r[2] / r[1], 2) if r[1] else 0,
                "ms_per_call": round(r[3] / r[1], 4) if r[1] else 0,
                "share_of_server_time": round(r[3] / server_ms, 3) if server_ms else 0,
            }
            for r in rows[:14]
        ],
    }


#: Statements of the harness (enqueue, progress polls), not of the workers.
HARNESS = ("COPY jobs", "SELECT nextval(", "SELECT count(*) FROM jobs", "INSERT INTO jobs", "SELECT pg_stat")
#: Statements run by the server itself inside another (foreign-key checks).
NESTED = ("SELECT 1 FROM ONLY",)


def _reset(admin: str) -> None:
    with psycopg.connect(admin) as c:
        c.execute("SELECT pg_stat_statements_reset()")


def spy_categories(raw: Path) -> dict[str, Any]:
    """py-spy's raw (collapsed) samples grouped by CATEGORIES, and the top self-time frames."""
    total = 0
    by_category: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        category = next((name for name, marks in WAITS if any(m in frames[-1] for m in marks)), None)
        category = category or next(
            (name for name, marks in CATEGORIES if any(m in f for f in frames for m in marks)), "other"
        )
        by_category[category] += n
        by_leaf[frames[-1]] += n
    share = {k: round(v / total, 3) for k, v in by_category.most_common()} if total else {}
    busy = total - sum(by_category[name] for name, _ in WAITS)
    busy_share = {
        k: round(v / busy, 3) for k, v in by_category.most_common() if k not in dict(WAITS) and busy
    }
    top = (
        [{"frame": k[:120], "share": round(v / total, 3)} for k, v in by_leaf.most_common(12)]
        if total
        else []
    )
    return {
        "samples": total,
        "share_of_samples": share,
        "share_of_busy_samples": busy_share,
        "top_self_frames": top,
    }


def processing_profile(admin: str, jobs: int) -> dict[str, Any]:
    """2 workers x 4 on a backlog of `jobs`; statements of the whole run, py-spy on one worker."""
    system = Ledgerflow("postgresql")
    with _pg_env(admin), system.store(), tempfile.TemporaryDirectory(prefix="lf-spy-") as tmp:
        stamps, raw = Path(tmp) / "stamps", Path(tmp) / "spy.txt"
        procs = system.spawn(2, 4, stamps)
        try:
            system.enqueue_many(["warm-0", "warm-1"])
            wait_until(lambda: count_lines(stamps) >= 2, 120, "profile start-up")
            time.sleep(1)
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                 str(procs[0].pid), "--rate", "250", "--nonblocking", "--format", "raw", "-o", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1)
            _reset(admin)
            system.enqueue_many([str(i) for i in range(jobs)])
            wait_until(lambda: count_lines(stamps) >= jobs + 2, 600, "profile run")
            wait_until(lambda: system.finished() >= jobs + 2, 60, "profile acknowledgements")
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
            stats = statements(admin, system.url.rsplit("/", 1)[1], jobs)
            rate = Stamps.read(stamps).rate(2)
            _reset(admin)
            for i in range(100):  # idle workers: one job at a time, 20 ms apart
                system.enqueue_one(f"idle-{i}")
                time.sleep(0.02)
            wait_until(lambda: count_lines(stamps) >= jobs + 102, 60, "profile idle jobs")
            time.sleep(0.5)
            idle = statements(admin, system.url.rsplit("/", 1)[1], 100)
        finally:
            stop(procs)
        return {
            "jobs": jobs,
            "jobs_per_s": round(rate),
            "backlog": stats,
            "idle_one_job_at_a_time": idle,
            "py_spy_worker": spy_categories(raw) if raw.exists() else {"error": "py-spy wrote nothing"},
        }


@contextlib.contextmanager
def _pg_env(admin: str) -> Iterator[None]:
    """bench.common.database() creates its databases on the private server while this is active."""
    import bench.common as common

    saved = common.PG_ADMIN
    common.PG_ADMIN = admin
    try:
        yield
    finally:
        common.PG_ADMIN = saved


def claim_plan(system: Ledgerflow) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of the claim statement exactly as the worker sends it (rolled back)."""
    from sqlalchemy import event

    from ledgerflow.engine.leases import LeaseSQL

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> Any:
        return "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters

    claim = LeaseSQL(system.app.db, 8.0)._claim
    params = {"queues": ["default"], "tasks": ["bench.noop"], "limit": 16, "worker": "explain", "token": 1}
    with system.app.db.engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", explain, retval=True)
        with conn.begin() as transaction:
            plan = conn.execute(claim, params).cursor.fetchone()[0][0]
            transaction.rollback()
        event.remove(conn, "before_cursor_execute", explain)
        row = conn.exec_driver_sql(
            "SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'jobs'"
        ).first()
    top = plan["Plan"]
    return {
        "ms": round(plan["Execution Time"], 3),
        "shared_buffers_hit": top.get("Shared Hit Blocks"),
        "shared_buffers_read": top.get("Shared Read Blocks"),
        "live_rows": row[0] if row else None,
        "dead_rows": row[1] if row else None,
    }


def swings(jobs: int, reps: int) -> dict[str, Any]:
    """The same run repeated on one database (no vacuum), then each on a fresh database."""
    same: list[dict[str, Any]] = []
    system = Ledgerflow("postgresql")
    with system.store():
        for _ in range(reps):
            same.append(_one_run(system, jobs))
    fresh = []
    for _ in range(reps):
        system = Ledgerflow("postgresql")
        with system.store():
            fresh.append(_one_run(system, jobs))
    return {
        "same_database_no_vacuum": {
            "jobs_per_s": spread([r["jobs_per_s"] for r in same]),
            "runs": same,
        },
        "fresh_database_each_run": {
            "jobs_per_s": spread([r["jobs_per_s"] for r in fresh]),
            "runs": fresh,
        },
    }


def _one_run(system: Ledgerflow, jobs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lf-swing-") as tmp:
        stamps = Path(tmp) / "stamps"
        system.enqueue_many([str(i) for i in range(jobs)])
        before = claim_plan(system)
        load = os.getloadavg()[0]
        done_before = system.finished()
        procs = system.spawn(2, 4, stamps)
        try:
            wait_until(lambda: system.finished() >= done_before + jobs, 600, "swing run")
        finally:
            stop(procs)
        seen = Stamps.read(stamps)
    return {
        "jobs_per_s": round(seen.rate()),
        "load_average": round(load, 2),
        "claim_before_run": before,
        "claim_after_run": claim_plan(system) | {"note": "empty queue: the scan of dead index entries"},
    }


def main(jobs: int, reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        with private_postgres() as admin:
            out["processing"] = processing_profile(admin, jobs)
    except (subprocess.CalledProcessError, FileNotFoundError, psycopg.Error) as exc:
        out["processing"] = {"error": f"private PostgreSQL with pg_stat_statements unavailable: {exc}"}
    out["swings"] = swings(jobs, reps)
    return out


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="bench.profile")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", choices=["processing", "swings"], default=None)
    a = parser.parse_args()
    if a.only == "swings":
        print(json.dumps(swings(a.jobs, a.reps), indent=2))
    elif a.only == "processing":
        with private_postgres() as admin:
            print(json.dumps(processing_profile(admin, a.jobs), indent=2))
    else:
        print(json.dumps(main(a.jobs, a.reps), indent=2))
