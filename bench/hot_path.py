"""PostgreSQL server time per job of the hot path and of the job search indexer (not part of
`make bench`).

    python -m bench.hot_path [--jobs 10000] [--single 2000] [--port 5497] [--empty]

On a private PostgreSQL cluster with `pg_stat_statements` (bench.profile's, on its own port),
a fresh migrated database: `single` one-call enqueues, then `jobs` jobs enqueued 1,000 a call
(COPY), each with arguments shaped like bench.search's invoices (`--empty`: none), then one
burst worker in this process (concurrency 4) runs every job (a no-op task), its maintenance
loop filling the search index meanwhile as in production, then `index_pending` indexes what
is left. Prints the server's execution time per job of each phase, the statements of the
worker split into claim, completion, search indexer and other (total time / jobs), and the
top statements. Compare trees by running it with each tree first on `PYTHONPATH`, interleaved.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import psycopg

import bench.profile as profile
from bench.common import database, machine
from bench.profile import _pg_env, private_postgres
from ledgerflow import App, JobSpec
from ledgerflow.engine.search import index_pending

#: Statement kinds of the worker's run, by a mark in their text (first match wins).
KINDS = [
    ("search indexer", ("job_search", "pg_locks", "pg_sequence_last_value", "gin_clean_pending_list")),
    ("claim", ("SKIP LOCKED",)),
    ("completion", ("UPDATE jobs SET state", "finished_at")),
]


def _statements(admin: str, dbname: str) -> list[tuple[str, int, float]]:
    with psycopg.connect(admin) as c:
        rows = c.execute(
            "SELECT s.query, s.calls, s.total_exec_time FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s ORDER BY s.total_exec_time DESC",
            (dbname,),
        ).fetchall()
    return [(" ".join(q.split()), int(n), float(ms)) for q, n, ms in rows]


def _reset(admin: str) -> None:
    with psycopg.connect(admin) as c:
        c.execute("SELECT pg_stat_statements_reset()")


def _is(query: str, kind: str, marks: tuple[str, ...]) -> bool:
    """A completion names both of its marks; the other kinds any one of theirs."""
    return all(m in query for m in marks) if kind == "completion" else any(m in query for m in marks)


def _per_job(rows: list[tuple[str, int, float]], jobs: int) -> dict[str, Any]:
    kinds: dict[str, float] = {name: 0.0 for name, _ in KINDS} | {"other": 0.0}
    for query, _, ms in rows:
        kind = next((name for name, marks in KINDS if _is(query, name, marks)), "other")
        kinds[kind] += ms
    return {
        "server_us_per_job": round(sum(ms for _, _, ms in rows) / jobs * 1000, 1),
        "by_kind_us_per_job": {k: round(v / jobs * 1000, 1) for k, v in kinds.items()},
        "top": [
            {"query": q[:140], "calls_per_job": round(n / jobs, 3), "us_per_job": round(ms / jobs * 1000, 1)}
            for q, n, ms in rows[:8]
        ],
    }


def _spec(i: int, payload: bool) -> JobSpec:
    """A no-op job; with `payload`, arguments shaped like bench.search's invoices."""
    if not payload:
        return JobSpec(task="noop")
    return JobSpec(
        task="noop",
        args=(f"customer-{i % 5000:05d} Trading", f"INV-{i:07d}"),
        kwargs={"amount": i * 7919 % 1_000_000, "memo": ("monthly fee", "refund", "deposit")[i % 3]},
    )


def run(admin: str, jobs: int, single: int, payload: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with _pg_env(admin), database("postgresql") as url:
        dbname = url.rsplit("/", 1)[1]
        app = App(database_url=url, log_level="WARNING")

        @app.task(name="noop")
        def noop(*args: Any, **kwargs: Any) -> None:
            return None

        app.migrate()
        _reset(admin)
        for i in range(single):
            app.enqueue(_spec(i, payload))
        out["one_call_enqueue"] = _per_job(_statements(admin, dbname), single)
        _reset(admin)
        for start in range(single, single + jobs, 1000):
            app.enqueue_many([_spec(i, payload) for i in range(start, start + 1000)])
        out["bulk_enqueue"] = _per_job(_statements(admin, dbname), jobs)
        _reset(admin)
        started = time.perf_counter()
        app.run_worker(burst=True, concurrency=4)
        out["worker_seconds"] = round(time.perf_counter() - started, 2)
        out["worker"] = _per_job(_statements(admin, dbname), jobs + single)
        _reset(admin)
        while index_pending(app.db, budget=10.0):
            pass
        out["indexing_left_after_the_run"] = _per_job(_statements(admin, dbname), jobs + single)
        app.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--single", type=int, default=2_000)
    parser.add_argument("--port", type=int, default=5497)
    parser.add_argument("--empty", action="store_true", help="jobs without arguments")
    args = parser.parse_args(argv)
    profile.PORT = args.port
    with private_postgres() as admin:
        result = run(admin, args.jobs, args.single, not args.empty)
    print(json.dumps({"machine": machine(), **result}, indent=2))


if __name__ == "__main__":
    main()
