"""One harness for ledgerflow and its peers: the same jobs, processes and clocks for everyone.

Every system gets a fresh store per repetition, 10,000 no-op jobs enqueued in bulk, then
2 worker processes x 4. Each no-op records its start in a file outside the queue
(bench/stamp.py), so:

* processing = jobs / (last job start - first job start), the queue's own steady state;
* wall = jobs / (worker spawn -> the queue reports every job finished), start-up and the
  last acknowledgements included.

Each peer runs as its documentation tunes it (`SETTINGS`, printed beside the figures).
Also measured: bulk enqueue, one-call enqueue, and enqueue -> start latency with idle
workers (from the call to `enqueue` to the job's first line). Every measure is repeated
(>= 5 by default) and reported as median and min-max spread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

from bench.common import PG_ADMIN, ROOT, RssSampler, database, precompile, python
from bench.stamp import Stamps, count_lines, parse

POLL = 0.025  # how often the harness asks a queue whether it has finished


def spread(values: list[float], digits: int = 0) -> dict[str, Any]:
    """Median and min-max of repeated measures, with every run kept."""
    ordered = sorted(v for v in values if v == v)  # drop NaN
    if not ordered:
        return {"median": None, "min": None, "max": None, "runs": []}
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    def r(v: float) -> float:
        return round(v, digits) if digits else round(v)

    return {"median": r(median), "min": r(ordered[0]), "max": r(ordered[-1]), "runs": [r(v) for v in values]}


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition` every POLL seconds; returns the time (time.time()) it became true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        time.sleep(POLL)
    return time.time()


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


class System:
    """A queue under test. Subclasses open a fresh store, enqueue, and start workers."""

    name = ""
    backend = ""
    package = ""
    settings: dict[str, Any] = {}
    bulk = True  # False: no bulk enqueue API, the backlog is enqueued one call at a time

    def version(self) -> str:
        return metadata.version(self.package)

    @contextlib.contextmanager
    def store(self) -> Iterator[None]:
        raise NotImplementedError

    def enqueue_many(self, keys: list[str]) -> None:
        raise NotImplementedError

    def enqueue_one(self, key: str) -> None:
        raise NotImplementedError

    def select(self) -> None:
        """Make this system's store the one its client writes to, where systems share a client
        module (two Huey stores): call before enqueuing when several stores are open."""

    def finished(self) -> int:
        """Jobs the queue itself reports as done (acknowledged)."""
        raise NotImplementedError

    def worker(self, concurrency: int) -> tuple[list[str], dict[str, str]]:
        """argv and environment of one worker process."""
        raise NotImplementedError

    def spawn(self, processes: int, concurrency: int, stamps: Path) -> list[subprocess.Popen[bytes]]:
        argv, env = self.worker(concurrency)
        path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])  # this tree's ledgerflow, not an installed one
        full = {**os.environ, "PYTHONPATH": path, "BENCH_STAMPS": str(stamps), **env}
        return [
            subprocess.Popen(argv, env=full, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(processes)
        ]


class Ledgerflow(System):
    package = "ledgerflow"

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.name = f"ledgerflow_{backend}"
        self.settings = {
            "task": "sync def (runs in the worker's thread pool)",
            "prefetch": "adaptive (default)",
            "guarantees": "fenced leases, one job_executions row per attempt, batched acknowledgements",
            **({"sqlite_synchronous": "NORMAL (default)"} if backend == "sqlite" else {}),
        }

    @contextlib.contextmanager
    def store(self) -> Iterator[None]:
        from bench.apps import noop
        from ledgerflow import App

        with database(self.backend) as url:
            self.url = url
            self.app = App(database_url=url, log_level="WARNING")
            self.app.migrate()
            self.noop = noop
            try:
                yield
            finally:
                self.app.close()

    def enqueue_many(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 5000):
            self.app.enqueue_many([self.noop.prepare(k) for k in keys[i : i + 5000]])

    def enqueue_one(self, key: str) -> None:
        self.app.enqueue(self.noop.prepare(key))

    def finished(self) -> int:
        sql = "SELECT count(*) FROM jobs WHERE state = 'completed'"
        if self.backend == "sqlite":
            with contextlib.closing(sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=30)) as c:
                return int(c.execute(sql).fetchone()[0])
        with psycopg.connect(self.url) as c:
            row = c.execute(sql).fetchone()
            return int(row[0]) if row else 0

    def worker(self, concurrency: int) -> tuple[list[str], dict[str, str]]:
        argv = [python(), "-m", "ledgerflow", "worker", "--app", "bench.apps:app", "--queues", "default"]
        env = {"LEDGERFLOW_DATABASE_URL": self.url, "LEDGERFLOW_LOG_LEVEL": "WARNING"}
        return [*argv, "--concurrency", str(concurrency)], env


class LedgerflowAsync(Ledgerflow):
    """`Ledgerflow`, same worker, with the async no-op (`bench.noop_async`, run on the worker's
    event loop): read async-to-async beside PgQueuer's async entrypoint."""

    def __init__(self, backend: str) -> None:
        super().__init__(backend)
        self.name = f"ledgerflow_{backend}_async"
        self.settings = {**self.settings, "task": "async def (runs on the worker's event loop)"}

    @contextlib.contextmanager
    def store(self) -> Iterator[None]:
        from bench.apps import noop_async

        with super().store():
            self.noop = noop_async
            yield


class PgQueuer(System):
    name = "pgqueuer"
    backend = "postgresql"
    package = "pgqueuer"
    settings = {
        "driver": "asyncpg (one connection per worker, as its performance guide advises)",
        "batch_size": 10,
        "max_concurrent_tasks": None,
        "entrypoint": "async def",
        "durability": "durable (default: every table logged)",
        "autovac": "applied (`pgqueuer autovac`; no effect while the server's autovacuum is off)",
        "note": "finished jobs are deleted from the queue table (kept in pgqueuer_log)",
    }

    @contextlib.contextmanager
    def store(self) -> Iterator[None]:
        import asyncpg
        from pgqueuer import Queries
        from pgqueuer.db import AsyncpgDriver

        with database("postgresql") as url:
            self.dsn = url.replace("postgresql+psycopg", "postgresql")
            env = {**os.environ, "PGDSN": self.dsn}
            for command in (["install"], ["autovac"]):
                subprocess.run(
                    [python(), "-m", "pgqueuer", *command], env=env, check=True, capture_output=True
                )
            self.loop = asyncio.new_event_loop()
            self.conn = self.loop.run_until_complete(asyncpg.connect(dsn=self.dsn))
            self.queries = Queries(AsyncpgDriver(self.conn))
            self.enqueued = 0
            try:
                yield
            finally:
                self.loop.run_until_complete(self.conn.close())
                self.loop.close()

    def enqueue_many(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 5000):
            chunk = keys[i : i + 5000]
            self.loop.run_until_complete(
                self.queries.enqueue(["noop"] * len(chunk), [k.encode() for k in chunk], [0] * len(chunk))
            )
        self.enqueued += len(keys)

    def enqueue_one(self, key: str) -> None:
        self.loop.run_until_complete(self.queries.enqueue("noop", key.encode(), 0))
        self.enqueued += 1

    def finished(self) -> int:
        with psycopg.connect(self.dsn) as c:
            row = c.execute("SELECT count(*) FROM pgqueuer").fetchone()
        return self.enqueued - (int(row[0]) if row else 0)

    def worker(self, concurrency: int) -> tuple[list[str], dict[str, str]]:
        env = {"PEER_DSN": self.dsn, "PGQ_BATCH_SIZE": str(self.settings["batch_size"])}
        return [python(), "-m", "bench.peer_apps.pgqueuer_app"], env


class Procrastinate(System):
    name = "procrastinate"
    backend = "postgresql"
    package = "procrastinate"
    settings = {
        "task": "async def (its docs: concurrency comes from async sub-workers)",
        "concurrency": "= the harness's per-process concurrency",
        "listen_notify": True,
        "connector": "PsycopgConnector (psycopg 3 pool)",
        "bulk": "batch_defer, 5,000 per call",
    }

    @contextlib.contextmanager
    def store(self) -> Iterator[None]:
        with database("postgresql") as url:
            self.dsn = url.replace("postgresql+psycopg", "postgresql")
            self.cli = [python(), "-m", "procrastinate", "--app", "bench.peer_apps.procrastinate_app.app"]
            env = {**os.environ, "PYTHONPATH": str(ROOT), "PEER_DSN": self.dsn}
            subprocess.run(
                [*self.cli, "schema", "--apply"], env=env, cwd=ROOT, check=True, capture_output=True
            )
            from procrastinate import App, PsycopgConnector

            from bench.peer_apps import procrastinate_app

            self.client = App(connector=PsycopgConnector(conninfo=self.dsn))
            self.task = self.client.configure_task(procrastinate_app.noop.name)
            with self.client.open():
                yield

    def enqueue_many(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 5000):
            self.task.batch_defer(*[{"i": k} for k in keys[i : i + 5000]])

    def enqueue_one(self, key: str) -> None:
        self.task.defer(i=key)

    def finished(self) -> int:
        with psycopg.connect(self.dsn) as c:
            row = c.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'").fetchone()
        return int(row[0]) if row else 0

    def worker(self, concurrency: int) -> tuple[list[str], dict[str, str]]:
        return [*self.cli, "worker", "--concurrency", str(concurrency)], {"PEER_DSN": self.dsn}


class Huey(System):
    name = "huey_sqlite"
    backend = "sqlite"
    package = "huey"
    bulk = False
    settings = {
        "storage": "SqliteHuey: WAL, 8 MB cache, fsync=False as documented (synchronous=OFF); results=False",
        "consumer": "-k thread -w <concurrency> -d 0.001 -m 0.01 -n (polls every 1-10 ms when idle)",
        "note": "no acknowledgement: a task leaves the queue when dequeued (lost if the worker dies)",
    }

    @contextlib.contextmanager
    def store(self) -> Iterator[None]:
        from huey.storage import SqliteStorage

        from bench.peer_apps import huey_app

        with tempfile.TemporaryDirectory(prefix="huey-bench-") as tmp:
            self.path = f"{tmp}/huey.db"
            self.storage = SqliteStorage(name=huey_app.huey.name, filename=self.path, fsync=False)
            self.select()
            self.task = huey_app.noop
            try:
                yield
            finally:
                self.storage.close()

    def enqueue_many(self, keys: list[str]) -> None:
        for k in keys:
            self.enqueue_one(k)

    def enqueue_one(self, key: str) -> None:
        self.task(key)

    def select(self) -> None:
        from bench.peer_apps import huey_app

        huey_app.huey.storage = self.storage

    def finished(self) -> int:
        return count_lines(self.stamps)  # no acknowledgement: started is all huey knows

    def spawn(self, processes: int, concurrency: int, stamps: Path) -> list[subprocess.Popen[bytes]]:
        self.stamps = stamps
        return super().spawn(processes, concurrency, stamps)

    def worker(self, concurrency: int) -> tuple[list[str], dict[str, str]]:
        argv = [python(), "-m", "huey.bin.huey_consumer", "bench.peer_apps.huey_app.huey"]
        options = ["-k", "thread", "-w", str(concurrency), "-d", "0.001", "-m", "0.01", "-n", "-q"]
        return [*argv, *options], {"HUEY_DB": self.path}


def systems(names: list[str]) -> list[System]:
    every: dict[str, Callable[[], System]] = {
        "ledgerflow_sqlite": lambda: Ledgerflow("sqlite"),
        "ledgerflow_postgresql": lambda: Ledgerflow("postgresql"),
        "ledgerflow_postgresql_async": lambda: LedgerflowAsync("postgresql"),
        "pgqueuer": PgQueuer,
        "procrastinate": Procrastinate,
        "huey_sqlite": Huey,
    }
    unknown = set(names) - set(every)
    if unknown:
        raise SystemExit(f"unknown system(s): {', '.join(sorted(unknown))} (known: {', '.join(every)})")
    return [every[n]() for n in names]


def processing_once(system: System, jobs: int, processes: int, concurrency: int) -> dict[str, Any]:
    """One repetition on a fresh store: bulk enqueue, then start the workers and time them."""
    with system.store(), tempfile.TemporaryDirectory(prefix="lf-stamps-") as tmp:
        stamps = Path(tmp) / "stamps"
        keys = [str(i) for i in range(jobs)]
        started = time.perf_counter()
        system.enqueue_many(keys)
        enqueue_seconds = time.perf_counter() - started
        load = os.getloadavg()[0]
        spawned = time.time()
        procs = system.spawn(processes, concurrency, stamps)
        sampler = RssSampler([p.pid for p in procs])
        sampler.start()
        try:
            done = wait_until(lambda: system.finished() >= jobs, 600, system.name)
        finally:
            rss = max(sampler.stop())
            stop(procs)
        seen = Stamps.read(stamps)
        one_call = one_call_rate(system)
    return {
        "processing": jobs / (seen.times[-1] - seen.times[0]),
        "wall": jobs / (done - spawned),
        "startup": seen.times[0] - spawned,
        "bulk": jobs / enqueue_seconds,
        "one_call": one_call,
        "duplicates": seen.duplicates,
        "executions": seen.count,
        "load": load,
        "rss": rss,
    }


def one_call_rate(system: System, calls: int = 1000) -> float:
    """One job per call, no workers running (after 50 calls of warm-up)."""
    for i in range(50):
        system.enqueue_one(f"one-warm-{i}")
    started = time.perf_counter()
    for i in range(calls):
        system.enqueue_one(f"one-{i}")
    return calls / (time.perf_counter() - started)


def latency(system: System, reps: int, samples: int, gap: float) -> dict[str, Any]:
    """Enqueue -> start with idle workers: `reps` rounds of `samples` jobs, `gap` s apart."""
    from bench.common import percentile

    with system.store(), tempfile.TemporaryDirectory(prefix="lf-stamps-") as tmp:
        stamps = Path(tmp) / "stamps"
        procs = system.spawn(2, 4, stamps)
        try:
            for i in range(10):  # wait for the workers to be up and idle
                system.enqueue_one(f"warm-{i}")
            wait_until(lambda: count_lines(stamps) >= 10, 120, f"{system.name} start-up")
            time.sleep(0.5)
            called: dict[str, float] = {}
            for rep in range(reps):
                for s in range(samples):
                    key = f"lat-{rep}-{s}"
                    called[key] = time.time()
                    system.enqueue_one(key)
                    time.sleep(gap)
            total = 10 + len(called)
            wait_until(lambda: count_lines(stamps) >= total, 120, f"{system.name} latency")
        finally:
            stop(procs)
        first: dict[str, float] = {}
        for line in stamps.read_text().splitlines():
            stamp = parse(line)
            if stamp is not None:
                first.setdefault(stamp[0], stamp[1])
    p50, p99 = [], []
    for rep in range(reps):
        waits = [first[k] - t for k, t in called.items() if k.startswith(f"lat-{rep}-")]
        p50.append(percentile(waits, 50) * 1000)
        p99.append(percentile(waits, 99) * 1000)
    return {"p50_ms": spread(p50, 2), "p99_ms": spread(p99, 2), "samples_per_rep": samples}


def summary(system: System, runs: list[dict[str, Any]], waits: list[dict[str, Any]]) -> dict[str, Any]:
    """One system's repetitions (processing and latency) as medians and spreads."""

    def col(name: str) -> list[float]:
        return [r[name] for r in runs]

    return {
        "version": system.version(),
        "backend": system.backend,
        "settings": system.settings,
        "jobs": runs[0]["jobs"],
        "processes": 2,
        "concurrency": 4,
        "processing_jobs_per_s": spread(col("processing")),
        "wall_jobs_per_s": spread(col("wall")),
        "startup_s": spread(col("startup"), 2),
        "bulk_enqueue_per_s": spread(col("bulk")) if system.bulk else None,
        "one_call_enqueue_per_s": spread(col("one_call")),
        "latency": {
            "p50_ms": spread([w["p50_ms"]["median"] for w in waits], 2),
            "p99_ms": spread([w["p99_ms"]["median"] for w in waits], 2),
            "samples_per_rep": waits[0]["samples_per_rep"],
        },
        "executions": col("executions"),
        "duplicate_executions": sum(r["duplicates"] for r in runs),
        "worker_peak_rss_mb": spread(col("rss"), 1),
        "load_average_at_start": spread(col("load"), 2),
    }


RATIO_MEASURES = ("processing_jobs_per_s", "wall_jobs_per_s", "bulk_enqueue_per_s", "one_call_enqueue_per_s")


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """ledgerflow / peer, medians of the same run (the issue's targets)."""
    pairs = [("ledgerflow_postgresql", "pgqueuer"), ("ledgerflow_postgresql", "procrastinate")]
    pairs.append(("ledgerflow_postgresql_async", "pgqueuer"))
    pairs.append(("ledgerflow_sqlite", "huey_sqlite"))
    out: dict[str, Any] = {}
    for ours, peer in pairs:
        a, b = results.get(ours), results.get(peer)
        if not a or not b or "error" in a or "error" in b:
            continue
        row: dict[str, Any] = {}
        for measure_ in RATIO_MEASURES:
            if a.get(measure_) and b.get(measure_) and b[measure_]["median"]:
                row[measure_] = round(a[measure_]["median"] / b[measure_]["median"], 2)
        row["latency_p50"] = f"{a['latency']['p50_ms']['median']} vs {b['latency']['p50_ms']['median']} ms"
        out[f"{ours} / {peer}"] = row
    return out


DEFAULT = (
    "ledgerflow_sqlite,ledgerflow_postgresql,ledgerflow_postgresql_async,pgqueuer,procrastinate,huey_sqlite"
)


def run(names: list[str], reps: int = 5, jobs: int = 10_000, latency_samples: int = 200) -> dict[str, Any]:
    """Every system measured `reps` times, repetitions interleaved across systems (each
    repetition starts one system later), so a machine that drifts during the run weighs on
    every system alike instead of on whichever was measured last."""
    chosen = systems(names)
    precompile()
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in chosen}
    waits: dict[str, list[dict[str, Any]]] = {s.name: [] for s in chosen}
    errors: dict[str, str] = {}
    for rep in range(reps):
        turn = rep % len(chosen)
        for system in chosen[turn:] + chosen[:turn]:
            if system.name in errors:
                continue
            try:
                runs[system.name].append({**processing_once(system, jobs, 2, 4), "jobs": jobs})
                waits[system.name].append(latency(system, 1, latency_samples, 0.01))
            except ImportError as exc:
                errors[system.name] = f"not installed: {exc.name}"
            except Exception as exc:  # one peer's failure is reported, not hidden, and the others still run
                errors[system.name] = f"{type(exc).__name__}: {exc}"
    results: dict[str, Any] = {
        s.name: {"error": errors[s.name]} if s.name in errors else summary(s, runs[s.name], waits[s.name])
        for s in chosen
    }
    with psycopg.connect(PG_ADMIN) as c:
        server = {
            name: c.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("server_version", "autovacuum", "synchronous_commit", "shared_buffers")
        }
    return {"postgresql_server": server, "systems": results, "ratios": ratios(results)}


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="bench.fair")
    parser.add_argument("--systems", default=DEFAULT)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--latency-samples", type=int, default=200)
    a = parser.parse_args()
    print(json.dumps(run(a.systems.split(","), a.reps, a.jobs, a.latency_samples), indent=2))
