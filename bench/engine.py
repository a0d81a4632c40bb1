"""Engine benchmark: enqueue rates, processing rate of no-op jobs, start latency, worker RSS."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select

from bench.apps import noop
from bench.common import RssSampler, database, python, spawn, summary
from ledgerflow import App
from ledgerflow.db.tables import jobs

QUIET = {"LEDGERFLOW_LOG_LEVEL": "WARNING"}


def _app(url: str) -> App:
    app = App(database_url=url, log_level="WARNING")
    app.migrate()
    return app


def enqueue_rates(url: str, single: int = 2000, bulk: int = 20000) -> dict[str, float]:
    app = _app(url)
    spec = noop.prepare(1)
    for _ in range(100):  # warm up: connections and compiled statements; measure the steady state
        app.enqueue(spec)
    start = time.perf_counter()
    for _ in range(single):
        app.enqueue(spec)
    one_call = single / (time.perf_counter() - start)
    specs = [noop.prepare(i) for i in range(bulk)]
    start = time.perf_counter()
    for i in range(0, bulk, 5000):
        app.enqueue_many(specs[i : i + 5000])
    many = bulk / (time.perf_counter() - start)
    app.close()
    return {"enqueue_one_per_s": round(one_call), "enqueue_many_per_s": round(many)}


def workers(url: str, count: int, concurrency: int, burst: bool) -> list[Any]:
    args = [
        python(),
        "-m",
        "ledgerflow",
        "worker",
        "--app",
        "bench.apps:app",
        "--queues",
        "default",
        "--concurrency",
        str(concurrency),
    ] + (["--burst"] if burst else [])
    return [spawn(args, {"LEDGERFLOW_DATABASE_URL": url, **QUIET}) for _ in range(count)]


def processing_rate(url: str, n: int = 10000, processes: int = 2, concurrency: int = 4) -> dict[str, Any]:
    app = _app(url)
    app.enqueue_many([noop.prepare(i) for i in range(n)])
    procs = workers(url, processes, concurrency, burst=True)
    sampler = RssSampler([p.pid for p in procs])
    sampler.start()
    wall = time.perf_counter()
    for p in procs:
        p.wait(600)
    wall = time.perf_counter() - wall
    rss = sampler.stop()
    with app.db.read() as conn:
        first, last, done = conn.execute(
            select(func.min(jobs.c.started_at), func.max(jobs.c.finished_at), func.count()).where(
                jobs.c.state == "completed"
            )
        ).one()
    app.close()
    seconds = (last - first).total_seconds()
    return {
        "jobs": n,
        "completed": done,
        "processes": processes,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(done / seconds),
        "wall_seconds": round(wall, 2),
        "worker_peak_rss_mb": rss,
    }


def latency(url: str, samples: int = 300, gap: float = 0.01) -> dict[str, Any]:
    app = _app(url)
    procs = workers(url, 2, 4, burst=False)
    time.sleep(3)  # let the workers start and go idle
    ids = []
    for i in range(samples):
        ids.append(app.enqueue(noop.prepare(i)).id)
        time.sleep(gap)
    deadline = time.time() + 60
    while time.time() < deadline:
        with app.db.read() as conn:
            waiting = conn.execute(
                select(func.count()).where(jobs.c.id.in_(ids), jobs.c.state != "completed")
            ).scalar()
        if not waiting:
            break
        time.sleep(0.2)
    with app.db.read() as conn:
        rows = conn.execute(select(jobs.c.created_at, jobs.c.started_at).where(jobs.c.id.in_(ids))).all()
    for p in procs:
        p.terminate()
        p.wait(30)
    app.close()
    return {"samples": len(rows), **summary([(s - c).total_seconds() for c, s in rows if s])}


def run(backends: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for backend in backends:
        result: dict[str, Any] = {}
        with database(backend) as url:
            result.update(enqueue_rates(url))
        with database(backend) as url:
            result["processing"] = processing_rate(url)
        with database(backend) as url:
            result["latency"] = latency(url)
        out[backend] = result
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(sys.argv[1:] or ["sqlite", "postgresql"]), indent=2))
