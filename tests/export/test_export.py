"""The daily export on SQLite and PostgreSQL: exactly once, whatever crashes or races happen."""

from __future__ import annotations

import csv
import io
import json
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from ledgerflow import BadInput, Conflict, JobState
from ledgerflow.clock import FixedClock
from ledgerflow.db.tables import export_batches, export_logs, export_queue
from ledgerflow.export.audit import verify_chain
from ledgerflow.export.saga import ExportSaga
from ledgerflow.export.tasks import DAILY_TASK
from tests.conftest import wait_until
from tests.export.conftest import D, csv_generated_rows, entry, queue_states


def out_files(tmp_path: Path) -> list[str]:
    out = tmp_path / "out"
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def exported_references(tmp_path: Path) -> list[str]:
    refs: list[str] = []
    for path in sorted((tmp_path / "out").glob("*.csv")):
        rows = list(csv.reader(io.StringIO(path.read_text("utf-8-sig"), newline="")))[1:]
        refs += sorted({r[0] for r in rows})
    return refs


def test_daily_batch_delivers_one_file_set_and_marks_every_entry(make_export_app, tmp_path):
    app = make_export_app()
    app.ledger.record_many([entry(f"INV-{i}") for i in range(5)])
    result = ExportSaga(app).run_daily(D)
    assert result.state == "completed" and result.entry_count == 5 and result.line_count == 10
    assert result.totals == {"THB": {"debit": "535.00", "credit": "535.00"}}
    assert out_files(tmp_path) == [
        "journal_generic_2026-11-26.csv",
        "journal_generic_2026-11-26.manifest.json",
    ]
    assert queue_states(app) == {"completed": 5}
    status = app.ledger.export_status("INV-0")
    assert (
        status["file_link"].endswith("journal_generic_2026-11-26.csv") and status["exported_at"] is not None
    )
    manifest = json.loads((tmp_path / "out" / "journal_generic_2026-11-26.manifest.json").read_text())
    assert manifest["entry_count"] == 5 and manifest["totals"]["THB"] == {
        "debit": "535.00",
        "credit": "535.00",
    }
    assert manifest["files"][0]["sha256"] == result.files[0]["sha256"] and manifest["cutoff"]
    with app.db.read() as conn:
        log = conn.execute(select(export_logs).where(export_logs.c.action == "csv_generated")).one()
    assert (
        log.metadata["entry_count"] == 5 and log.metadata["filenames"][0] == "journal_generic_2026-11-26.csv"
    )
    assert log.metadata["sha256"]["journal_generic_2026-11-26.csv"] == result.files[0]["sha256"]
    assert verify_chain(app.db).ok
    again = ExportSaga(app).run_daily(D)
    assert again.already and csv_generated_rows(app) == 1


def test_batch_takes_entries_dated_on_or_before_its_date_and_late_postings_go_next(make_export_app, tmp_path):
    app = make_export_app()
    app.ledger.record_many(
        [entry("OLD", D - timedelta(days=3)), entry("TODAY", D), entry("TOMORROW", D + timedelta(days=1))]
    )
    ExportSaga(app).run_daily(D)
    assert exported_references(tmp_path) == ["OLD", "TODAY"]
    app.ledger.record(entry("LATE", D))  # dated into a delivered day, recorded afterwards
    second = ExportSaga(app).run_daily(D + timedelta(days=1))
    assert second.entry_count == 2
    manifest = json.loads((tmp_path / "out" / "journal_generic_2026-11-27.manifest.json").read_text())
    assert manifest["late_entries"] == ["LATE"]
    assert sorted(exported_references(tmp_path)) == ["LATE", "OLD", "TODAY", "TOMORROW"]


def test_day_with_nothing_to_export_completes_without_a_file(make_export_app, tmp_path):
    app = make_export_app()
    result = ExportSaga(app).run_daily(D)
    assert result.state == "completed" and result.entry_count == 0 and out_files(tmp_path) == []
    with app.db.read() as conn:
        assert (
            conn.execute(select(export_logs.c.action).order_by(export_logs.c.id.desc())).first()[0]
            == "no_entries"
        )


def test_duplicates_are_refused_and_exported_entries_are_only_reversed(make_export_app, tmp_path):
    app = make_export_app()
    app.ledger.record(entry("INV-1"))
    with pytest.raises(BadInput, match="INV-1 is already recorded"):
        app.ledger.record(entry("INV-1", amount="5.00"))
    app.ledger.record(entry("INV-1", amount="5.00"), upsert=True)  # not exported yet: may be replaced
    assert str(app.ledger.get("INV-1").debit_total) == "5.00"
    ExportSaga(app).run_daily(D)
    with pytest.raises(Conflict, match="record a reversal"):
        app.ledger.record(entry("INV-1", amount="6.00"), upsert=True)
    reversal = app.ledger.reverse("INV-1", D + timedelta(days=1))
    assert (
        reversal.reference == "REV-INV-1"
        and reversal.lines[0].credit == app.ledger.get("INV-1").lines[0].debit
    )
    with pytest.raises(Conflict, match="already reversed"):
        app.ledger.reverse("INV-1")
    ExportSaga(app).run_daily(D + timedelta(days=1))
    assert exported_references(tmp_path) == ["INV-1", "REV-INV-1"]


def test_import_reports_the_bad_line_and_stores_nothing(make_export_app, tmp_path):
    app = make_export_app()
    path = tmp_path / "entries.csv"
    path.write_text(
        "reference,date,description,currency,account,account_name,debit,credit,tax_code,memo\n"
        "A-1,2026-11-26,ok,THB,5100,Supplies,10.00,0,,\n"
        "A-1,2026-11-26,ok,THB,1000,Cash,0,10.00,,\n"
        "B-1,2026-11-26,bad,THB,5100,Supplies,10.00,0,,\n"
        "B-1,2026-11-26,bad,THB,1000,Cash,0,9.00,,\n",
        encoding="utf-8",
    )
    with pytest.raises(BadInput, match=r"entries\.csv:4 .*B-1.*unbalanced"):
        app.ledger.import_file(path)
    assert queue_states(app) == {}
    jsonl = tmp_path / "entries.jsonl"
    jsonl.write_text(json.dumps(entry("J-1")) + "\n" + "{not json\n")
    with pytest.raises(BadInput, match=r"entries\.jsonl:2: invalid JSON"):
        app.ledger.import_file(jsonl)
    listing = tmp_path / "entries.json"
    listing.write_text(json.dumps([entry("J-1"), entry("J-2")], ensure_ascii=False))
    assert [e.reference for e in app.ledger.import_file(listing)] == ["J-1", "J-2"]


def test_immediate_entry_is_exported_by_a_worker_in_a_batch_of_its_own(make_export_app, tmp_path):
    app = make_export_app()
    app.ledger.record(entry("NOW-1", path="immediate"))
    app.ledger.record(entry("LATER-1"))
    app.run_worker("exports", burst=True)
    assert app.ledger.export_status("NOW-1")["status"] == "completed"
    assert app.ledger.export_status("LATER-1")["status"] == "queued"
    assert any("immediate_1" in name or "immediate" in name for name in out_files(tmp_path))


def test_five_processes_racing_for_one_date_produce_one_batch_one_file_one_log_row(
    make_export_app, run_cli, export_env, tmp_path
):
    import os

    from tests import forkserver
    from tests.conftest import ROOT

    app = make_export_app()
    app.ledger.record_many([entry(f"R-{i}") for i in range(40)])
    env = {**os.environ, **export_env, "PYTHONPATH": str(ROOT)}
    procs = [  # real processes forked from the fork server (tests/forkserver.py): they start together
        forkserver.shared().spawn(
            "ledgerflow",
            ["export", "run", "--date", D.isoformat()],
            env=env,
            stdout=tmp_path / f"stdout{i}.txt",
            stderr=tmp_path / f"stderr{i}.txt",
        )
        for i in range(5)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, results
    with app.db.read() as conn:
        batches = conn.execute(select(export_batches.c.batch_key, export_batches.c.state)).all()
    assert batches == [("daily:2026-11-26", "completed")]
    assert out_files(tmp_path) == [
        "journal_generic_2026-11-26.csv",
        "journal_generic_2026-11-26.manifest.json",
    ]
    assert csv_generated_rows(app) == 1
    assert exported_references(tmp_path) == sorted(f"R-{i}" for i in range(40))
    assert queue_states(app) == {"completed": 40}


CRASH_POINTS = ["before_snapshot", "after_claim", "mid_stream", "mid_upload", "after_upload", "in_marking"]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_killed_at_any_step_the_next_run_delivers_exactly_one_file_set(
    make_export_app, run_cli, tmp_path, point
):
    app = make_export_app()
    app.ledger.record_many([entry(f"C-{i}") for i in range(30)])
    crashed = run_cli("export", "run", "--date", D.isoformat(), env={"LEDGERFLOW_EXPORT_CRASH_AT": point})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    deadline = time.monotonic() + 30
    while True:  # the dead run's batch lock expires after LEDGERFLOW_EXPORT_LOCK_SECONDS
        done = run_cli("export", "run", "--date", D.isoformat(), "--json")
        assert done.returncode == 0, done.stderr
        if json.loads(done.stdout)["state"] == "completed" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert json.loads(done.stdout)["state"] == "completed"
    assert out_files(tmp_path) == [
        "journal_generic_2026-11-26.csv",
        "journal_generic_2026-11-26.manifest.json",
    ]
    assert exported_references(tmp_path) == sorted(f"C-{i}" for i in range(30)), (
        "each entry in exactly one file"
    )
    assert csv_generated_rows(app) == 1 and queue_states(app) == {"completed": 30}
    assert verify_chain(app.db).ok


def test_abandoned_batch_deletes_its_upload_and_its_entries_join_the_next_batch(
    make_export_app, tmp_path, monkeypatch
):
    app = make_export_app()
    app.ledger.record_many([entry("AB-1"), entry("AB-2")])

    def marking_fails(*args, **kwargs):
        raise RuntimeError("database refused the marking transaction")

    monkeypatch.setattr(ExportSaga, "_complete", marking_fails)
    states = [ExportSaga(app).run_daily(D).state for _ in range(4)]
    assert states == ["retryable", "retryable", "retryable", "abandoned"]
    assert out_files(tmp_path) == [], "the uploaded files were deleted (compensation)"
    assert queue_states(app) == {"queued": 2}
    assert app.alerts.is_open("export_abandoned:daily:2026-11-26")
    alert = app.alerts.history(open_only=True)[0]
    assert alert.severity == "critical" and "manual intervention required" in alert.message
    monkeypatch.undo()
    nxt = ExportSaga(app).run_daily(D + timedelta(days=1))
    assert nxt.state == "completed" and nxt.entry_count == 2
    assert exported_references(tmp_path) == ["AB-1", "AB-2"] and csv_generated_rows(app) == 1


def test_destination_failures_retry_at_5_15_45_minutes_then_abandon_and_the_breaker_opens(
    make_export_app, fake_drive
):
    app = make_export_app(export_destination="gdrive://FOLDER", gdrive_endpoint=fake_drive.url)
    app.ledger.record_many([entry("G-1"), entry("G-2")])
    fake_drive.fail_mode = "500"
    t0 = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
    clock = FixedClock(t0)

    def run():
        return ExportSaga(app, clock=clock).run_daily(D)

    first = run()
    assert first.state == "retryable" and first.error_type == "google_drive"
    assert first.next_retry_at == t0 + timedelta(minutes=5)
    assert queue_states(app) == {"queued": 2} and csv_generated_rows(app) == 0
    clock.set(t0 + timedelta(minutes=5))
    assert run().next_retry_at == t0 + timedelta(minutes=20)  # +15
    clock.set(t0 + timedelta(minutes=20))
    third = run()
    assert third.next_retry_at == t0 + timedelta(minutes=65)  # +45
    breaker = ExportSaga(app, clock=clock).breaker.state()
    assert breaker["state"] == "open" and breaker["failures"] == 3
    clock.set(t0 + timedelta(minutes=25))
    deferred = run()
    assert deferred.deferred_until == t0 + timedelta(minutes=35) and deferred.attempts == 3, "no attempt used"
    clock.set(t0 + timedelta(minutes=65))  # past the 15-minute window: one half-open trial
    last = run()
    assert last.state == "abandoned" and last.attempts == 4
    assert app.alerts.is_open("export_abandoned:daily:2026-11-26")
    assert queue_states(app) == {"queued": 2} and csv_generated_rows(app) == 0
    assert fake_drive.files == {}
    fake_drive.fail_mode = None
    clock.set(t0 + timedelta(minutes=81))
    recovered = ExportSaga(app, clock=clock).run_daily(D + timedelta(days=1))
    assert (
        recovered.state == "completed" and ExportSaga(app, clock=clock).breaker.state()["state"] == "closed"
    )


def test_a_hanging_destination_is_a_retryable_timeout(make_export_app, fake_drive):
    app = make_export_app(export_destination="gdrive://FOLDER", gdrive_endpoint=fake_drive.url)
    app.ledger.record(entry("H-1"))
    fake_drive.fail_mode, fake_drive.hang_seconds = "hang", 4
    started = time.monotonic()
    result = ExportSaga(app).run_daily(D)
    assert result.state == "retryable" and result.error_type == "google_drive"
    assert time.monotonic() - started < 10


def test_google_drive_delivery_is_idempotent_across_a_crash(make_export_app, run_cli, fake_drive):
    env = {"LEDGERFLOW_EXPORT_DESTINATION": "gdrive://FOLDER", "LEDGERFLOW_GDRIVE_ENDPOINT": fake_drive.url}
    app = make_export_app(export_destination="gdrive://FOLDER", gdrive_endpoint=fake_drive.url)
    app.ledger.record_many([entry(f"D-{i}") for i in range(10)])
    crashed = run_cli(
        "export", "run", "--date", D.isoformat(), env={**env, "LEDGERFLOW_EXPORT_CRASH_AT": "mid_upload"}
    )
    assert crashed.returncode == -signal.SIGKILL
    assert len(fake_drive.in_folder("FOLDER")) == 1  # the CSV made it, the manifest did not
    runs = []

    def finished() -> bool:  # once the killed run's batch lock has expired
        runs.append(run_cli("export", "run", "--date", D.isoformat(), "--json", env=env))
        return runs[-1].returncode != 0 or not json.loads(runs[-1].stdout)["in_progress"]

    wait_until(finished, 60, interval=0.5, message="the killed run's lock to expire")
    done = runs[-1]
    assert done.returncode == 0 and json.loads(done.stdout)["state"] == "completed", done.stderr
    files = fake_drive.in_folder("FOLDER")
    assert sorted(f["name"] for f in files) == [
        "journal_generic_2026-11-26.csv",
        "journal_generic_2026-11-26.manifest.json",
    ]
    assert {f["appProperties"]["lf_batch"] for f in files} == {"daily:2026-11-26"}
    assert any(method == "POST" for method, _ in fake_drive.requests), "uploads went to the fake server"
    status = app.ledger.export_status("D-1")
    assert status["file_link"].startswith(fake_drive.url) and status["status"] == "completed"


def test_s3_delivery_is_idempotent_and_never_overwrites_a_different_object(make_export_app, moto_s3):
    endpoint, client, bucket = moto_s3
    app = make_export_app(export_destination=f"s3://{bucket}/exports", s3_endpoint_url=endpoint)
    app.ledger.record_many([entry("S-1"), entry("S-2")])
    first = ExportSaga(app).run_daily(D)
    assert first.state == "completed"
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [
        "exports/journal_generic_2026-11-26.csv",
        "exports/journal_generic_2026-11-26.manifest.json",
    ]
    head = client.head_object(Bucket=bucket, Key=keys[0])
    assert head["Metadata"]["lf-sha256"] == first.files[0]["sha256"]
    client.put_object(
        Bucket=bucket, Key="exports/journal_generic_2026-11-27.csv", Body=b"someone else's file"
    )
    app.ledger.record(entry("S-3", D + timedelta(days=1)))
    clash = ExportSaga(app).run_daily(D + timedelta(days=1))
    assert clash.state == "abandoned" and clash.error_type == "conflict"
    body = client.get_object(Bucket=bucket, Key="exports/journal_generic_2026-11-27.csv")["Body"].read()
    assert body == b"someone else's file", "never overwritten, never deleted"
    assert app.ledger.export_status("S-3")["status"] == "queued"


def test_export_verify_detects_a_tampered_log_row_and_a_changed_file(make_export_app, run_cli, tmp_path):
    app = make_export_app()
    app.ledger.record_many([entry("V-1")])
    ExportSaga(app).run_daily(D)
    ok = run_cli("export", "verify", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["files_checked"] == 2
    (tmp_path / "out" / "journal_generic_2026-11-26.csv").write_text("tampered")
    with app.db.begin() as conn:
        conn.execute(
            update(export_logs).where(export_logs.c.action == "batch_claimed").values(message="edited")
        )
    bad = run_cli("export", "verify", "--json")
    report = json.loads(bad.stdout)
    assert bad.returncode == 1 and report["chain_problems"] and report["file_problems"]


def test_dry_run_writes_locally_and_marks_nothing(make_export_app, run_cli, tmp_path):
    app = make_export_app()
    app.ledger.record_many([entry("DRY-1"), entry("DRY-2")])
    result = run_cli(
        "export", "run", "--date", D.isoformat(), "--dry-run", "--out", str(tmp_path / "dry"), "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["entry_count"] == 2 and report["totals"]["THB"]["debit"] == "214.00"
    assert sorted(p.name for p in (tmp_path / "dry").iterdir()) == [
        "DRYRUN-journal_generic_2026-11-26.csv",
        "DRYRUN-journal_generic_2026-11-26.manifest.json",
    ], "named so that it cannot be taken for a delivery"
    manifest = json.loads((tmp_path / "dry" / "DRYRUN-journal_generic_2026-11-26.manifest.json").read_text())
    assert manifest["dry_run"] is True
    assert queue_states(app) == {"queued": 2}
    with app.db.read() as conn:
        assert conn.execute(select(export_batches.c.id)).first() is None
    assert not (tmp_path / "out").exists(), "nothing at the destination"


def test_a_dry_run_never_writes_into_the_destination_and_says_when_the_day_was_delivered(
    make_export_app, run_cli, tmp_path
):
    app = make_export_app()
    app.ledger.record(entry("DRY-1"))
    refused = run_cli(
        "export", "run", "--date", D.isoformat(), "--dry-run", "--out", str(tmp_path / "out" / "x")
    )
    assert refused.returncode == 2 and "never written into the export destination" in refused.stderr
    assert not (tmp_path / "out").exists()
    assert ExportSaga(app).run_daily(D).state == "completed"
    delivered = sorted(p.name for p in (tmp_path / "out").iterdir())
    app.ledger.record(entry("DRY-2"))  # dated into the delivered day: the next batch takes it
    preview = run_cli("export", "run", "--date", D.isoformat(), "--dry-run")  # default folder
    assert preview.returncode == 0, preview.stderr
    assert "2026-11-26 was already delivered (1 entries, journal_generic_2026-11-26.csv" in preview.stdout
    assert "would send nothing" in preview.stdout and "1 entries" in preview.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == delivered, "the delivery is untouched"
    folder = tmp_path / "work" / "ledgerflow-export" / "dry-run"
    assert (folder / "DRYRUN-journal_generic_2026-11-26.csv").is_file()


def test_scheduled_daily_export_job_uses_the_local_date_of_its_fire(make_export_app, tmp_path):
    from zoneinfo import ZoneInfo

    from ledgerflow.clock import FixedClock as Clock
    from ledgerflow.db.tables import job_schedules
    from ledgerflow.scheduler.loop import Scheduler

    bangkok = ZoneInfo("Asia/Bangkok")
    day = datetime.now(bangkok).date() - timedelta(days=1)
    fire = datetime(day.year, day.month, day.day, 18, 0, 1, tzinfo=bangkok)  # yesterday 18:00:01 Bangkok
    app = make_export_app()
    app.sync_schedules()
    app.ledger.record(entry("SCHED-1", day))
    with app.db.begin() as conn:
        conn.execute(
            update(job_schedules)
            .where(job_schedules.c.name == "daily_export")
            .values(last_fire_time=fire - timedelta(hours=1))
        )
    (decision,) = [d for d in Scheduler(app, Clock(fire)).tick() if d.schedule == "daily_export"]
    app.run_worker("exports", burst=True)
    job = app.get_job(decision.job_id)
    assert job.task == DAILY_TASK and job.state == JobState.COMPLETED
    assert job.result["batch_key"] == f"daily:{day.isoformat()}" and job.result["entry_count"] == 1
    with app.db.read() as conn:
        assert conn.execute(select(export_queue.c.status)).scalar() == "completed"


def test_re_running_an_abandoned_day_resolves_its_alert_so_a_later_abandon_alerts_again(
    make_export_app, tmp_path, monkeypatch
):
    """The runbook says: fix the destination, re-run the day. Once the re-run delivered it, the
    critical `export_abandoned` incident is over (it stayed open, and swallowed the next one)."""
    app = make_export_app()
    app.ledger.record_many([entry("RR-1"), entry("RR-2")])

    def marking_fails(*args, **kwargs):
        raise RuntimeError("database refused the marking transaction")

    monkeypatch.setattr(ExportSaga, "_complete", marking_fails)
    assert [ExportSaga(app).run_daily(D).state for _ in range(4)][-1] == "abandoned"
    assert app.alerts.is_open("export_abandoned:daily:2026-11-26")
    monkeypatch.undo()

    revived = ExportSaga(app).run_daily(D, revive=True)

    assert revived.state == "completed" and exported_references(tmp_path) == ["RR-1", "RR-2"]
    assert not app.alerts.is_open("export_abandoned:daily:2026-11-26")
    (resolved,) = app.alerts.history(kind="export_abandoned")
    assert resolved.resolved_at is not None


def test_an_export_streaming_to_a_slow_consumer_outlives_the_idle_in_transaction_timeout(
    make_export_app, backend
):
    make_export_app().ledger.record_many([entry(f"SLOW-{i}") for i in range(1200)])
    app = make_export_app(db_idle_in_transaction_timeout=1.0)
    if backend == "postgresql":  # the limit is live: an ordinary transaction idle that long is ended
        with pytest.raises(Exception, match="idle"), app.db.read(transaction=True) as conn:
            conn.execute(select(1))
            time.sleep(3)
            conn.execute(select(1))
    pauses: list[int] = []

    def slow_consumer(done: int, total: int) -> None:
        pauses.append(done)
        time.sleep(3)  # three times the idle timeout, between two reads of the stream

    result = ExportSaga(app).run_daily(D, on_progress=slow_consumer)
    assert result.state == "completed" and result.entry_count == 1200 and result.line_count == 2400
    assert len(pauses) >= 2
    assert queue_states(app) == {"completed": 1200}
