"""The same harness for peers: 10,000 no-op jobs, 2 worker processes x 4, on the same machine.

Timed by wall clock from starting the worker processes until every job is done (start-up
included); ledgerflow's ratio uses its own wall-clock figure from the same kind of run.

Peers are optional (`pip install huey procrastinate pgqueuer`); a missing one is reported, not
faked. Each result carries ledgerflow's ratio to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import psycopg

from bench.common import ROOT, database, python

N = 10_000


def _wait(done: Any, timeout: float = 300) -> float:
    start = time.perf_counter()
    while not done():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("peer did not finish")
        time.sleep(0.05)
    return time.perf_counter() - start


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def huey_sqlite() -> dict[str, Any]:
    from huey import SqliteHuey

    with tempfile.TemporaryDirectory(prefix="huey-bench-") as tmp:
        path = f"{tmp}/huey.db"
        env = {"HUEY_DB": path}
        os.environ["HUEY_DB"] = path
        huey = SqliteHuey(filename=path, results=False)
        from bench.peer_apps import huey_app

        huey_app.huey.storage = huey.storage  # same file
        start = time.perf_counter()
        for i in range(N):
            huey_app.noop(i)
        enqueue = N / (time.perf_counter() - start)
        consumer = [
            python(),
            "-m",
            "huey.bin.huey_consumer",
            "bench.peer_apps.huey_app.huey",
            "-w",
            "4",
            "-k",
            "thread",
            "-d",
            "0.01",
            "-q",
        ]
        procs = [_spawn(consumer, env) for _ in range(2)]
        try:
            seconds = _wait(lambda: huey.pending_count() == 0)
        finally:
            _stop(procs)
        return {
            "jobs_per_s": round(N / seconds),
            "enqueue_one_per_s": round(enqueue),
            "note": "no acknowledgements: a job is gone from the queue when dequeued",
        }


def procrastinate_pg() -> dict[str, Any]:
    with database("postgresql") as url:
        dsn = url.replace("postgresql+psycopg", "postgresql")
        env = {"PEER_DSN": dsn}
        cli = [python(), "-m", "procrastinate", "--app", "bench.peer_apps.procrastinate_app.app"]
        subprocess.run(
            [*cli, "schema", "--apply"],
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        os.environ["PEER_DSN"] = dsn
        from bench.peer_apps import procrastinate_app

        with procrastinate_app.app.open():
            start = time.perf_counter()
            procrastinate_app.noop.batch_defer(*[{"i": i} for i in range(N)])
            bulk = N / (time.perf_counter() - start)
        procs = [_spawn([*cli, "worker", "--concurrency", "4"], env) for _ in range(2)]

        def done() -> bool:
            with psycopg.connect(dsn) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
                ).fetchone()
            return bool(row and row[0] >= N)

        try:
            seconds = _wait(done)
        finally:
            _stop(procs)
        return {"jobs_per_s": round(N / seconds), "enqueue_many_per_s": round(bulk)}


def pgqueuer_pg() -> dict[str, Any]:
    import asyncio

    from pgqueuer import PsycopgDriver, Queries

    with database("postgresql") as url:
        dsn = url.replace("postgresql+psycopg", "postgresql")
        env = {"PEER_DSN": dsn, "PGDSN": dsn}
        cli = [python(), "-m", "pgqueuer"]
        subprocess.run(
            [*cli, "install"], env={**os.environ, **env}, cwd=ROOT, check=True, capture_output=True
        )

        async def enqueue() -> float:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            queries = Queries(PsycopgDriver(conn))
            start = time.perf_counter()
            for i in range(0, N, 5000):
                n = min(5000, N - i)
                await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
            seconds = time.perf_counter() - start
            await conn.close()
            return N / seconds

        bulk = asyncio.run(enqueue())
        worker = [python(), "-m", "bench.peer_apps.pgqueuer_app"]
        procs = [_spawn(worker, env) for _ in range(2)]

        def done() -> bool:
            with psycopg.connect(dsn) as conn:
                row = conn.execute("SELECT count(*) FROM pgqueuer").fetchone()
            return bool(row and row[0] == 0)

        try:
            seconds = _wait(done)
        finally:
            _stop(procs)
        return {
            "jobs_per_s": round(N / seconds),
            "enqueue_many_per_s": round(bulk),
            "note": "finished jobs are deleted from the queue table (statistics kept in pgqueuer_log)",
        }


def run(ledgerflow: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, fn, backend in (
        ("huey_sqlite", huey_sqlite, "sqlite"),
        ("procrastinate", procrastinate_pg, "postgresql"),
        ("pgqueuer", pgqueuer_pg, "postgresql"),
    ):
        try:
            result = fn()
        except ImportError as exc:
            out[name] = {"skipped": f"not installed: {exc.name}"}
            continue
        except Exception as exc:  # a peer's failure is reported, not hidden
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        processing = ledgerflow.get(backend, {}).get("processing", {})
        if processing.get("wall_seconds"):  # wall clock, process start-up included, like the peers'
            ours = processing["jobs"] / processing["wall_seconds"]
            result["ledgerflow_jobs_per_s_wall"] = round(ours)
            result["ledgerflow_ratio"] = round(ours / result["jobs_per_s"], 2)
        out[name] = result
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run({}), indent=2), file=sys.stdout)
