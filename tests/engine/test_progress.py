"""Progress and metadata of a running job: written by the worker, throttled, fenced by the lease."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledgerflow import current_job
from ledgerflow.engine import leases
from ledgerflow.engine.jobs import JobSpec
from ledgerflow.engine.leases import LeaseSQL
from ledgerflow.engine.progress import ProgressReport, describe_progress, write_progress
from ledgerflow.errors import BadInput
from tests.conftest import run_cli, wait_until


def latest(app, job_id: int) -> dict | None:
    executions = app.store.executions(job_id)
    return executions[-1]["execution_metadata"] if executions else None


def test_a_worker_process_shows_progress_while_the_job_runs(
    make_app, workers, tmp_path, capsys, db_url, monkeypatch
):
    app = make_app()
    release = tmp_path / "release"
    job = app.enqueue(JobSpec("report_progress", kwargs={"steps": 4, "release": str(release)}))
    worker = workers()
    shown = wait_until(
        lambda: (latest(app, job.id) or {}).get("metadata"), 120, message=f"progress of job {job.id}"
    )
    assert shown == {"pages": 5, "file": "statement-2026-11.pdf"}
    running = latest(app, job.id)
    assert running["progress"] == 80 and running["message"] == "page 4 of 5"
    assert app.store.get(job.id).state == "running"

    monkeypatch.setenv("LEDGERFLOW_DATABASE_URL", db_url)
    code, out, _ = run_cli(capsys, "jobs", "show", str(job.id))
    assert code == 0 and "progress: 80% page 4 of 5" in out, out
    code, out, _ = run_cli(capsys, "jobs", "show", str(job.id), "--json")
    assert code == 0 and '"message": "page 4 of 5"' in out

    release.touch()
    wait_until(lambda: app.store.get(job.id).state == "completed", 120, message="job completed")
    final = latest(app, job.id)
    assert final["progress"] == 100 and final["message"] == "done", "the outcome carries the final report"
    assert final["metadata"] == {"pages": 5, "file": "statement-2026-11.pdf"}
    worker.stop()


def test_a_task_in_a_child_process_reports_progress_through_its_worker(make_app, workers, tmp_path):
    """`isolation="process"`: the child's reports reach the worker, which writes them (fenced,
    at most once a second) while the child runs, and the outcome carries the final values."""
    app = make_app()
    release = tmp_path / "release"
    job = app.enqueue(JobSpec("isolated_progress", kwargs={"steps": 3, "release": str(release)}))
    worker = workers()
    shown = wait_until(
        lambda: (latest(app, job.id) or {}).get("metadata"), 120, message=f"progress of job {job.id}"
    )
    assert shown["pages"] == 4 and shown["pid"] not in (worker.pid, os.getpid()), "reported by the child"
    running = latest(app, job.id)
    assert running["progress"] == 75 and running["message"] == "page 3 of 4"
    assert app.store.get(job.id).state == "running"
    release.touch()
    wait_until(lambda: app.store.get(job.id).state == "completed", 120, message="job completed")
    final = latest(app, job.id)
    assert final["progress"] == 100 and final["message"] == "done", "the outcome carries the final report"
    assert final["metadata"] == shown
    assert app.store.get(job.id).result == "finished"
    worker.stop()


def test_reports_are_written_by_the_periodic_pass_not_by_each_call(make_app):
    """The throttle: 500 reports and no write until the progress thread's pass (never, here)."""
    app = make_app()
    reported, release = threading.Event(), threading.Event()

    @app.task(name="chatty")
    def chatty() -> None:
        job = current_job()
        for i in range(500):
            job.progress(i / 5, f"item {i}")
        reported.set()
        release.wait(120)

    job = chatty.enqueue()
    worker = app.worker(concurrency=1, burst=True, progress_seconds=3600)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert reported.wait(120)
        assert latest(app, job.id) is None, "nothing written between two passes"
    finally:
        release.set()
        thread.join(120)
    final = latest(app, job.id)
    assert final["progress"] == 99.8 and final["message"] == "item 499"


def test_a_runner_whose_lease_was_lost_cannot_write(make_app):
    app = make_app()
    job = app.enqueue(JobSpec("anything"))
    expired = LeaseSQL(app.db, 0.0)  # a lease that is over as soon as it is taken
    with app.db.begin() as conn:
        (first,) = expired.claim(conn, worker_id="w1", queues=["default"], tasks=["anything"], limit=1)
    old = ProgressReport(job.id, first.job.attempt, first.token)
    old.progress(10, "before the partition")
    with app.db.begin() as conn:
        assert write_progress(conn, [(old, old.take_pending())]) == []
    wait_until(lambda: app.db.run(lambda c: leases.rescue(app.db, c, [first.key])), 30, message="rescue")
    with app.db.begin() as conn:
        (second,) = LeaseSQL(app.db, 60).claim(
            conn, worker_id="w2", queues=["default"], tasks=["anything"], limit=1
        )
    old.progress(50, "the fenced runner goes on")
    with app.db.begin() as conn:
        assert write_progress(conn, [(old, old.take_pending())]) == [old], "refused: the lease is gone"
    executions = app.store.executions(job.id)
    assert executions[0]["execution_metadata"]["message"] == "before the partition"
    assert executions[1]["execution_metadata"] is None, "nothing written on the new attempt's row"

    new = ProgressReport(job.id, second.job.attempt, second.token)
    new.progress(20)
    with app.db.begin() as conn:
        assert write_progress(conn, [(new, new.take_pending())]) == []
    assert latest(app, job.id)["progress"] == 20


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers())
def test_progress_accepts_0_to_100_and_refuses_the_rest(value):
    report = ProgressReport(1, 1, 1)
    if 0 <= value <= 100:
        report.progress(value)
        assert report.snapshot()["progress"] == value
    else:
        with pytest.raises(BadInput, match="progress must be"):
            report.progress(value)
        assert report.snapshot() is None, "nothing kept"


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda r: r.progress(True), "progress must be a number"),
        (lambda r: r.progress("40"), "progress must be a number"),
        (lambda r: r.progress(40, "x" * 501), "over the limit of 500"),
        (lambda r: r.progress(40, 7), "message must be text"),
        (lambda r: r.set_metadata(["a"]), "must be a JSON object"),
        (lambda r: r.set_metadata({"when": object()}), "job metadata: a object is not JSON"),
        (lambda r: r.set_metadata({"blob": "x" * 17000}), "over the limit of 16384"),
    ],
)
def test_bad_reports_are_refused_with_one_clear_error(call, error):
    report = ProgressReport(1, 1, 1)
    with pytest.raises(BadInput, match=error):
        call(report)
    assert report.snapshot() is None


def test_metadata_merges_and_reads_as_one_line():
    report = ProgressReport(1, 1, 1)
    report.set_metadata({"pages": 5})
    report.set_metadata({"file": "a.pdf"})
    report.progress(40, "page 2 of 5")
    values = report.snapshot()
    assert values["metadata"] == {"pages": 5, "file": "a.pdf"}
    line = describe_progress(values)
    assert line.startswith("40% page 2 of 5 (at ") and line.endswith('{"pages": 5, "file": "a.pdf"}')


def test_a_task_outside_a_recording_worker_is_told_so(tmp_path: Path):
    from ledgerflow.engine.jobs import JobContext

    ctx = JobContext(7, "t", "default", 1, 1, None, None, "w")
    with pytest.raises(BadInput, match="job 7 was not started by a worker that records progress"):
        ctx.progress(10)
