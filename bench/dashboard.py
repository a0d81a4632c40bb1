"""Dashboard benchmark: page latency over real HTTP with 100,000 jobs in the database.

The issue's bar is every page under 200 ms with 100,000 jobs. The database is seeded with
jobs in the proportions of a busy month (mostly completed, some dead, retryable, running and
waiting), one execution row per finished job, then each page is fetched repeatedly through
uvicorn on loopback with a logged-in session.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import uvicorn
from sqlalchemy import insert, select, update

from bench.common import database, summary
from ledgerflow.api.app import create_api
from ledgerflow.builtin import build_app
from ledgerflow.config import load_settings
from ledgerflow.db.tables import job_executions, jobs

TOKEN = "bench-token-16-chars-or-more"
TASKS = [("ledgerflow.daily_export", "exports"), ("bench.mail", "default"), ("bench.ocr", "receipts")]
MIX = [("completed", 0.93), ("dead", 0.01), ("retryable", 0.01), ("running", 0.001), ("available", 0.049)]


def seed(app: Any, total: int) -> dict[str, int]:
    """`total` jobs spread over three tasks and queues, with states and executions."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    counts: dict[str, int] = {}
    batch = 10_000
    for start in range(0, total, batch):
        rows, executions = [], []
        for i in range(start, min(total, start + batch)):
            task, queue = TASKS[i % len(TASKS)]
            state = rng.choices([s for s, _ in MIX], [w for _, w in MIX])[0]
            counts[state] = counts.get(state, 0) + 1
            created = now - timedelta(seconds=(total - i) * 25)  # a month of history, newest last
            finished = created + timedelta(seconds=2) if state in ("completed", "dead") else None
            rows.append(
                {
                    "task": task,
                    "queue": queue,
                    "priority": 5,
                    "state": state,
                    "args": [i],
                    "kwargs": {"note": "領収書 ใบเสร็จ"},
                    "attempt": 1 if finished else 0,
                    "max_attempts": 1 if state == "dead" else 5,
                    "timeout": 30.0,
                    "scheduled_at": created,
                    "created_at": created,
                    "started_at": created + timedelta(seconds=1) if finished else None,
                    "finished_at": finished,
                    "errors": [
                        {
                            "attempt": 1,
                            "type": "RuntimeError",
                            "message": "boom",
                            "traceback": "Traceback (most recent call last):\n  ...\nRuntimeError: boom",
                            "at": finished.isoformat(),
                        }
                    ]
                    if state == "dead"
                    else [],
                }
            )
        with app.db.begin() as conn:
            first = conn.execute(select(jobs.c.id).order_by(jobs.c.id.desc()).limit(1)).scalar() or 0
            conn.execute(insert(jobs), rows)
            for offset, row in enumerate(rows, start=first + 1):
                if row["finished_at"] is not None:
                    executions.append(
                        {
                            "job_id": offset,
                            "attempt": 1,
                            "task": row["task"],
                            "queue": row["queue"],
                            "status": "completed" if row["state"] == "completed" else "failed",
                            "started_at": row["started_at"],
                            "completed_at": row["finished_at"],
                            "duration_seconds": 1.0,
                        }
                    )
            conn.execute(insert(job_executions), executions)
    # the last hour is busy, so the overview's throughput chart has bars to count
    with app.db.begin() as conn:
        conn.execute(
            update(job_executions)
            .where(job_executions.c.id > total - 3000)
            .values(started_at=now - timedelta(minutes=30))
        )
    return counts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(url: str, total: int, repeats: int) -> dict[str, Any]:
    app = build_app(load_settings(database_url=url, api_token=TOKEN, log_level="WARNING"))
    app.migrate()
    started = time.perf_counter()
    states = seed(app, total)
    seeded = time.perf_counter() - started
    with app.db.read() as conn:
        dead_id = conn.execute(select(jobs.c.id).where(jobs.c.state == "dead").limit(1)).scalar_one()
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_api(app), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    pages = {
        "overview": "/",
        "overview_live_refresh": "/?partial=1",
        "jobs": "/jobs",
        "jobs_dead": "/jobs?state=dead",
        "jobs_completed": "/jobs?state=completed",
        "jobs_completed_of_task": "/jobs?state=completed&task=bench.mail",
        "jobs_by_task": "/jobs?task=bench.ocr",
        "jobs_by_queue_and_state": "/jobs?queue=receipts&state=retryable",
        "jobs_page_2": f"/jobs?before_id={total - 50}",
        "job_detail": f"/jobs/{dead_id}",
        "dead_letter_queue": "/dlq",
        "schedules": "/schedules",
        "exports": "/exports",
    }
    out: dict[str, Any] = {"jobs_in_database": total, "states": states, "seed_seconds": round(seeded, 1)}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        login = client.post("/login", data={"password": TOKEN, "next": "/"})
        # the session cookie is Secure (browsers treat loopback as secure; httpx does not): send it by hand
        client.headers["Cookie"] = login.headers["set-cookie"].split(";", 1)[0]
        client.cookies.clear()
        for name, path in pages.items():
            client.get(path).raise_for_status()  # warm: templates compiled, connections open
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                response = client.get(path)
                times.append(time.perf_counter() - t0)
                response.raise_for_status()
                assert "/login" not in str(response.url), "the session was not accepted"
            out[name] = summary(times)
    server.should_exit = True
    thread.join(10)
    app.close()
    out["slowest_p99_ms"] = max(v["p99_ms"] for v in out.values() if isinstance(v, dict) and "p99_ms" in v)
    return out


def run(backends: list[str], total: int = 100_000, repeats: int = 30) -> dict[str, Any]:
    results = {}
    for backend in backends:
        with database(backend) as url:
            results[backend] = measure(url, total, repeats)
    return results
