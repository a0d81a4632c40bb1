"""The claim of jobs under global limits at a large backlog (issue 14; not part of `make bench`).

python -m bench.limited_claim [--backends sqlite,postgresql] [--trees NEW,OLD] [--pairs 5]
                              [--claims 10] [--explain]

One database per backend, seeded once by SQL: 1,000,000 jobs, the last 100,000 available (due
an hour ago) over queues a, b, c (id modulo 3) and priorities 100..106 (id modulo 7), one in ten
of task `bench.rare`, the others `bench.noop`; plus queue `r`: 10,000 available jobs of task
`bench.one` at priority 50 ahead of 10,000 at priority 100, of `bench.two` and `bench.noop` in
turn. Limits: queue `a` and task `bench.rare` (concurrency 100,000: never full), queue `r` (the
same), tasks `bench.one` and `bench.two` (concurrency 1). Then ANALYZE.

Scenarios, each a claim of 20 by a worker of every task (`LeaseSQL.claim_limited`, rolled back):
`a`, `a,b`, `a,b,c` (the queue limit takes all of a, the task limit a tenth of b and c) and
`r`, `r,a` (rounds: the first candidate of `bench.one` fills its limit, the other 19 are passed
over; the next round meets a second job of `bench.two`, which fills its limit too; the third
takes the rest; the 10,000 `bench.one` jobs are read past).

Each tree (`--trees`, paths of source trees whose `src` is imported; default this one) is run in
a process of its own, alternately (new, old, new, old, … `--pairs` times); each process makes
`--claims` claims per scenario after one unmeasured claim and prints per scenario the median
wall and CPU ms per claim, the rows of `jobs` read per claim (PostgreSQL's
`pg_stat_xact_user_tables`) or thousand-instruction steps (SQLite), the statements a claim
sends and the jobs it takes. `--explain`: the plans of one claim's candidate queries
(PostgreSQL EXPLAIN (ANALYZE, BUFFERS), SQLite EXPLAIN QUERY PLAN).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from bench.common import ROOT, database, machine, rows_read

SCENARIOS = {"a": ["a"], "a,b": ["a", "b"], "a,b,c": ["a", "b", "c"], "r": ["r"], "r,a": ["r", "a"]}
TASKS = ["bench.noop", "bench.rare", "bench.one", "bench.two"]
JOBS, WAITING, HELD = 1_000_000, 100_000, 10_000
_COLUMNS = (
    "task, queue, priority, state, args, kwargs, attempt, max_attempts, timeout, has_dependencies, "
    "scheduled_at, created_at, errors"
)


def seed(url: str) -> None:
    """Migrate and fill the database (see the module's docstring)."""
    from ledgerflow import App

    app = App(database_url=url, log_level="WARNING")
    app.migrate()
    sqlite = url.startswith("sqlite")

    def mod(a: str, b: int) -> str:
        return f"{a} % {b}" if sqlite else f"mod({a}, {b})"

    queue = f"char(97 + {mod('x', 3)})" if sqlite else f"chr(97 + {mod('x', 3)})"
    task = f"CASE WHEN {mod('x', 10)} = 0 THEN 'bench.rare' ELSE 'bench.noop' END"
    state = f"CASE WHEN x <= {JOBS - WAITING} THEN 'completed' ELSE 'available' END"
    turn = f"WHEN {mod('x', 2)} = 0 THEN 'bench.two' ELSE 'bench.noop'"
    held = f"CASE WHEN x <= {HELD} THEN 'bench.one' {turn} END"
    held_priority = f"CASE WHEN x <= {HELD} THEN 50 ELSE 100 END"
    ago = "strftime('%Y-%m-%d %H:%M:%f000', 'now', '-1 hour')" if sqlite else "now() - interval '1 hour'"
    series = "n" if sqlite else "generate_series(1, {n}) AS x"
    prefix = (
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < {n}) " if sqlite else ""
    )
    false = "0" if sqlite else "false"
    with app.db.begin() as conn:
        for n, values in (
            (JOBS, f"{task}, {queue}, 100 + {mod('x', 7)}, {state}"),
            (2 * HELD, f"{held}, 'r', {held_priority}, 'available'"),
        ):
            conn.exec_driver_sql(
                prefix.format(n=n) + f"INSERT INTO jobs ({_COLUMNS}) SELECT {values}, '[0]', '{{}}', 0, 5, "
                f"30.0, {false}, {ago}, {ago}, '[]' FROM {series.format(n=n)}"
            )
    for kind, name, concurrency in (
        ("queue", "a", 100_000),
        ("task", "bench.rare", 100_000),
        ("queue", "r", 100_000),
        ("task", "bench.one", 1),
        ("task", "bench.two", 1),
    ):
        app.limits.set(kind, name, concurrency=concurrency)
    with app.db.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    app.close()


def measure(url: str, claims: int, explain: bool) -> dict[str, Any]:
    """Claims of each scenario on this tree (the `ledgerflow` imported); see the docstring."""
    import ledgerflow
    from ledgerflow import App
    from ledgerflow.engine.leases import LeaseSQL

    app = App(database_url=url, log_level="WARNING")
    sqlite = app.db.is_sqlite
    sql = LeaseSQL(app.db, 60)
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        sent.append((statement, parameters))

    event.listen(app.db.engine, "before_cursor_execute", record)
    out: dict[str, Any] = {"ledgerflow": ledgerflow.__file__}
    for name, queues in SCENARIOS.items():
        wall: list[float] = []
        cpu: list[float] = []
        reads: list[int] = []
        statements: list[int] = []
        taken: list[int] = []
        plans: list[str] = []
        for i in range(claims + 1):
            with app.db.begin() as conn:
                with rows_read(conn, sqlite) as read:
                    sent.clear()
                    started, started_cpu = time.perf_counter(), time.process_time()
                    got, _ = sql.claim_limited(
                        conn, worker_id="bench", queues=queues, tasks=TASKS, limit=20, local_caps={}
                    )
                    ended, ended_cpu = time.perf_counter(), time.process_time()
                    count = len(sent)
                if explain and i == 0:
                    plans = _plans(conn, sent, sqlite)
                conn.rollback()
            if i:
                wall.append(ended - started)
                cpu.append(ended_cpu - started_cpu)
                reads.append(read[0])
                statements.append(count)
                taken.append(len(got))
        out[name] = {
            "wall_ms": round(statistics.median(wall) * 1000, 3),
            "cpu_ms": round(statistics.median(cpu) * 1000, 3),
            "reads": statistics.median(reads),
            "statements": statistics.median(statements),
            "taken": statistics.median(taken),
        }
        if plans:
            out[name]["plans"] = plans
    event.remove(app.db.engine, "before_cursor_execute", record)
    app.close()
    return out


def _plans(conn: Any, sent: list[tuple[str, Any]], sqlite: bool) -> list[str]:
    """The plans of the candidate queries among `sent` (those ordered by priority)."""
    plans = []
    prefix = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN (ANALYZE, BUFFERS) "
    for statement, parameters in list(sent):
        if "ORDER BY" in statement and "priority" in statement and not statement.startswith("UPDATE"):
            rows = conn.exec_driver_sql(prefix + statement, parameters).all()
            plans.append("\n".join(str(r[-1] if sqlite else r[0]) for r in rows))
    return plans


def run(backends: list[str], trees: list[str], pairs: int, claims: int, explain: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for backend in backends:
        with database(backend) as url:
            seed(url)
            runs: dict[str, list[dict[str, Any]]] = {tree: [] for tree in trees}
            for pair in range(pairs):
                for tree in trees:
                    runs[tree].append(_child(tree, url, claims, explain and pair == 0))
            out[backend] = {tree: _summary(results) for tree, results in runs.items()}
    return out


def _child(tree: str, url: str, claims: int, explain: bool) -> dict[str, Any]:
    """`measure` in a process importing ledgerflow from `tree`'s src (this bench module)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(tree) / "src"), str(ROOT)])}
    args = [sys.executable, "-m", "bench.limited_claim", "--measure", url, "--claims", str(claims)]
    done = subprocess.run(args + (["--explain"] if explain else []), env=env, capture_output=True)
    if done.returncode:
        raise SystemExit(f"{tree}: {done.stderr.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    if not result["ledgerflow"].startswith(str(Path(tree).resolve())):
        raise SystemExit(f"{tree}: ledgerflow imported from {result['ledgerflow']}")
    return result


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per scenario: median [min..max] over the processes of each figure, and the first plans."""
    out: dict[str, Any] = {}
    for name in SCENARIOS:
        each = [r[name] for r in results]
        out[name] = {
            key: [
                statistics.median(e[key] for e in each),
                min(e[key] for e in each),
                max(e[key] for e in each),
            ]
            for key in ("wall_ms", "cpu_ms", "reads", "statements", "taken")
        }
        if "plans" in each[0]:
            out[name]["plans"] = each[0]["plans"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.limited_claim")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--trees", default=str(ROOT))
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--claims", type=int, default=10)
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.claims, args.explain)))
        return
    trees = args.trees.split(",")
    report = {
        "machine": machine(),
        "load": os.getloadavg(),
        "results": run(args.backends.split(","), trees, args.pairs, args.claims, args.explain),
        "load_after": os.getloadavg(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
