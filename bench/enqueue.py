"""One-call enqueue (wall and CPU per call) and enqueue -> start latency, ledgerflow beside its peers.

python -m bench.enqueue [--systems ...] [--reps 5] [--calls 1000] [--bulk-jobs 10000] [--latency-samples 100]

* one-call: `calls` single enqueues per repetition (after 50 of warm-up), no worker running;
  the repetitions of every system are interleaved (repetition 1 of each, then 2, ...) so a
  change of the machine's load falls on all of them; wall and CPU (this process: the client,
  SQLite's own work included, not PostgreSQL's server) per call;
* bulk: `bulk_jobs` jobs with each system's bulk call on a fresh store (`System.enqueue_many`,
  as `bench.fair` measures it: 5,000 per call, ledgerflow's `Task.prepare` of each job
  included), the systems interleaved per repetition; wall and CPU (the client) per job;
* latency: `bench.fair.latency` (idle workers, 2 processes x 4, jobs 10 ms apart);
* `huey_sqlite_normal`: Huey with SQLite `synchronous=NORMAL`, ledgerflow's durability (its
  documented `fsync=False` is `synchronous=OFF`), for a comparison at equal durability.

Each figure is a median with its min-max over the repetitions, and the load average is kept.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from bench.fair import Huey, System, latency, spread, systems


class HueyNormal(Huey):
    """Huey's SQLite store at `synchronous=NORMAL` (WAL), the durability ledgerflow keeps."""

    name = "huey_sqlite_normal"
    settings = {**Huey.settings, "storage": "SqliteHuey: WAL, synchronous=NORMAL (ledgerflow's default)"}

    @contextlib.contextmanager
    def store(self) -> Iterator[None]:
        from huey.storage import SqliteStorage

        class NormalStorage(SqliteStorage):  # type: ignore[misc]
            def _create_connection(self) -> sqlite3.Connection:
                conn: sqlite3.Connection = super()._create_connection()
                conn.execute("PRAGMA synchronous=NORMAL")
                return conn

        with super().store():
            from bench.peer_apps import huey_app

            self.storage.close()
            self.storage = NormalStorage(name=huey_app.huey.name, filename=self.path)
            self.select()
            yield


def one_call(stores: list[System], reps: int, calls: int) -> dict[str, list[tuple[float, float, float]]]:
    """(wall s, CPU s, load) per call and repetition, systems interleaved within each repetition."""
    out: dict[str, list[tuple[float, float, float]]] = {s.name: [] for s in stores}
    for s in stores:
        s.select()
        for i in range(50):
            s.enqueue_one(f"warm-{i}")
    for rep in range(reps):
        for s in stores:
            s.select()  # two Huey stores share huey_app's instance: each measures its own
            load = os.getloadavg()[0]
            gc.collect()  # no system pays for the garbage another left
            cpu, wall = time.process_time(), time.perf_counter()
            for i in range(calls):
                s.enqueue_one(f"one-{rep}-{i}")
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            out[s.name].append((wall / calls, cpu / calls, load))
    return out


def bulk(stores: list[System], reps: int, jobs: int) -> dict[str, list[tuple[float, float, float]]]:
    """(wall s, CPU s, load) per job and repetition, each on a fresh store, systems interleaved."""
    out: dict[str, list[tuple[float, float, float]]] = {s.name: [] for s in stores if s.bulk}
    keys = [str(i) for i in range(jobs)]
    for _ in range(reps):
        for s in stores:
            if s.bulk:
                with s.store():
                    load = os.getloadavg()[0]
                    gc.collect()
                    cpu, wall = time.process_time(), time.perf_counter()
                    s.enqueue_many(keys)
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                out[s.name].append((wall / jobs, cpu / jobs, load))
    return out


def run(names: list[str], reps: int, calls: int, latency_samples: int, bulk_jobs: int = 0) -> dict[str, Any]:
    every = {s.name: s for s in systems([n for n in names if n != HueyNormal.name])}
    if HueyNormal.name in names:
        every[HueyNormal.name] = HueyNormal()
    chosen = [every[n] for n in names]
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for s in chosen:
            stack.enter_context(s.store())
        measured = one_call(chosen, reps, calls)
    for s in chosen:
        runs = measured[s.name]
        results[s.name] = {
            "version": s.version(),
            "settings": s.settings,
            "one_call_per_s": spread([1 / w for w, _, _ in runs]),
            "wall_us_per_call": spread([w * 1e6 for w, _, _ in runs]),
            "cpu_us_per_call": spread([c * 1e6 for _, c, _ in runs]),
            "load_average": spread([load for _, _, load in runs], 2),
        }
    if bulk_jobs:
        for name, runs in bulk(chosen, reps, bulk_jobs).items():
            results[name]["bulk"] = {
                "jobs_per_s": spread([1 / w for w, _, _ in runs]),
                "cpu_us_per_job": spread([c * 1e6 for _, c, _ in runs], 1),
                "load_average": spread([load for _, _, load in runs], 2),
            }
    if latency_samples:
        for s in chosen:
            if s.name != HueyNormal.name:  # its consumers would run Huey's own settings
                started_load = os.getloadavg()[0]
                results[s.name]["latency"] = latency(s, reps, latency_samples, 0.01)
                results[s.name]["latency"]["load_average_at_start"] = round(started_load, 2)
    return results


DEFAULT = "ledgerflow_sqlite,huey_sqlite,huey_sqlite_normal,ledgerflow_postgresql,pgqueuer"

if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="bench.enqueue")
    parser.add_argument("--systems", default=DEFAULT)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--bulk-jobs", type=int, default=10_000, help="0: no bulk enqueue")
    parser.add_argument("--latency-samples", type=int, default=100, help="0: no latency")
    a = parser.parse_args()
    print(json.dumps(run(a.systems.split(","), a.reps, a.calls, a.latency_samples, a.bulk_jobs), indent=2))
