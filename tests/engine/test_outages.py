"""Database outages: workers never exit, reconnect, lose nothing and recover their throughput."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ledgerflow import App, DatabaseUnavailable, JobState
from ledgerflow.db.database import Database
from ledgerflow.db.migrate import migrate
from ledgerflow.db.tables import job_executions, jobs
from tests.apps import basic
from tests.conftest import ON_CI, WorkerProcess, test_metadata, wait_until
from tests.pgcluster import ThrowawayCluster

pytestmark = pytest.mark.slow


class Producer(threading.Thread):
    """Enqueues a steady stream (one job every `interval` s) and keeps what failed to retry later."""

    def __init__(self, url: str, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.app = App(database_url=url, log_level="ERROR", connect_timeout=2, sqlite_busy_timeout=30)
        self.interval = interval
        self.stop_flag = threading.Event()
        self.ids: list[int] = []
        self.errors: list[tuple[float, str]] = []
        self.successes: list[float] = []
        self.slowest_failure = 0.0

    def run(self) -> None:
        owed = 0
        next_at = time.monotonic()
        while not self.stop_flag.is_set():
            owed += 1
            started = time.monotonic()
            try:
                self.ids += self.app.enqueue_many([basic.record.prepare() for _ in range(owed)])
                self.successes.append(time.time())
                owed = 0
            except DatabaseUnavailable as exc:
                self.slowest_failure = max(self.slowest_failure, time.monotonic() - started)
                self.errors.append((time.monotonic(), str(exc)))
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def finish(self) -> list[int]:
        self.stop_flag.set()
        self.join(30)
        return self.ids


def completions_per_second(url: str) -> Counter[int]:
    db = Database(url)
    with db.read() as conn:
        times = (
            conn.execute(select(jobs.c.finished_at).where(jobs.c.state == JobState.COMPLETED)).scalars().all()
        )
    db.dispose()
    return Counter(int(t.timestamp()) for t in times)


def warm_up(url: str, steady_seconds: float = 6.0) -> None:
    """Wait for the workers' first completion (start-up time varies), then a steady stretch:
    the baseline throughput is measured over its last seconds."""
    db = Database(url)
    try:

        def completed() -> int:
            with db.read() as conn:
                query = select(func.count()).select_from(jobs).where(jobs.c.state == JobState.COMPLETED)
                return int(conn.execute(query).scalar_one())

        wait_until(lambda: completed() > 0, 60, 0.2, "workers started")
    finally:
        db.dispose()
    time.sleep(steady_seconds)


def baseline(rates: Counter[int], outage_start: float, producer: Producer) -> int:
    """The pre-outage completions per second (median of 5 s), or the producer's rate if lower.

    The pre-outage rate may include a start-up backlog; once that is drained the workers can
    complete no more than the producer enqueues.
    """
    before = [rates.get(s, 0) for s in range(int(outage_start) - 6, int(outage_start) - 1)]
    rate = min(sorted(before)[len(before) // 2], round(1 / producer.interval))
    assert rate > 10, f"no steady baseline before the outage: {before}"
    return rate


def recovered_within_10s(url: str, outage_start: float, recovered: float, producer: Producer) -> bool:
    """Whether throughput reached >= 80 % of the baseline (3-second average) within 10 s of the
    recovery, judged on the seconds already over."""
    rates = completions_per_second(url)
    bar = 0.8 * baseline(rates, outage_start, producer)
    over = int(time.time()) - 1  # the seconds before this one are complete (one more for commits)
    for second in range(int(recovered), min(int(recovered) + 11, over - 2)):
        if sum(rates.get(s, 0) for s in range(second, second + 3)) / 3 >= bar:
            return True
    return False


def keep_producing_until_recovered(
    url: str, outage_start: float, recovered: float, producer: Producer, seconds: float
) -> None:
    """The producer goes on until throughput has recovered, or for `seconds` at most (the 10 s
    the recovery may take and the 3 s of its last window): no fixed wait."""
    deadline = recovered + seconds
    while time.time() < deadline and not recovered_within_10s(url, outage_start, recovered, producer):
        time.sleep(0.5)


def assert_recovered(url: str, outage_start: float, recovered: float, producer: Producer) -> None:
    """Throughput after recovery reaches >= 80 % of the pre-outage rate within 10 s."""
    if recovered_within_10s(url, outage_start, recovered, producer):
        return
    rates = completions_per_second(url)
    after = [rates.get(s, 0) for s in range(int(recovered), int(recovered) + 15)]
    enqueued = Counter(int(t) for t in producer.successes)
    produced = [enqueued.get(s, 0) for s in range(int(recovered), int(recovered) + 15)]
    pytest.fail(
        f"throughput did not recover to 80 % of {baseline(rates, outage_start, producer)}/s within "
        f"10 s: completed/s {after}, successful enqueue calls/s {produced}, "
        f"enqueue errors {len(producer.errors)}"
    )


def assert_nothing_lost_no_double_completion(url: str, ids: list[int]) -> None:
    db = Database(url)
    with db.read() as conn:
        states = Counter(conn.execute(select(jobs.c.state).where(jobs.c.id.in_(ids))).scalars())
        doubles = (
            conn.execute(
                select(job_executions.c.job_id)
                .where(job_executions.c.status == "completed")
                .group_by(job_executions.c.job_id)
                .having(func.count() > 1)
            )
            .scalars()
            .all()
        )
    db.dispose()
    assert states == {JobState.COMPLETED: len(ids)}, states
    assert doubles == [], f"jobs completed twice: {doubles[:10]}"


@pytest.fixture
def cluster() -> Iterator[ThrowawayCluster]:
    c = ThrowawayCluster()
    try:
        c.init()
        c.start()
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        c.destroy()
        if ON_CI:
            pytest.fail(f"cannot start a throwaway PostgreSQL cluster: {exc}")
        pytest.skip(f"cannot start a throwaway PostgreSQL cluster: {exc}")
    yield c
    c.destroy()


@pytest.fixture
def cluster_db(cluster: ThrowawayCluster) -> str:
    url = cluster.create_database("outage")
    db = Database(url)
    migrate(db)
    test_metadata.create_all(db.engine)
    db.dispose()
    return url


def _start_workers(url: str, tmp_path: Path) -> list[WorkerProcess]:
    return [
        WorkerProcess(
            url, tmp_path, concurrency=4, name=f"outage{i}", env={"LEDGERFLOW_LOG_LEVEL": "WARNING"}
        )
        for i in range(2)
    ]


def test_workers_survive_a_20s_server_restart(cluster, cluster_db, tmp_path):
    procs = _start_workers(cluster_db, tmp_path)
    producer = Producer(cluster_db)
    try:
        producer.start()
        warm_up(cluster_db)
        outage_start = time.time()
        cluster.stop()
        time.sleep(20)
        cluster.start()
        recovered = time.time()
        keep_producing_until_recovered(cluster_db, outage_start, recovered, producer, 15)
        ids = producer.finish()
        assert all(p.proc.poll() is None for p in procs), "a worker exited during the outage"
        assert producer.errors, "enqueue during the outage should have failed"
        assert all("database unavailable" in e for _, e in producer.errors)
        assert producer.slowest_failure < 6, "enqueue hung instead of failing fast"
        app = App(database_url=cluster_db, log_level="ERROR")
        wait_until(
            lambda: app.store.counts().get(("default", "record", "completed"), 0) >= len(ids),
            60,
            0.5,
            "backlog drained",
        )
        assert_nothing_lost_no_double_completion(cluster_db, ids)
        assert_recovered(cluster_db, outage_start, recovered, producer)
        app.close()
    finally:
        producer.stop_flag.set()
        for p in procs:
            p.stop()


def test_workers_survive_connections_terminated_twice_a_second(cluster, cluster_db, tmp_path):
    procs = _start_workers(cluster_db, tmp_path)
    producer = Producer(cluster_db)
    try:
        producer.start()
        warm_up(cluster_db)
        chaos_start = time.time()
        while time.time() - chaos_start < 30:
            cluster.terminate_connections("outage")
            time.sleep(0.5)
        recovered = time.time()
        keep_producing_until_recovered(cluster_db, chaos_start, recovered, producer, 15)
        ids = producer.finish()
        assert all(p.proc.poll() is None for p in procs), "a worker exited"
        app = App(database_url=cluster_db, log_level="ERROR")
        wait_until(
            lambda: app.store.counts().get(("default", "record", "completed"), 0) >= len(ids),
            60,
            0.5,
            "backlog drained",
        )
        assert_nothing_lost_no_double_completion(cluster_db, ids)
        assert_recovered(cluster_db, chaos_start, recovered, producer)
        app.close()
    finally:
        producer.stop_flag.set()
        for p in procs:
            p.stop()


HOG = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def test_sqlite_workers_wait_while_another_process_holds_the_write_lock(tmp_path, sqlite_template):
    import shutil

    path = tmp_path / "locked.db"
    shutil.copy(sqlite_template, path)
    url = f"sqlite:///{path}"
    procs = _start_workers(url, tmp_path)
    producer = Producer(url, interval=0.02)
    try:
        producer.start()
        warm_up(url)
        hog = subprocess.Popen(
            [sys.executable, "-c", HOG, str(path), "10"], stdout=subprocess.PIPE, text=True
        )
        assert hog.stdout is not None and hog.stdout.readline().strip() == "locked"
        lock_start = time.time()
        assert hog.wait(30) == 0
        released = time.time()
        keep_producing_until_recovered(url, lock_start, released, producer, 15)
        ids = producer.finish()
        assert all(p.proc.poll() is None for p in procs), "a worker exited while the lock was held"
        app = App(database_url=url, log_level="ERROR")
        wait_until(
            lambda: app.store.counts().get(("default", "record", "completed"), 0) >= len(ids),
            60,
            0.5,
            "backlog drained",
        )
        assert_nothing_lost_no_double_completion(url, ids)
        assert_recovered(url, lock_start, released, producer)
        assert "job_rescued" not in "".join(p.log() for p in procs)
        app.close()
    finally:
        producer.stop_flag.set()
        for p in procs:
            p.stop()
