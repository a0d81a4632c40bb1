"""How ledgerflow's processing rate holds up as work grows: history retained, backlog, workers.

For each backend and each level of history (0, 100K, 1M completed jobs retained, each with
its `job_executions` row, or a 100,000-job backlog waiting), and each worker layout
(1, 2, 4 processes x concurrency 8, 32): start the workers, let them go idle, then `reps`
times enqueue `jobs` no-op jobs in one call and time them from the first start to the last
(bench/stamp.py). The jobs seeded or waiting are in the SQLite job search index before the
workers start (`index_text`); each repetition's own jobs are indexed by the workers as they
run. Each repetition's jobs are deleted afterwards so the history stays at its
level, and the tables are vacuumed between layouts (this server may run without autovacuum).
With a backlog the workers start on 100,000 + reps x jobs waiting jobs and each repetition
is a window of `jobs` consecutive starts, so the backlog never falls under 100,000.

A repetition of 10,000 jobs lasts about a second (of 2,000-3,000, 0.2-0.4 s: a scheduling hiccup
of the shared machine moved a cell by a third). Each cell also records its ratio to the empty
table's cell (medians, and the lowest and highest repetition over the empty median) and the
load average when it started.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import precompile
from bench.fair import Ledgerflow, spread, stop, wait_until
from bench.stamp import Stamps, count_lines
from ledgerflow.engine.search import index_pending

LAYOUTS = [(1, 8), (2, 8), (4, 8), (1, 32), (2, 32), (4, 32)]
LEVELS: list[int | str] = [0, 100_000, 1_000_000, "backlog_100k"]
BACKLOG = 100_000
_COLUMNS = (
    "task, queue, priority, state, args, kwargs, attempt, max_attempts, timeout, has_dependencies, "
    "scheduled_at, created_at, started_at, finished_at, worker_id, errors"
)


def seed_completed(system: Ledgerflow, count: int) -> None:
    """`count` completed no-op jobs with one execution row each, written by the database itself."""
    if not count:
        return
    with system.app.db.begin() as conn:
        if system.backend == "sqlite":
            stamp = "'2026-01-01 00:00:00.000000'"
            conn.exec_driver_sql(
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) "
                f"INSERT INTO jobs ({_COLUMNS}) SELECT 'bench.noop', 'default', 100, 'completed', "
                f"'[0]', '{{}}', 1, 5, 30.0, 0, {stamp}, {stamp}, {stamp}, {stamp}, 'seed', '[]' FROM n",
                (count,),
            )
        else:
            conn.exec_driver_sql(
                f"INSERT INTO jobs ({_COLUMNS}) SELECT 'bench.noop', 'default', 100, 'completed', "
                "'[0]', '{}', 1, 5, 30.0, false, now(), now(), now(), now(), 'seed', '[]' "
                "FROM generate_series(1, %(n)s)",
                {"n": count},
            )
        conn.exec_driver_sql(
            "INSERT INTO job_executions (job_id, attempt, task, queue, status, worker_id, started_at, "
            "completed_at, duration_seconds) SELECT id, 1, task, queue, 'completed', 'seed', started_at, "
            "finished_at, 0.001 FROM jobs WHERE worker_id = 'seed'"
        )


def index_text(system: Ledgerflow) -> None:
    """SQLite: put the jobs written so far into the job search index (migration 0015), as workers
    that had run all along would have. Left to the workers, the seeded 1,000,000 jobs (written
    by SQL) or the 100,000-job backlog were indexed during the measured repetitions: 2,000 jobs
    per write transaction, the other writers waiting (SQLite at 1M retained 0.39-0.72x)."""
    while index_pending(system.app.db, budget=60.0):
        pass


def vacuum(system: Ledgerflow) -> None:
    """What autovacuum would do on PostgreSQL (SQLite reuses freed pages without help)."""
    if system.backend == "sqlite":
        return
    with system.app.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE) jobs, job_executions")


def _high_water(system: Ledgerflow) -> int:
    with system.app.db.read() as conn:
        return int(conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM jobs").scalar() or 0)


def _acknowledged_after(system: Ledgerflow, first_id: int) -> int:
    with system.app.db.read() as conn:
        sql = f"SELECT count(*) FROM jobs WHERE id > {int(first_id)} AND state = 'completed'"
        return int(conn.exec_driver_sql(sql).scalar() or 0)


def _forget_after(system: Ledgerflow, first_id: int) -> None:
    """Delete the jobs (and their executions) a repetition added: the history stays at its level."""
    with system.app.db.begin() as conn:
        conn.exec_driver_sql(f"DELETE FROM job_executions WHERE job_id > {int(first_id)}")
        conn.exec_driver_sql(f"DELETE FROM jobs WHERE id > {int(first_id)}")


@contextlib.contextmanager
def _workers(system: Ledgerflow, processes: int, concurrency: int) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lf-growth-") as tmp:
        stamps = Path(tmp) / "stamps"
        procs = system.spawn(processes, concurrency, stamps)
        try:
            yield stamps
        finally:
            stop(procs)


def layout_with_history(
    system: Ledgerflow, processes: int, concurrency: int, reps: int, jobs: int
) -> list[float]:
    """Idle workers, then `reps` bursts of `jobs` jobs enqueued in one call."""
    mark = _high_water(system)
    rates: list[float] = []
    with _workers(system, processes, concurrency) as stamps:
        system.enqueue_many([f"warm-{i}" for i in range(4 * processes)])
        wait_until(lambda: count_lines(stamps) >= 4 * processes, 120, "growth start-up")
        wait_until(lambda: _acknowledged_after(system, mark) >= 4 * processes, 60, "growth warm-up")
        _forget_after(system, mark)
        for rep in range(reps):
            system.enqueue_many([f"{rep}-{i}" for i in range(jobs)])
            started = 4 * processes + (rep + 1) * jobs
            wait_until(lambda n=started: count_lines(stamps) >= n, 600, "growth repetition")
            rates.append(Stamps.read(stamps, prefix=f"{rep}-").rate())
            wait_until(lambda: _acknowledged_after(system, mark) >= jobs, 60, "growth acknowledgements")
            _forget_after(system, mark)
    return rates


def layout_with_backlog(
    system: Ledgerflow, processes: int, concurrency: int, reps: int, jobs: int
) -> list[float]:
    """Workers started on a backlog of BACKLOG + reps x jobs; each repetition is a window of `jobs` starts."""
    mark = _high_water(system)
    system.enqueue_many([f"b-{i}" for i in range(BACKLOG + reps * jobs)])
    index_text(system)
    with _workers(system, processes, concurrency) as stamps:
        wait_until(lambda: count_lines(stamps) >= reps * jobs, 600, "growth backlog")
        seen = Stamps.read(stamps)
    _forget_after(system, mark)
    return [seen.rate(rep * jobs, (rep + 1) * jobs - 1) for rep in range(reps)]


def run(
    backends: list[str],
    levels: list[int | str] | None = None,
    layouts: list[tuple[int, int]] | None = None,
    reps: int = 5,
    jobs: int = 10_000,
) -> dict[str, Any]:
    precompile()
    out: dict[str, Any] = {"jobs_per_repetition": jobs, "repetitions": reps, "curves": {}}
    for backend in backends:
        curves: dict[str, Any] = {}
        for level in levels or LEVELS:
            system = Ledgerflow(backend)
            started = time.perf_counter()
            with system.store():
                seed_completed(system, level if isinstance(level, int) else 0)
                index_text(system)
                vacuum(system)
                seeded = round(time.perf_counter() - started, 1)
                points = {}
                for processes, concurrency in layouts or LAYOUTS:
                    measure = layout_with_backlog if level == "backlog_100k" else layout_with_history
                    load = round(os.getloadavg()[0], 1)
                    rates = measure(system, processes, concurrency, reps, jobs)
                    points[f"{processes}x{concurrency}"] = {**spread(rates), "load_average": load}
                    vacuum(system)
            curves[str(level)] = {"seed_seconds": seeded, "jobs_per_s": points}
            _ratios(curves[str(level)], curves.get("0"))
        out["curves"][backend] = curves
    return out


def _ratios(curve: dict[str, Any], empty: dict[str, Any] | None) -> None:
    """Each cell's rate over the empty table's (same layout): of the medians, and the range of
    this cell's repetitions over the empty median."""
    if empty is None:
        return
    curve["ratio_to_empty"] = {
        layout: {
            "median": round(cell["median"] / base, 2),
            "min": round(cell["min"] / base, 2),
            "max": round(cell["max"] / base, 2),
        }
        for layout, cell in curve["jobs_per_s"].items()
        if (base := empty["jobs_per_s"].get(layout, {}).get("median")) and cell["median"] is not None
    }


def plot(growth: dict[str, Any], path: Path) -> None:
    """Median processing rate per level of history, one line per worker layout, one panel per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(growth["curves"])
    fig, axes = plt.subplots(1, len(backends), figsize=(6 * len(backends), 4.2), sharey=True, squeeze=False)
    for ax, backend in zip(axes[0], backends, strict=True):
        curves = growth["curves"][backend]
        levels = list(curves)
        layouts = list(next(iter(curves.values()))["jobs_per_s"])
        for layout in layouts:
            medians = [curves[lv]["jobs_per_s"][layout]["median"] for lv in levels]
            lows = [curves[lv]["jobs_per_s"][layout]["min"] for lv in levels]
            highs = [curves[lv]["jobs_per_s"][layout]["max"] for lv in levels]
            line = ax.plot(
                range(len(levels)), medians, marker="o", label=f"{layout} (processes x concurrency)"
            )
            ax.fill_between(range(len(levels)), lows, highs, alpha=0.12, color=line[0].get_color())
        ax.set_xticks(range(len(levels)), [_label(lv) for lv in levels])
        ax.set_title(f"ledgerflow on {backend}")
        ax.set_xlabel("jobs in the table")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("no-op jobs/s (median, band = min-max)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _label(level: str) -> str:
    if level == "backlog_100k":
        return "100K waiting"
    n = int(level)
    return "empty" if n == 0 else f"{n // 1000:,}K done" if n < 1_000_000 else f"{n // 1_000_000}M done"


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(sys.argv[1:] or ["sqlite", "postgresql"]), indent=2))
