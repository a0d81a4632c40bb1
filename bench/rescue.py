"""Rescue time: how long after its worker is SIGKILLed a job runs again, at the default lease
settings (no LEDGERFLOW_LEASE_* overrides), and whether a slow but alive job is ever rescued.

Two worker processes serve one queue. Each round enqueues a job that holds its first attempt
(it sleeps); the worker that claimed it is SIGKILLed as soon as the attempt runs, the survivor
rescues the job and runs its second attempt (which returns at once), and a fresh worker replaces
the killed one. Rescue time = start of attempt 2 (its execution row) − the kill. Meanwhile a
job three leases long runs on a third worker (its own queue, never killed) while the others
rescue; any `lease_expired` on it is a false rescue.

    python -m bench.rescue [--backends sqlite,postgresql] [--kills 20]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from bench.apps import hold
from bench.common import ROOT, database, percentile
from ledgerflow import App
from ledgerflow.config import Settings
from ledgerflow.db.migrate import migrate
from ledgerflow.db.tables import job_executions, jobs, workers
from ledgerflow.engine.liveness import owner_of

APP = "bench.apps:app"


def start_worker(url: str, queue: str = "default") -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")}
    env.update(
        LEDGERFLOW_DATABASE_URL=url,
        LEDGERFLOW_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    args = [sys.executable, "-m", "ledgerflow", "worker", "--app", APP, "--concurrency", "2"]
    args += ["--queues", queue]
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def run_backend(backend: str, kills: int) -> dict[str, Any]:
    with database(backend) as url:
        app = App(database_url=url, log_level="WARNING")
        migrate(app.db)
        procs = {p.pid: p for p in (start_worker(url), start_worker(url))}
        steady = start_worker(url, "slow")

        def live_workers() -> int:
            with app.db.read() as conn:
                rows = conn.execute(select(workers.c.pid).where(workers.c.stopped_at.is_(None))).scalars()
                return len({pid for pid in rows if pid in procs and procs[pid].poll() is None})

        wait_for(lambda: live_workers() == 2, 300, "two workers")
        defaults = Settings(database_url=url)
        slow = app.enqueue(hold.configure(queue="slow").prepare(defaults.lease_seconds * 3, -1)).id
        times: list[float] = []
        for round_no in range(kills):
            job_id = app.enqueue(hold.prepare(120.0, round_no)).id

            def holder(job_id: int = job_id) -> int | None:
                job = app.get_job(job_id)
                owner = owner_of(job.worker_id) if job.state == "running" else None
                return owner[1] if owner else None

            pid = wait_for(holder, 120, "the job to run")
            killed_at = datetime.now(UTC)
            procs[pid].send_signal(signal.SIGKILL)
            procs.pop(pid).wait()

            def second_attempt(job_id: int = job_id) -> datetime | None:
                with app.db.read() as conn:
                    return conn.execute(
                        select(job_executions.c.started_at).where(
                            job_executions.c.job_id == job_id, job_executions.c.attempt == 2
                        )
                    ).scalar()

            rerun_at = wait_for(second_attempt, 120, "the rescued job to run again")
            times.append((_aware(rerun_at) - killed_at).total_seconds())
            print(f"rescue {backend} {round_no + 1}/{kills}: {times[-1]:.2f} s", file=sys.stderr, flush=True)
            replacement = start_worker(url)
            procs[replacement.pid] = replacement
            wait_for(lambda: live_workers() == 2, 300, "the replacement worker")
        wait_for(lambda: app.get_job(slow).state == "completed", 300, "the slow job")
        with app.db.read() as conn:
            false_rescues = conn.execute(
                select(job_executions.c.job_id).where(
                    job_executions.c.job_id == slow, job_executions.c.error_type == "lease_expired"
                )
            ).all()
            rescued_total = len(
                conn.execute(select(jobs.c.id).where(jobs.c.attempt > 1, jobs.c.id != slow)).all()
            )
        for p in [*procs.values(), steady]:
            p.send_signal(signal.SIGKILL)
            p.wait()
        app.close()
    return {
        "kills": kills,
        "rescued": rescued_total,
        "rescue_p50_s": round(percentile(times, 50), 2),
        "rescue_p99_s": round(percentile(times, 99), 2),
        "rescue_max_s": round(max(times), 2),
        "rescue_min_s": round(min(times), 2),
        "slow_job_seconds": defaults.lease_seconds * 3,
        "false_rescues_of_the_slow_job": len(false_rescues),
        "settings": {
            "lease_seconds": defaults.lease_seconds,
            "heartbeat_seconds": defaults.heartbeat_seconds,
            "rescue_interval": defaults.rescue_interval,
        },
    }


def run(backends: list[str], kills: int = 20) -> dict[str, Any]:
    return {backend: run_backend(backend, kills) for backend in backends}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.rescue")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--kills", type=int, default=20)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.backends.split(","), args.kills), indent=2))


if __name__ == "__main__":
    main()
