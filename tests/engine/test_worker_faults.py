"""Worker faults (issue 11): ambiguous commits, stale prefetched claims, blocked event loops,
orphaned child processes and shutdown — each with real worker processes on both backends."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from ledgerflow import JobState
from ledgerflow.db.tables import alerts, job_dependencies, job_executions, jobs
from ledgerflow.engine import leases
from ledgerflow.engine.liveness import process_running
from tests import forkserver
from tests.apps import basic
from tests.conftest import FAST, ROOT, count_runs, run_rows, runs, wait_until
from tests.forkserver import ForkedProcess

DB_THREAD = "ledgerflow-db"
HEARTBEAT_THREAD = "ledgerflow-heartbeat"


def worker_cli(
    db_url: str,
    log_path: Path,
    fault: str = "count:0",
    *,
    burst: bool = True,
    concurrency: int = 2,
    env: dict[str, str] | None = None,
    statements: Path | None = None,
) -> ForkedProcess:
    """`ledgerflow worker --app tests.apps.basic:app` with `LEDGERFLOW_TEST_FAULT=fault`, a real
    process forked from the fork server (tests/forkserver.py)."""
    full_env = {
        **os.environ,
        **FAST,
        "LEDGERFLOW_DATABASE_URL": db_url,
        "LEDGERFLOW_LOG_JSON": "true",
        "PYTHONPATH": str(ROOT),
        "LEDGERFLOW_TEST_FAULT": fault,
        **(env or {}),
    }
    if statements is not None:
        full_env["LEDGERFLOW_TEST_FAULT_LOG"] = str(statements)
    args = ["worker", "--app", "tests.apps.basic:app", "--concurrency", str(concurrency)]
    args += ["--burst"] if burst else []
    return forkserver.shared().spawn("tests.faultrun", args, env=full_env, stdout=log_path)


def reset_jobs(app: Any) -> None:
    """Forget every job and run (between the runs of a sweep)."""
    with app.db.begin() as conn:
        for table in (runs, job_dependencies, job_executions, jobs):
            conn.execute(delete(table))


def executions(app: Any, job_id: int) -> list[tuple[int, str]]:
    return [(e["attempt"], e["status"]) for e in app.store.executions(job_id)]


@pytest.mark.parametrize(
    ("point", "fragment"),
    [("claim", "INSERT INTO job_executions"), ("ack", "finished_at")],
)
def test_an_ambiguous_commit_of_a_claim_or_an_ack_is_read_back_by_lease_token(
    db_url, make_app, tmp_path, point, fragment
):
    """The COMMIT succeeds, the worker sees an error: it reads back what the transaction did.
    A claimed job is kept and run (a max_attempts=1 job still runs, once); an acknowledged
    outcome is not written again. (On PostgreSQL a cycle that only claims is one statement in
    autocommit: the claim statement is its own commit, and the fault follows it.)"""
    app = make_app()
    (job_id,) = app.enqueue_many([basic.record.configure(max_attempts=1).prepare()])
    log = tmp_path / "worker.log"
    proc = worker_cli(db_url, log, f"error_after:1:{DB_THREAD}:{fragment}")
    assert proc.wait(120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "injected fault" in text, "the fault fired"
    job = app.get_job(job_id)
    assert job.state == JobState.COMPLETED, text[-3000:]
    assert executions(app, job_id) == [(1, "completed")]
    assert count_runs(db_url) == {job_id: 1}
    assert "outcome_refused_lease_lost" not in text
    assert text.count('"job_completed"') == 1
    if point == "claim":
        assert "claims_recovered" in text


def test_a_buffered_claim_whose_lease_went_stale_is_given_back_not_started(db_url, make_app, workers):
    """A worker frozen past its leases holds a running job and a prefetched one; both are
    rescued and run elsewhere. When it wakes, the prefetched job must not start there too."""
    app = make_app()
    slow, buffered = app.enqueue_many([basic.record.prepare(sleep=3.0), basic.record.prepare()])
    frozen = workers(concurrency=1, name="frozen")
    wait_until(lambda: count_runs(db_url).get(slow), 30, message="the slow job started")
    assert app.get_job(buffered).state == JobState.RUNNING, "the second job is prefetched"
    frozen.signal(signal.SIGSTOP)
    rescuer = workers(concurrency=1, name="rescuer")
    wait_until(
        lambda: {app.get_job(slow).state, app.get_job(buffered).state} == {JobState.COMPLETED},
        60,
        0.2,
        "the rescuer ran both jobs",
    )
    frozen.signal(signal.SIGCONT)
    wait_until(
        lambda: "lease_lost_fenced" in frozen.log() or "outcome_refused_lease_lost" in frozen.log(),
        30,
        0.2,
        "the frozen worker is fenced",
    )
    frozen.signal(signal.SIGTERM)
    assert frozen.wait(30) == 0
    started_by_frozen = {r["job_id"] for r in run_rows(db_url) if r["pid"] == frozen.pid}
    assert buffered not in started_by_frozen, frozen.log()[-3000:]
    assert count_runs(db_url)[buffered] == 1
    assert executions(app, buffered)[-1] == (2, "completed")
    assert "job_rescued" in rescuer.log()


def test_prefetch_is_bounded_by_what_the_pool_starts_within_a_quarter_lease(make_app):
    app = make_app()
    worker = app.worker(concurrency=4, prefetch=1000, lease_seconds=8.0)
    worker._avg_duration = 1.0  # one second a job: four slots start 8 jobs in 2 s
    assert worker._prefetch() == 8
    worker.opts.prefetch = None
    worker._avg_duration = 0.001  # fast jobs: about PREFETCH_SECONDS of work (50 ms)
    assert worker._prefetch() == 50
    worker._avg_duration = 0.00001  # no-op jobs: capped at PREFETCH_PER_SLOT per slot
    assert worker._prefetch() == 32 * 4


class _Held:
    """A stand-in for a prefetched claim: `_trim_buffer` reads only its key."""

    def __init__(self, n: int) -> None:
        self.key = (n, 0)


def test_a_full_prefetch_of_short_jobs_is_kept_through_jitter_and_trimmed_for_long_ones(make_app):
    """No-op jobs fill the buffer (32 per slot); their average duration jitters by a few
    milliseconds (a GC pause, a thread hop): nothing may be given back for that — giving back
    and claiming again halved the no-op rate (7,000 -> 3,300 jobs/s). Jobs of 0.2 s: what the
    pool would not start within half a second goes back for other workers."""
    app = make_app()
    worker = app.worker(concurrency=4, lease_seconds=30.0)
    for average in (0.00001, 0.001, 0.004):
        worker._buffer.extend(_Held(n) for n in range(128))
        worker._avg_duration = average
        worker._trim_buffer()
        assert len(worker._buffer) == 128 and not worker._outcomes, average
        worker._buffer.clear()
    worker._buffer.extend(_Held(n) for n in range(128))
    worker._avg_duration = 0.2
    worker._trim_buffer()
    assert len(worker._buffer) == 4 + int(0.5 / 0.2) * 4
    assert [o.kind for o in worker._outcomes] == ["returned"] * (128 - len(worker._buffer))


def test_claims_given_back_unstarted_are_not_reported_dead(make_app, capsys):
    """Prefetched claims given back (trimmed, stale, or at shutdown) end no attempt: their jobs
    are available again. They were logged as `job_dead` at ERROR and raised a "job is dead"
    alert (under load a no-op run of 10,000 jobs gave back 120-250 of them)."""
    app = make_app(log_level="INFO")
    given = app.task(name="given")(lambda: None)
    ids = app.enqueue_many([given.prepare() for _ in range(3)])
    worker = app.worker(concurrency=1)
    claims, _, _ = worker._cycle([], {"*": 3})
    assert sorted(c.job.id for c in claims) == sorted(ids)
    worker._buffer.extend(claims)
    worker._return_buffer()
    _, refused, unwritten = worker._cycle(worker._outcomes, {})
    assert refused == [] and unwritten == []
    assert all((app.get_job(i).state, app.get_job(i).attempt) == (JobState.AVAILABLE, 0) for i in ids)
    with app.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(alerts)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(job_executions)).scalar() == 0
    logged = capsys.readouterr()
    assert "job_dead" not in logged.out + logged.err
    assert (logged.out + logged.err).count("job_returned") == 3


def test_an_async_task_blocking_its_event_loop_is_failed_past_timeout_and_grace(db_url, make_app, workers):
    """The task's own timeout cannot fire (its loop is blocked); the heartbeat thread stops
    renewing it and fails it as a timeout one lease after its timeout, while it still blocks."""
    app = make_app()
    (job_id,) = app.enqueue_many([basic.block_async.configure(timeout=1.0, max_attempts=1).prepare(40.0)])
    blocked = workers(concurrency=1, name="blocked")
    wait_until(lambda: count_runs(db_url).get(job_id), 30, message="the blocking job started")
    wait_until(lambda: app.get_job(job_id).state == JobState.DEAD, 20, 0.2, "the job failed as overdue")
    assert [r["phase"] for r in run_rows(db_url)] == ["start"], "failed while its worker still blocks"
    assert app.get_job(job_id).errors[-1].type == "timeout"
    assert app.store.executions(job_id)[0]["error_type"] == "timeout"
    assert "job_overdue_failed" in blocked.log()


@pytest.mark.parametrize(("kind", "error_type"), [("exit", "SystemExit"), ("interrupt", "KeyboardInterrupt")])
@pytest.mark.parametrize("task", [basic.exit_sync, basic.exit_async], ids=["sync", "async"])
def test_a_task_raising_systemexit_or_keyboardinterrupt_fails_its_attempt_not_the_worker(
    db_url, make_app, workers, task, kind, error_type
):
    """`sys.exit()` (or a KeyboardInterrupt) raised by a task (in its thread, or in the event
    loop) fails that attempt; the worker goes on. It used to end the process with the task's
    exit code, losing the outcomes of jobs that had finished but were not yet written: they
    ran a second time."""
    app = make_app()
    (bad,) = app.enqueue_many([task.prepare(kind, 0.3)])
    ids = app.enqueue_many([basic.record.prepare(sleep=0.01) for _ in range(100)])
    worker = workers(concurrency=4, name="exiting")
    wait_until(lambda: app.get_job(bad).state == JobState.DEAD, 30, 0.2, "the exiting job failed")
    wait_until(
        lambda: all(app.get_job(i).state == JobState.COMPLETED for i in ids), 60, 0.2, "the others completed"
    )
    assert worker.proc.poll() is None, worker.log()[-3000:]
    error = app.get_job(bad).errors[-1]
    assert (error.type, error.attempt) == (error_type, 1)
    assert executions(app, bad) == [(1, "failed")]
    assert count_runs(db_url) == dict.fromkeys([bad, *ids], 1)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_running_sync_jobs_cancelled_by_an_operator_end_their_attempt_row(db_url, make_app, workers):
    """The worker is fenced off (a blocked thread is abandoned, a finished one's outcome is
    refused) and lives on; the attempt's execution row ends as cancelled instead of staying
    'running' for ever (it was listed by `status=running` long after the cancel)."""
    app = make_app()
    ids = app.enqueue_many(
        [basic.block_sync.prepare(3.0)] + [basic.record.prepare(sleep=1.0) for _ in range(3)]
    )
    worker = workers(concurrency=4, name="cancelled")
    wait_until(lambda: len(count_runs(db_url)) == 4, 30, 0.05, "the four jobs started")
    for job_id in ids:
        app.store.cancel(job_id, "stopped by the operator")
    wait_until(lambda: run_rows(db_url)[-1]["phase"] == "end", 30, 0.1, "the cancelled tasks ended")
    wait_until(
        lambda: worker.log().count("lease_lost_fenced") + worker.log().count("outcome_refused") >= 4, 30, 0.2
    )
    for job_id in ids:
        assert app.get_job(job_id).state == JobState.CANCELLED
        (row,) = app.store.executions(job_id)
        assert (row["attempt"], row["status"], row["error_type"], row["error_message"]) == (
            1,
            "failed",
            "cancelled",
            "stopped by the operator",
        )
        assert row["completed_at"] is not None
    assert worker.proc.poll() is None
    assert count_runs(db_url) == dict.fromkeys(ids, 1)


def test_a_burst_of_longer_jobs_after_no_op_ones_is_shared_by_two_workers(db_url, make_app, workers):
    """After no-op jobs each worker prefetches up to 32 claims per slot. When the next burst
    holds longer jobs, a worker gives back what it can no longer start soon: one process used
    to keep 132 of 200 jobs of 0.2 s (6.6 s of work on 4 slots) while the other ran its 68
    and idled."""
    app = make_app()
    a, b = workers(concurrency=4, name="a"), workers(concurrency=4, name="b")
    warm = app.enqueue_many([basic.pause.prepare(0.0) for _ in range(400)])
    wait_until(lambda: all(app.get_job(i).state == JobState.COMPLETED for i in warm), 60, 0.2, "warm-up")
    burst = app.enqueue_many([basic.pause.prepare(0.2) for _ in range(200)])
    wait_until(lambda: all(app.get_job(i).state == JobState.COMPLETED for i in burst), 60, 0.2, "the burst")
    with app.db.read() as conn:
        rows = conn.execute(
            select(job_executions.c.worker_id, func.count())
            .where(job_executions.c.job_id.in_(burst), job_executions.c.status == "completed")
            .group_by(job_executions.c.worker_id)
        ).all()
    shares = sorted(n for _, n in rows)
    assert sum(shares) == 200 and len(shares) == 2, rows  # one execution row per job: none returned twice
    assert shares[1] <= 120, f"one worker ran {shares[1]} of the 200 jobs"
    assert "job_completed" in a.log() and "job_completed" in b.log()


def test_a_process_isolated_child_dies_with_its_sigkilled_worker(db_url, make_app, workers, tmp_path):
    app = make_app()
    app.enqueue_many([basic.isolated_effect.prepare(str(tmp_path), 3.0)])
    worker = workers(concurrency=1, name="parent")
    started = wait_until(lambda: (tmp_path / "started").exists(), 60, 0.1, "the child started")
    assert started
    child = int((tmp_path / "started").read_text())
    worker.signal(signal.SIGKILL)
    worker.wait(10)
    wait_until(lambda: not process_running(child), 10, 0.1, "the child to die with its parent")
    assert not (tmp_path / "effect").exists(), "the orphaned child finished its side effect"


# ---------------------------------------------------------------- the worker cycle, every statement
#: The sweep's workload: two jobs that complete and one that fails on its only attempt (dead,
#: with its alert), run by a burst worker of two slots — claim, run, ack of each outcome kind.
def sweep_jobs(app: Any) -> dict[str, int]:
    done, slow, dead = app.enqueue_many(
        [
            basic.record.prepare(),
            basic.record.prepare(sleep=0.05),
            basic.fail_always.configure(max_attempts=1).prepare(),
        ]
    )
    return {"done": done, "slow": slow, "dead": dead}


def count_cycle(app: Any, db_url: str, tmp_path: Path, thread: str) -> list[tuple[str, str]]:
    """(kind, sql) of each statement `thread` sends in a clean run, up to the last write."""
    reset_jobs(app)
    sweep_jobs(app)
    if thread != DB_THREAD:
        app.enqueue_many([basic.record.prepare(sleep=1.5)])
    log = tmp_path / "statements.log"
    log.unlink(missing_ok=True)
    proc = worker_cli(db_url, tmp_path / "clean.log", f"count:0:{thread}", statements=log)
    assert proc.wait(120) == 0, (tmp_path / "clean.log").read_text()[-3000:]
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    statements = [(kind, sql) for kind, _thread, sql in rows]
    last_write = max(
        n for n, (kind, sql) in enumerate(statements, 1) if sql.startswith(("UPDATE", "INSERT", "WITH"))
    )
    end = next(n for n, (kind, _sql) in enumerate(statements, 1) if n > last_write and kind in COMMITS)
    return statements[:end]


#: The statements that end a transaction: a COMMIT, or a statement run in autocommit (on
#: PostgreSQL a worker cycle of one statement: a claim, a completion, or both together).
COMMITS = ("commit", "autocommit")


def transaction_starts(statements: list[tuple[str, str]]) -> list[int]:
    starts, after_commit = [], True
    for number, (kind, _sql) in enumerate(statements, 1):
        if after_commit:
            starts.append(number)
        after_commit = kind in COMMITS
    return starts


def recover(app: Any, db_url: str, tmp_path: Path) -> None:
    """What the surviving workers do after a crash: rescue the expired leases, run what is left."""
    with app.db.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.state == JobState.RUNNING).values(lease_expires_at=PAST))
    with app.db.begin() as conn:
        leases.rescue(app.db, conn, [(j, t) for j, t, _ in leases.expired_leases(app.db, conn)])
    log = tmp_path / "recovery.log"
    assert worker_cli(db_url, log).wait(120) == 0, log.read_text()[-3000:]


def distinct_points(statements: list[tuple[str, str]]) -> list[int]:
    """Each statement of each distinct transaction once: a transaction the worker repeats
    unchanged (an empty claim, a poll) fails the same way wherever it recurs."""
    seen: set[tuple[str, ...]] = set()
    points: list[int] = []
    starts = transaction_starts(statements)
    for start, end in zip(starts, [*starts[1:], len(statements) + 1], strict=True):
        shape = tuple(sql[:60] for _kind, sql in statements[start - 1 : end - 1])
        if shape not in seen:
            seen.add(shape)
            points += range(start, end)
    return points


PAST = datetime(2000, 1, 1, tzinfo=UTC)


def assert_each_job_completed_once(app: Any, db_url: str, ids: dict[str, int], may_repeat: set[int]) -> None:
    """Every job ended once in the database: the two completed (one completed execution each),
    the failing one dead; nothing left running; only `may_repeat` jobs ran twice."""
    states = {name: app.get_job(job_id).state for name, job_id in ids.items()}
    assert states == {"done": JobState.COMPLETED, "slow": JobState.COMPLETED, "dead": JobState.DEAD}, states
    for name in ("done", "slow"):
        statuses = [e["status"] for e in app.store.executions(ids[name])]
        assert statuses.count("completed") == 1 and "running" not in statuses, (name, statuses)
    assert "running" not in [e["status"] for e in app.store.executions(ids["dead"])]
    ran = count_runs(db_url)
    assert ran.get(ids["done"]) and ran.get(ids["slow"]), f"a job never ran: {ran}"
    repeated = {job_id for job_id, n in ran.items() if n > 1}
    assert repeated <= may_repeat, f"ran twice: {repeated}, allowed: {may_repeat}"


def report(record_property: Any, name: str, value: Any) -> None:
    record_property(name, value)
    print(f"{name}: {value}")


#: The sweep in parts (thread, fault kind, part, parts), each a test of its own (reported, and
#: re-run, on its own): together they inject every fault of the whole sweep.
SWEEP_PARTS = [
    (DB_THREAD, "error_before", 0, 2),
    (DB_THREAD, "error_before", 1, 2),
    (DB_THREAD, "error_after", 0, 1),
    (DB_THREAD, "kill", 0, 1),
    (HEARTBEAT_THREAD, "error_before", 0, 1),
    (HEARTBEAT_THREAD, "error_after", 0, 1),
]


def sweep_plans(statements: list[tuple[str, str]], thread: str, fault: str) -> list[str]:
    """Every fault of kind `fault` the sweep injects on `thread`, as `MODE:K` plans."""
    points = distinct_points(statements) if thread == DB_THREAD else list(range(1, len(statements) + 1))
    if fault == "error_before":
        return [f"error_before:{k}" for k in points]
    if fault == "error_after":
        return [f"error_after:{k}" for k in points if statements[k - 1][0] in COMMITS]
    assert fault == "kill" and thread == DB_THREAD, (thread, fault)
    return [f"kill:{k}" for k in transaction_starts(statements) if k in points]


@pytest.mark.parametrize(
    ("thread", "fault", "part", "parts"),
    SWEEP_PARTS,
    ids=[f"{t.removeprefix('ledgerflow-')}-{f}-{p + 1}of{n}" for t, f, p, n in SWEEP_PARTS],
)
def test_a_fault_at_any_statement_of_the_worker_cycle_never_breaks_exactly_once(
    db_url, make_app, tmp_path, backend, thread, fault, part, parts, record_property
):
    """For every statement k of a clean worker cycle (claim → run → ack on the database thread;
    lease renewal on the heartbeat thread): a transient error before k, an error after k's
    COMMIT (the ambiguous commit), and a real worker process SIGKILLed at the start of each
    transaction. A worker that survives its fault must finish alone with no job run twice; after
    a kill, the rescue and another worker finish, and only the killed worker's jobs ran twice.
    The sweep is split into parts (`SWEEP_PARTS`): this test injects every `parts`-th fault of
    kind `fault` from number `part`."""
    app = make_app()
    # The number of empty polls in a run varies with the machine's load: the shortest of three
    # clean runs is the one a replay reaches statement k of (a longer count left the last
    # statements unreached in six replays on a loaded CI machine).
    counts = [count_cycle(app, db_url, tmp_path, thread) for _ in range(3)]
    if thread != DB_THREAD:  # the heartbeat renews while a job runs: its first two beats
        counts = [c[: transaction_starts(c)[2] - 1] for c in counts if len(transaction_starts(c)) > 2]
        assert counts, "no clean run of three counted had two heartbeats before its last write"
    statements = min(counts, key=len)
    plans = sweep_plans(statements, thread, fault)[part::parts]
    assert plans, f"no {fault} fault to inject on {thread}"
    failures: list[str] = []
    replays = 0
    for plan in plans:
        for _replay in range(8):  # a replay whose polls came out fewer may end before statement k
            replays += 1
            reset_jobs(app)
            ids = sweep_jobs(app)
            if thread != DB_THREAD:
                ids["long"] = app.enqueue_many([basic.record.prepare(sleep=1.5)])[0]
            log = tmp_path / "worker.log"
            code = worker_cli(db_url, log, f"{plan}:{thread}").wait(120)
            text = log.read_text()
            if code != 0 or "injected fault" in text:
                break
        try:
            if plan.startswith("kill"):
                assert code == -signal.SIGKILL, f"not killed (exit {code}): {text[-1500:]}"
                started_here = {r["job_id"] for r in run_rows(db_url)}
                recover(app, db_url, tmp_path)
                may_repeat = started_here
            else:
                assert code == 0, text[-1500:]
                assert "injected fault" in text, "the fault fired"
                may_repeat = set()
            long_job = ids.pop("long", None)
            assert_each_job_completed_once(app, db_url, ids, may_repeat)
            if long_job is not None:
                assert app.get_job(long_job).state == JobState.COMPLETED
                assert count_runs(db_url)[long_job] == 1
        except AssertionError as error:
            failures.append(f"{plan} {statements[int(plan.split(':')[1]) - 1][1][:80]}: {error}")
    name = f"{backend} {thread} {fault} {part + 1}/{parts}"
    report(record_property, f"{name} statements counted", len(statements))
    report(record_property, f"{name} faults injected", len(plans))
    report(record_property, f"{name} worker runs", replays)
    assert not failures, "\n".join(failures)


#: The completion statement of a cycle that completes finished jobs and claims the next ones in
#: one transaction (on PostgreSQL also the whole of a completion-only cycle, in autocommit).
BOTH = {"postgresql": "duration_seconds=done.duration", "sqlite": "finished.duration"}


@pytest.mark.parametrize("mode", ["error_before", "error_after", "kill"])
@pytest.mark.parametrize("at", [1, 2])
def test_a_fault_at_the_cycle_that_completes_and_claims_never_breaks_exactly_once(
    db_url, make_app, tmp_path, backend, mode, at
):
    """A backlog makes the worker complete and claim in one cycle (one transaction).
    A transient error before it, after it (committed, the worker sees an error: read back by
    lease and token) or a SIGKILL just before it: every job completes once with one completed
    execution row per job, and only a killed worker's jobs ran twice."""
    app = make_app()
    ids = app.enqueue_many([basic.record.prepare() for _ in range(12)])
    log = tmp_path / "worker.log"
    code = worker_cli(db_url, log, f"{mode}:{at}:{DB_THREAD}:{BOTH[backend]}").wait(120)
    text = log.read_text()
    may_repeat: set[int] = set()
    if mode == "kill":
        assert code == -signal.SIGKILL, f"not killed (exit {code}): {text[-1500:]}"
        may_repeat = {r["job_id"] for r in run_rows(db_url)}
        recover(app, db_url, tmp_path)
    else:
        assert code == 0, text[-1500:]
        assert "injected fault" in text, "the fault fired"
    for job_id in ids:
        assert app.get_job(job_id).state == JobState.COMPLETED, text[-1500:]
        statuses = [status for _attempt, status in executions(app, job_id)]
        assert statuses.count("completed") == 1 and "running" not in statuses, (job_id, statuses)
    ran = count_runs(db_url)
    assert set(ran) == set(ids), ran
    assert {job_id for job_id, n in ran.items() if n > 1} <= may_repeat, ran
