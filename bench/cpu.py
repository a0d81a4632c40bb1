"""Worker CPU per no-op job, in-process (not part of `make bench`).

python -m bench.cpu [--backends sqlite,postgresql] [--jobs 10000] [--reps 5] [--concurrency 4]
                    [--log-level INFO] [--task sync|async] [--spy FILE]

Each repetition enqueues `jobs` no-op jobs on a fresh database, then runs one burst worker in
this process (`App.run_worker`, the sync task in the worker's thread pool, or with `--task async`
the async one on its event loop, log level INFO (or
`--log-level`; the fair harness's workers run at WARNING, without a line per job) with
the JSON lines sent to /dev/null) and divides the process's CPU time (`time.process_time()`,
every thread) by the jobs run. CPU time is what a loaded machine inflates least: wall time
there measures the other processes. On SQLite the database engine runs in this process and is
counted; on PostgreSQL the server's share is reported apart (`server_cpu_us_per_job`: the CPU
time of the server processes serving this database's sessions, read from /proc, so the server
must run on this machine; the WAL writer, checkpointer and autovacuum are shared and left
out). `--spy FILE` also records the last repetition of each backend with py-spy (raw
samples, `--native` off).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import database
from bench.fair import spread

_TICK = os.sysconf("SC_CLK_TCK")


def server_cpu(app: Any, seen: dict[int, float]) -> dict[int, float]:
    """CPU seconds so far of every server process now serving the app's database (PostgreSQL
    on this machine), merged into `seen` (a session that ended keeps its last reading)."""
    with app.db.read() as conn:
        pids = (
            conn.exec_driver_sql("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            .scalars()
            .all()
        )
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seen[pid] = (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    return seen


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 (where the worker's JSON log lines go) to /dev/null."""
    sys.stderr.flush()
    saved, sink = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(sink, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(sink)


def one_run(
    backend: str,
    jobs: int,
    concurrency: int,
    spy: Path | None,
    log_level: str = "INFO",
    kind: str = "sync",
) -> dict[str, Any]:
    """CPU µs and wall µs per job of one burst worker draining `jobs` no-op jobs (`kind`: the
    sync or the async no-op task)."""
    from bench.apps import noop, noop_async
    from ledgerflow import App

    noop_task = noop_async if kind == "async" else noop
    with database(backend) as url:
        app = App(database_url=url, log_level=log_level)
        task = app.task(name=noop_task.name)(noop_task.func)
        try:
            app.migrate()
            for i in range(0, jobs, 5000):
                app.enqueue_many([task.prepare(k) for k in range(i, min(jobs, i + 5000))])
            recorder = None
            if spy is not None:
                recorder = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(os.getpid()),
                     "--rate", "1000", "--nonblocking", "--gil", "--format", "raw", "-o", str(spy)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(1)
            load = os.getloadavg()[0]
            pg = backend == "postgresql"
            before = dict(server_cpu(app, {})) if pg else {}
            with _quiet_stderr():
                cpu, wall = time.process_time(), time.perf_counter()
                app.run_worker("default", concurrency=concurrency, burst=True)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            after = server_cpu(app, dict(before)) if pg else {}
            server = sum(after.values()) - sum(before.values())
            if recorder is not None:
                recorder.send_signal(2)
                recorder.wait(60)
            with app.db.read() as conn:
                done = conn.exec_driver_sql("SELECT count(*) FROM jobs WHERE state = 'completed'").scalar()
                executions = conn.exec_driver_sql("SELECT count(*) FROM job_executions").scalar()
        finally:
            app.close()
    assert done == jobs and executions == jobs, (done, executions, jobs)
    return {
        "cpu_us_per_job": round(cpu / jobs * 1e6),
        "wall_us_per_job": round(wall / jobs * 1e6),
        "server_cpu_us_per_job": round(server / jobs * 1e6) if after else None,
        "load_average": round(load, 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.cpu")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--task", choices=("sync", "async"), default="sync", help="the no-op task's kind")
    parser.add_argument("--spy", type=Path, default=None, help="py-spy raw output prefix")
    args = parser.parse_args(argv)
    out: dict[str, Any] = {"jobs": args.jobs, "concurrency": args.concurrency, "task": args.task}
    for backend in args.backends.split(","):
        runs = []
        for rep in range(args.reps):
            spy = None
            if args.spy is not None and rep == args.reps - 1:
                spy = args.spy.with_name(f"{args.spy.name}-{backend}.txt")
            runs.append(one_run(backend, args.jobs, args.concurrency, spy, args.log_level, args.task))
        out[backend] = {
            "cpu_us_per_job": spread([r["cpu_us_per_job"] for r in runs]),
            "wall_us_per_job": spread([r["wall_us_per_job"] for r in runs]),
            **(
                {"server_cpu_us_per_job": spread([r["server_cpu_us_per_job"] for r in runs])}
                if backend == "postgresql"
                else {}
            ),
            "load_average": [r["load_average"] for r in runs],
        }
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
