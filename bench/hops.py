"""Enqueue -> start latency on PostgreSQL, hop by hop (idle workers, as `bench.fair.latency`).

python -m bench.hops [--runs 3] [--samples 200] [--gap 0.01]

Two worker processes x 4 run this module's app (`--app bench.hops:app`). With `BENCH_HOPS`
set, importing it wraps the worker's methods on the wake-up -> start path so that each appends
`"<event> <pid> <time.monotonic()>"` to that file (CLOCK_MONOTONIC is one clock for every
process on Linux); the harness stamps each `enqueue` call and its return. For each job the
first event of each kind between its enqueue call and its task's first line, in the process
that ran it, gives the hops; the table is the median (p90, p99) of each hop over all jobs.
What else runs in a worker is recorded as `<name>+` / `<name>-` spans (GC through
gc.callbacks, the maintenance steps, alert checks and redelivery, the heartbeat); the
`--slowest` jobs are printed hop by hop with the spans of either process that overlapped them.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ledgerflow import App

app = App()
_fd: int | None = None

#: The events in path order: (name, what the hop up to it is).
EVENTS = [
    ("call", "harness calls enqueue"),
    ("notify", "the listener's notifies() yields the NOTIFY"),
    ("returned", "enqueue returns (INSERT + COMMIT)"),
    ("notified", "Worker._notified (listener thread, after the election)"),
    ("woken", "Worker._woken on the event loop"),
    ("cycle", "Worker._cycle starts on the database thread"),
    ("claim", "LeaseSQL.claim entered"),
    ("claimed", "LeaseSQL.claim returns"),
    ("cycled", "Worker._cycle returns"),
    ("start", "Worker._start on the event loop"),
    ("task", "the task's first line (pool thread)"),
]


#: The Python spans on either side of the claim statement.
SPANS = [("notify", "claim"), ("claimed", "task"), ("notify", "task")]

#: The maintenance thread's steps among the recorded spans.
MAINTENANCE = ("rescue", "stage", "index", "alerts", "redeliver")


def record(event: str) -> None:
    """Append one event (no-op when `BENCH_HOPS` is unset)."""
    global _fd
    if _fd is None:
        path = os.environ.get("BENCH_HOPS")
        if not path:
            return
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, f"{event} {os.getpid()} {time.monotonic():.7f}\n".encode())


def _reopen() -> None:
    global _fd
    if _fd is not None:
        os.close(_fd)
    _fd = None


@app.task(name="bench.hop")
def hop(i: int = 0) -> None:
    """Records its first line."""
    record("task")


def _wrap(owner: Any, name: str, before: str | None, after: str | None = None) -> None:
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if before:
            record(before)
        out = original(*args, **kwargs)
        if after:
            record(after)
        return out

    setattr(owner, name, wrapped)


def _gc(phase: str, _info: dict[str, Any]) -> None:
    record("gc+" if phase == "start" else "gc-")


def _install() -> None:
    import gc

    import psycopg

    from ledgerflow.alert_checks import AlertChecks
    from ledgerflow.alerts import Alerts
    from ledgerflow.engine.leases import LeaseSQL
    from ledgerflow.engine.worker import Worker

    notifies = psycopg.Connection.notifies

    def stamped(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for note in notifies(self, *args, **kwargs):
            record("notify")
            yield note

    psycopg.Connection.notifies = stamped  # type: ignore[method-assign,assignment]
    _wrap(Worker, "_notified", "notified")
    _wrap(Worker, "_woken", "woken")
    _wrap(Worker, "_cycle", "cycle", "cycled")
    _wrap(Worker, "_start", "start")
    _wrap(LeaseSQL, "claim", "claim", "claimed")
    gc.callbacks.append(_gc)
    for owner, name, event in [
        (Worker, "_rescue", "rescue"),
        (Worker, "_stage", "stage"),
        (Worker, "_index_search", "index"),
        (AlertChecks, "maybe_check", "alerts"),
        (Alerts, "redeliver", "redeliver"),
        (LeaseSQL, "heartbeat", "heartbeat"),
    ]:
        _wrap(owner, name, event + "+", event + "-")


if os.environ.get("BENCH_HOPS") and os.environ.get("BENCH_HOPS_WORKER"):
    _install()


def measure(runs: int, samples: int, gap: float, slowest: int = 5) -> dict[str, Any]:
    """Hop medians over `runs` fresh databases of `samples` jobs each."""
    per_hop: dict[str, list[float]] = {}
    load = []
    slow: list[dict[str, Any]] = []
    for _ in range(runs):
        average, text = _one_run(samples, gap)
        load.append(average)
        for name, values in _hops(text).items():
            per_hop.setdefault(name, []).extend(values)
        slow.extend(_slowest(text, slowest))
    table = {}
    for name, values in per_hop.items():
        ordered = sorted(values)
        table[name] = {
            "p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 3),
            "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 3),
            "n": len(ordered),
        }
    slow.sort(key=lambda row: -row["total_ms"])
    return {"load_average": load, "hops": table, "slowest": slow[:slowest]}


def _one_run(samples: int, gap: float) -> tuple[float, str]:
    """One fresh database, two idle worker processes, `samples` jobs: (load average, events)."""
    from bench.common import ROOT, database, python
    from bench.fair import stop, wait_until

    with database("postgresql") as url, tempfile.TemporaryDirectory(prefix="lf-hops-") as tmp:
        events = Path(tmp) / "events"
        os.environ["BENCH_HOPS"] = str(events)
        _reopen()
        client = App(database_url=url, log_level="WARNING")
        client.migrate()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "BENCH_HOPS_WORKER": "1",
            "LEDGERFLOW_DATABASE_URL": url,
            "LEDGERFLOW_LOG_LEVEL": "WARNING",
        }
        argv = [python(), "-m", "ledgerflow", "worker", "--app", "bench.hops:app", "--concurrency", "4"]
        procs = [subprocess.Popen(argv, env=env, cwd=ROOT) for _ in range(2)]
        try:
            for i in range(10):
                client.enqueue(hop.prepare(-1 - i))
            wait_until(lambda: _count(events, "task") >= 10, 120, "start-up")
            time.sleep(0.5)
            load = os.getloadavg()[0]
            for i in range(samples):
                record("call")
                client.enqueue(hop.prepare(i))
                record("returned")
                time.sleep(gap)
            wait_until(lambda: _count(events, "task") >= 10 + samples, 120, "latency")
        finally:
            stop(procs)
            client.close()
        return load, events.read_text()


def _count(path: Path, event: str) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.startswith(event + " "))


Event = tuple[str, int, float]


def _events(text: str) -> list[Event]:
    rows = (line.split() for line in text.splitlines())
    return sorted(((name, int(pid), float(at)) for name, pid, at in rows), key=lambda e: e[2])


def _jobs(events: list[Event]) -> Iterator[tuple[dict[str, float], Event]]:
    """Per job: the first time of each path event (in the process that ran it) and its task event."""
    calls = [i for i, e in enumerate(events) if e[0] == "call"]
    for n, i in enumerate(calls):
        window = events[i : calls[n + 1] if n + 1 < len(calls) else len(events)]
        task = next((e for e in window if e[0] == "task"), None)
        if task is None:
            continue
        first: dict[str, float] = {}
        for name, pid, at in window:
            if at <= task[2] and (pid == task[1] or name in ("call", "returned")):
                first.setdefault(name, at)
        yield first, task


def _spans(events: list[Event]) -> list[tuple[str, int, float, float]]:
    """The context spans: (what, pid, start, end)."""
    spans = []
    open_: dict[tuple[str, int], float] = {}
    for name, pid, at in events:
        if name.endswith("+"):
            open_[(name[:-1], pid)] = at
        elif name.endswith("-") and (name[:-1], pid) in open_:
            spans.append((name[:-1], pid, open_.pop((name[:-1], pid)), at))
    return spans


def _slowest(text: str, k: int) -> list[dict[str, Any]]:
    """The `k` slowest jobs (call -> task): their hops, and the context spans (GC, maintenance
    steps, heartbeat) of either worker process that overlapped them, with who ran the job."""
    events = _events(text)
    spans = _spans(events)
    jobs = sorted(_jobs(events), key=lambda j: j[1][2] - j[0]["call"], reverse=True)[:k]
    out = []
    for first, task in jobs:
        start, end = first["call"], task[2]
        hops, last = {}, start
        for name, _ in EVENTS[1:]:
            if name in first:
                hops[name] = round((first[name] - last) * 1000, 3)
                if name != "returned":
                    last = first[name]
        overlapping = [
            {
                "what": name,
                "same_process": pid == task[1],
                "ms": round((b - a) * 1000, 3),
                "from_call_ms": round((a - start) * 1000, 3),
            }
            for name, pid, a, b in spans
            if a < end and b > start
        ]
        # The other process's claim attempts in the window (a lost race for this job).
        rival = [e for e in events if e[0] == "claim" and e[1] != task[1] and start <= e[2] <= end]
        out.append(
            {
                "total_ms": round((end - start) * 1000, 3),
                "hops_ms": hops,
                "overlapping": overlapping,
                "rival_claims": len(rival),
            }
        )
    return out


def _hops(text: str) -> dict[str, list[float]]:
    """Per job: each event's time after the enqueue call, and after the previous event found
    (in path order: with the claim started from the listener's thread, `woken` may come after
    `cycle`, a negative hop). The spans are also given apart for the jobs that a maintenance
    step of the process that ran them overlapped (`[maintenance]`)."""
    out: dict[str, list[float]] = {}
    events = _events(text)
    busy = [(pid, a, b) for name, pid, a, b in _spans(events) if name in MAINTENANCE]
    for first, task in _jobs(events):
        last = first["call"]
        for name, _ in EVENTS[1:]:
            if name in first:
                out.setdefault(f"call -> {name}", []).append(first[name] - first["call"])
                if name != "returned":  # off the worker's path
                    out.setdefault(f"hop -> {name}", []).append(first[name] - last)
                    last = first[name]
        for a, b in SPANS:
            if a in first and b in first:
                out.setdefault(f"span {a} -> {b}", []).append(first[b] - first[a])
                if any(pid == task[1] and x < task[2] and y > first["call"] for pid, x, y in busy):
                    out.setdefault(f"span {a} -> {b} [maintenance]", []).append(first[b] - first[a])
    return out


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="bench.hops")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.01)
    parser.add_argument("--slowest", type=int, default=5)
    a = parser.parse_args()
    out = measure(a.runs, a.samples, a.gap, a.slowest)
    for name, row in out["hops"].items():
        figures = "  ".join(f"{q} {row[q + '_ms']:7.3f}" for q in ("p50", "p90", "p99"))
        print(f"{name:40} {figures}  n {row['n']}")
    for row in out["slowest"]:
        hops = " ".join(f"{k} {v:.2f}" for k, v in row["hops_ms"].items())
        print(f"slow {row['total_ms']:7.2f} ms: {hops}; rival claims {row['rival_claims']}")
        for o in row["overlapping"]:
            where = "same" if o["same_process"] else "other"
            print(f"    {o['what']:10} {where:5} process  {o['ms']:7.3f} ms at call+{o['from_call_ms']:.2f}")
    print(json.dumps(out))
