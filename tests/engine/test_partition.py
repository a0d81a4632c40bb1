"""Network partitions: a worker or scheduler cut off from PostgreSQL, not killed (issue 11, 13-14).

The cut is made by tests/netproxy.py, a loopback proxy between the process and PostgreSQL that
drops packets unacknowledged (a pulled cable) or stops forwarding them (a hung middlebox).
PostgreSQL only: SQLite has no network — every process opens the same local file, so there is
nothing to cut (a frozen process holding SQLite's write lock is the SIGSTOP tests' business).

Each test prints one `partition_figures` JSON line with what it measured (run with `-s`).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from ledgerflow import App, DatabaseUnavailable, JobState
from ledgerflow.clock import FixedClock
from ledgerflow.db.tables import job_executions, job_schedules, jobs, schedule_fires, workers
from ledgerflow.engine import leases
from ledgerflow.scheduler.loop import Scheduler
from ledgerflow.scheduler.schedules import Schedule
from tests.apps import partition
from tests.conftest import WorkerProcess, run_rows, wait_until
from tests.netproxy import behind

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)]

APP = "tests.apps.partition:app"
RENEWAL = b"UPDATE jobs SET lease_expires_at="  # the heartbeat's lease renewal
FIRE = b"INSERT INTO schedule_fires"


def figures(test: str, **values: Any) -> None:
    print("partition_figures", json.dumps({"test": test, **values}))


def starts(db_url: str, pid: int | None = None) -> Counter[int]:
    """job id → runs started (by `pid` if given), counted outside the queue."""
    return Counter(
        r["job_id"] for r in run_rows(db_url) if r["phase"] == "start" and (pid is None or r["pid"] == pid)
    )


def logged(worker: WorkerProcess, event: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, worker.log().splitlines()) if e.get("event") == event]


def states(app: App, ids: list[int]) -> Counter[str]:
    with app.db.read() as conn:
        return Counter(conn.execute(select(jobs.c.state).where(jobs.c.id.in_(ids))).scalars())


def db_clock(app: App) -> datetime:
    with app.db.read() as conn:
        return conn.execute(text("SELECT clock_timestamp()")).scalar_one()  # type: ignore[no-any-return]


def heartbeat_at(app: App, pid: int) -> datetime | None:
    with app.db.read() as conn:
        return conn.execute(  # type: ignore[no-any-return]
            select(workers.c.heartbeat_at).where(workers.c.pid == pid, workers.c.kind == "worker")
        ).scalar()


def lease_expired(app: App, job_id: int) -> bool:
    with app.db.read() as conn:
        return any(j == job_id for j, _, _ in leases.expired_leases(app.db, conn))


def idle_in_transaction(app: App) -> list[int]:
    """Backends of this database holding a transaction open while waiting for their client."""
    with app.db.read() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state = 'idle in transaction'"
                )
            ).scalars()
        )


def test_a_worker_partitioned_past_its_lease_is_fenced_and_its_jobs_run_elsewhere_once(
    db_url, make_app, workers, proxy
):
    """The cut-off worker stands for another host (a host name of its own), as a partition separates
    hosts: for a worker on this host the rescue would wait ten leases (see engine/liveness.py)."""
    app = make_app()
    env = {"LEDGERFLOW_TEST_RUNS_URL": db_url}
    first = app.enqueue_many([partition.record.prepare(sleep=3.0) for _ in range(4)])
    cut_off = workers(
        app=APP,
        db_url=behind(proxy, db_url),
        queues="default,late",
        concurrency=4,
        env={**env, "LEDGERFLOW_TEST_HOSTNAME": "cut-off-host"},
        name="cutoff",
    )
    wait_until(lambda: set(starts(db_url, cut_off.pid)) == set(first), 60, message="all four jobs running")

    proxy.drop()  # in flight: their completions cannot be written
    cut, cut_wall = time.monotonic(), datetime.now(UTC)
    elsewhere = workers(app=APP, queues="default", concurrency=4, env=env, name="elsewhere")
    wait_until(lambda: states(app, first) == {JobState.COMPLETED: 4}, 90, 0.2, "rescued and run elsewhere")
    failed = wait_until(lambda: logged(cut_off, "heartbeat_failed"), 30, 0.2, "the failed heartbeat logged")
    failure_logged = (datetime.fromisoformat(failed[0]["timestamp"]) - cut_wall).total_seconds()

    healed_db = db_clock(app)
    proxy.heal()
    healed = time.monotonic()
    # claimed as soon as it can, each running longer than a lease: unless the cut-off worker renews
    # their leases in time, the other worker rescues them and they run twice
    late = app.enqueue_many([partition.record.configure(queue="late").prepare(sleep=3.0) for _ in range(4)])
    wait_until(
        lambda: (heartbeat_at(app, cut_off.pid) or healed_db) > healed_db, 20, 0.05, "renewal after heal"
    )
    renewal = time.monotonic() - healed
    wait_until(
        lambda: {e["job_id"] for e in logged(cut_off, "outcome_refused_lease_lost")} >= set(first),
        30,
        0.2,
        "the late completions refused",
    )
    wait_until(lambda: states(app, late) == {JobState.COMPLETED: 4}, 60, 0.1, "new work after the heal")
    recovered = time.monotonic() - healed

    assert cut_off.proc.poll() is None, "the cut-off worker exited"
    by_cut_off, by_elsewhere = starts(db_url, cut_off.pid), starts(db_url, elsewhere.pid)
    assert {j: by_elsewhere[j] for j in first} == dict.fromkeys(first, 1), "run elsewhere exactly once"
    assert {j: by_cut_off[j] for j in first} == dict.fromkeys(first, 1), "not run again after the heal"
    assert {j: by_cut_off[j] for j in late} == dict.fromkeys(late, 1), "renewed in time, never rescued"
    with app.db.read() as conn:
        completions = Counter(
            conn.execute(
                select(job_executions.c.job_id).where(job_executions.c.status == "completed")
            ).scalars()
        )
        running = conn.execute(select(func.count()).where(jobs.c.state == JobState.RUNNING)).scalar_one()
    assert completions == Counter(dict.fromkeys(first + late, 1)), "each job completed once"
    assert running == 0
    figures(
        "worker_partitioned_past_its_lease",
        partition_seconds=round(healed - cut, 2),
        heartbeat_failure_logged_after_cut=round(failure_logged, 2),
        heal_to_first_renewal=round(renewal, 2),
        heal_to_late_jobs_completed=round(recovered, 2),
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["drop", "stall"])
def test_a_heartbeat_cut_off_mid_transaction_does_not_hold_back_the_rescue(
    db_url, make_app, workers, proxy, mode
):
    app = make_app()
    # the server ends the cut-off session 10 s after its last statement (5 s by default): time
    # enough to see the rescue skip the locked row while that session is still there
    env = {"LEDGERFLOW_TEST_RUNS_URL": db_url, "LEDGERFLOW_DB_IDLE_IN_TRANSACTION_TIMEOUT": "10"}
    (job_id,) = app.enqueue_many([partition.record.prepare(sleep=600)])
    cut_off = workers(app=APP, db_url=behind(proxy, db_url), concurrency=1, env=env, name="cutoff")
    wait_until(lambda: starts(db_url, cut_off.pid)[job_id], 60, message="the job running")

    proxy.cut_after(RENEWAL, mode)  # the renewal runs and locks the row; its answer never comes
    wait_until(proxy.cut.is_set, 30, 0.05, "a renewal cut off")
    cut = time.monotonic()
    holders = wait_until(
        lambda: idle_in_transaction(app), 10, 0.05, "the cut-off session idle in transaction"
    )
    with app.db.read() as conn:
        token = conn.execute(select(jobs.c.lease_token).where(jobs.c.id == job_id)).scalar_one()
    wait_until(lambda: lease_expired(app, job_id), 15, 0.1, "the committed lease expired")

    waits: list[float] = []

    def rescue() -> list[int]:
        started = time.monotonic()
        with app.db.begin() as conn:
            rescued = leases.rescue(app.db, conn, [(job_id, token)])
        waits.append(time.monotonic() - started)
        return [j.id for j in rescued]

    assert rescue() == [], "the row is locked by the cut-off session: skipped"
    assert set(holders) <= set(idle_in_transaction(app)), "skipped, not waited for the holder to end"
    assert wait_until(rescue, 60, 0.1, "rescued once the server ended the cut-off session") == [job_id]
    cut_to_rescue = time.monotonic() - cut
    assert idle_in_transaction(app) == []

    proxy.heal()
    wait_until(lambda: [e for e in logged(cut_off, "lease_lost_fenced") if e["job_id"] == job_id], 30, 0.2)
    assert logged(cut_off, "heartbeat_failed"), "the failed heartbeat is logged"
    figures(
        f"heartbeat_cut_mid_transaction_{mode}",
        longest_rescue_wait=round(max(waits), 3),
        rescue_attempts=len(waits),
        cut_to_rescue=round(cut_to_rescue, 2),
    )


@pytest.mark.timeout(240)
def test_a_scheduler_cut_off_mid_transaction_does_not_delay_the_other_schedulers_fires(
    db_url, make_app, proxy
):
    app = make_app()
    t0 = datetime(2026, 11, 26, 0, 0, 30, tzinfo=UTC)
    names = [f"hourly{i}" for i in range(5)]
    for name in names:
        schedule = app.schedules.add(
            Schedule(name=name, cron_expression="0 * * * *", job_type="t", timezone="UTC")
        )
        with app.db.begin() as conn:
            conn.execute(update(job_schedules).where(job_schedules.c.id == schedule.id).values(created_at=t0))
    clock = FixedClock(t0 + timedelta(hours=1, seconds=10))  # one fire due per schedule: 01:00

    cut_app = App(database_url=behind(proxy, db_url), log_level="WARNING")
    proxy.cut_after(FIRE, "drop")
    failure: list[BaseException] = []

    def tick_cut_off() -> None:
        try:
            Scheduler(cut_app, clock).tick()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=tick_cut_off, daemon=True)
    thread.start()
    wait_until(proxy.cut.is_set, 30, 0.05, "a fire cut off mid-transaction")
    cut = time.monotonic()

    other = Scheduler(app, clock)
    fired = {d.schedule for d in other.tick()}
    first_tick = time.monotonic() - cut
    assert len(fired) == len(names) - 1, "every schedule but the one held by the cut-off scheduler"
    (held,) = set(names) - fired
    wait_until(lambda: {d.schedule for d in other.tick()} == {held}, 60, 0.2, "the held schedule fired")
    held_delay = time.monotonic() - cut
    thread.join(30)
    assert failure and isinstance(failure[0], DatabaseUnavailable), "the cut-off statement failed fast"
    failed_after = time.monotonic() - cut

    proxy.heal()
    assert Scheduler(cut_app, clock).tick() == [], "after the heal, nothing is fired twice"
    with app.db.read() as conn:
        per_fire = conn.execute(
            select(
                schedule_fires.c.schedule_id, schedule_fires.c.fire_time, func.count(), func.count(jobs.c.id)
            )
            .outerjoin(jobs, jobs.c.id == schedule_fires.c.job_id)
            .group_by(schedule_fires.c.schedule_id, schedule_fires.c.fire_time)
        ).all()
    assert len(per_fire) == len(names) and all(r[2] == 1 and r[3] == 1 for r in per_fire), per_fire
    cut_app.close()
    figures(
        "scheduler_cut_mid_transaction",
        other_schedulers_first_tick=round(first_tick, 3),
        held_schedule_delay=round(held_delay, 2),
        cut_off_statement_failed_after=round(failed_after, 2),
    )
