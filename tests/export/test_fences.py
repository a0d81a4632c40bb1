"""The saga's rules under the faults review found (issue 11, items 1-3), on both backends.

* `completed` is final: an error after its commit never moves it;
* after `uploaded` the recorded checksums are the truth: nothing is regenerated, another host or
  a changed setting does not matter, and finishing checks the destination still holds the files;
* fence first: a runner that lost its lock can neither upload nor delete.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ledgerflow.db.tables import export_batches
from ledgerflow.export.destinations import Remote
from ledgerflow.export.saga import BATCH_LOCK, ExportResult, ExportSaga
from tests.conftest import wait_until
from tests.export.conftest import D, entry, queue_states
from tests.export.exactly_once import (
    WitnessFolder,
    assert_exactly_once,
    expire_leases,
    on_last_attempt,
    sha256_of,
)
from tests.faults import Statement, StatementFaults

REFS = {f"F-{i}" for i in range(3)}


def record(app: Any) -> None:
    app.ledger.record_many([entry(ref) for ref in sorted(REFS)])


def delivered(out: Path) -> dict[str, str]:
    return {p.name: sha256_of(p) for p in sorted(out.iterdir())}


def run_when_unlocked(saga: Callable[[], ExportSaga], day=D) -> ExportResult:
    """Run until the batch lock of a killed runner has expired (LEDGERFLOW_EXPORT_LOCK_SECONDS)."""
    results: list[ExportResult] = []

    def attempt() -> bool:
        results.append(saga().run_daily(day))
        return not results[-1].in_progress

    wait_until(attempt, 60, interval=0.5, message="the killed runner's lock to expire")
    return results[-1]


def batch_row(app: Any) -> Any:
    with app.db.read() as conn:
        return conn.execute(select(export_batches)).one()


# ---------------------------------------------------------------- item 1: completed is final
def test_an_error_after_the_completion_commit_never_moves_the_completed_batch(make_export_app, tmp_path):
    app = make_export_app()
    record(app)
    faults = StatementFaults("error_before", 1, only=lambda s: s.sql.startswith("UPDATE alerts"))
    faults.install(app.db.engine)  # alerts.resolve() fails after the batch was completed
    try:
        result = ExportSaga(app).run_daily(D)
    finally:
        faults.uninstall()
    assert faults.fired is not None
    assert result.state == "completed"
    files = delivered(tmp_path / "out")
    for _ in range(4):  # what retries used to do: back to retryable, then abandoned and deleted
        assert ExportSaga(app).run_daily(D).already
    assert delivered(tmp_path / "out") == files
    assert_exactly_once(app, tmp_path / "out", REFS)


def test_an_ambiguous_commit_of_the_completion_is_recognised_as_completed(make_export_app, tmp_path):
    app = make_export_app()
    record(app)
    marked = False

    def completion_commit(statement: Statement) -> bool:
        nonlocal marked
        if (
            statement.kind == "execute"
            and "file_link" in statement.sql
            and statement.sql.startswith("UPDATE")
        ):
            marked = True  # entries marked: the next COMMIT is the completion's
            return False
        return marked and statement.kind == "commit"

    faults = StatementFaults("error_after", 1, only=completion_commit).install(app.db.engine)
    try:
        result = ExportSaga(app).run_daily(D)
    finally:
        faults.uninstall()
    assert faults.fired is not None, "the completion commit raised after committing"
    assert result.state == "completed" and batch_row(app).attempts == 0
    assert ExportSaga(app).run_daily(D).already
    assert_exactly_once(app, tmp_path / "out", REFS)


# ---------------------------------------------------------------- item 2: recorded checksums are the truth
def test_after_upload_another_host_with_other_settings_finishes_from_the_database(
    make_export_app, run_cli, tmp_path
):
    app = make_export_app()
    record(app)
    crashed = run_cli(
        "export", "run", "--date", D.isoformat(), env={"LEDGERFLOW_EXPORT_CRASH_AT": "after_upload"}
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    files = delivered(tmp_path / "out")
    other_host = make_export_app(export_bom="false", export_work_dir=str(tmp_path / "other-host"))
    result = run_when_unlocked(lambda: ExportSaga(other_host))
    assert result.state == "completed", result.error
    assert delivered(tmp_path / "out") == files, "the delivered bytes are untouched"
    assert not (tmp_path / "other-host").exists(), "nothing was regenerated"
    assert_exactly_once(other_host, tmp_path / "out", REFS)


def test_a_delivery_lost_after_upload_completes_from_the_recorded_checksums_with_a_critical_alert(
    make_export_app, run_cli, tmp_path
):
    app = make_export_app()
    record(app)
    crashed = run_cli(
        "export", "run", "--date", D.isoformat(), env={"LEDGERFLOW_EXPORT_CRASH_AT": "after_upload"}
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    manifest = delivered(tmp_path / "out")["journal_generic_2026-11-26.manifest.json"]
    (tmp_path / "out" / "journal_generic_2026-11-26.csv").unlink()  # gone from the destination
    result = run_when_unlocked(lambda: ExportSaga(app))
    assert result.state == "completed" and result.attempts == 0
    assert result.delivery_lost == [
        f"delivered file journal_generic_2026-11-26.csv is no longer at {(tmp_path / 'out').as_uri()}"
    ]
    assert delivered(tmp_path / "out") == {"journal_generic_2026-11-26.manifest.json": manifest}, (
        "never re-sent, never regenerated"
    )
    assert not (tmp_path / "work" / "ledgerflow-export" / "daily_2026-11-26").exists()
    assert queue_states(app) == {"completed": 3}
    (alert,) = app.alerts.history(state="open", kind="export_delivery_lost")
    assert alert.incident_key == "export_delivery_lost:daily:2026-11-26" and alert.severity == "critical"
    assert "journal_generic_2026-11-26.csv" in alert.message and "never sent again" in alert.message
    report = json.loads(run_cli("export", "verify", "--json").stdout)
    assert report["file_problems"] == [
        f"daily:2026-11-26: journal_generic_2026-11-26.csv is missing at {(tmp_path / 'out').as_uri()}"
    ]


def test_a_delivered_drive_file_gone_missing_is_a_lost_delivery_not_an_outage(
    make_export_app, run_cli, fake_drive
):
    env = {"LEDGERFLOW_EXPORT_DESTINATION": "gdrive://FOLDER", "LEDGERFLOW_GDRIVE_ENDPOINT": fake_drive.url}
    app = make_export_app(export_destination="gdrive://FOLDER", gdrive_endpoint=fake_drive.url)
    record(app)
    crashed = run_cli(
        "export", "run", "--date", D.isoformat(), env={**env, "LEDGERFLOW_EXPORT_CRASH_AT": "after_upload"}
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (csv_file,) = [f for f in fake_drive.in_folder("FOLDER") if f["name"].endswith(".csv")]
    del fake_drive.files[csv_file["id"]]
    result = run_when_unlocked(lambda: ExportSaga(app))
    assert result.state == "completed" and "no longer at gdrive://FOLDER" in result.delivery_lost[0]
    assert len(fake_drive.in_folder("FOLDER")) == 1, "never re-sent"
    assert ExportSaga(app).breaker.state()["failures"] == 0, "the destination answered: not an outage"


def test_a_partial_upload_is_finished_only_with_the_recorded_bytes(make_export_app, run_cli, tmp_path):
    app = make_export_app()
    record(app)
    crashed = run_cli(
        "export", "run", "--date", D.isoformat(), env={"LEDGERFLOW_EXPORT_CRASH_AT": "mid_upload"}
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    partial = delivered(tmp_path / "out")
    assert list(partial) == ["journal_generic_2026-11-26.csv"]
    other_host = make_export_app(export_bom="false", export_work_dir=str(tmp_path / "other-host"))
    result = run_when_unlocked(lambda: ExportSaga(other_host))
    assert result.state == "retryable" and result.error_type != "conflict", result.error
    assert delivered(tmp_path / "out") == partial
    back_home = ExportSaga(app).run_daily(D)  # the first host still has the recorded files
    assert back_home.state == "completed"
    assert (
        delivered(tmp_path / "out")["journal_generic_2026-11-26.csv"]
        == partial["journal_generic_2026-11-26.csv"]
    )
    assert_exactly_once(app, tmp_path / "out", REFS)


def test_a_partial_upload_that_cannot_be_reproduced_is_compensated_when_abandoned(
    make_export_app, run_cli, tmp_path
):
    app = make_export_app(export_bom="false", export_work_dir=str(tmp_path / "other-host"))
    record(app)
    crashed = run_cli(
        "export", "run", "--date", D.isoformat(), env={"LEDGERFLOW_EXPORT_CRASH_AT": "mid_upload"}
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    states = [run_when_unlocked(lambda: ExportSaga(app)).state]
    states += [ExportSaga(app).run_daily(D).state for _ in range(3)]
    assert states == ["retryable", "retryable", "retryable", "abandoned"]
    assert list((tmp_path / "out").iterdir()) == [], "the partial delivery was deleted before requeueing"
    assert ExportSaga(app).run_daily(D + timedelta(days=1)).state == "completed"
    assert_exactly_once(app, tmp_path / "out", REFS)


def test_a_destination_changed_during_an_unfinished_upload_is_emptied_before_the_new_one_gets_it(
    make_export_app, run_cli, tmp_path
):
    app = make_export_app()
    record(app)
    crashed = run_cli(
        "export", "run", "--date", D.isoformat(), env={"LEDGERFLOW_EXPORT_CRASH_AT": "mid_upload"}
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert list(delivered(tmp_path / "out")) == ["journal_generic_2026-11-26.csv"]
    moved = make_export_app(export_destination=f"file://{tmp_path / 'new-out'}")
    result = run_when_unlocked(lambda: ExportSaga(moved))
    assert result.state == "completed", result.error
    assert list((tmp_path / "out").iterdir()) == [], "nothing left at the old destination"
    assert_exactly_once(moved, tmp_path / "new-out", REFS)


# ---------------------------------------------------------------- item 3: fence first
class HookFolder(WitnessFolder):
    """A local folder that calls `hooks[event]` first: `reserve`, or `upload:<file name>`."""

    def __init__(self, directory: Path, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self.hooks: dict[str, Callable[[], None]] = {}

    def reserve(self, count: int) -> list[str]:
        self.hooks.pop("reserve", lambda: None)()
        return super().reserve(count)

    def upload(self, path: Path, name: str, **kwargs: Any) -> Remote:
        self.hooks.pop(f"upload:{name}", lambda: None)()
        return super().upload(path, name, **kwargs)


def test_a_runner_that_lost_its_lock_cannot_upload(make_export_app, tmp_path):
    app = make_export_app(export_lock_seconds=60)  # no renewal during the test: the stall is explicit
    record(app)
    out = tmp_path / "out"
    on_last_attempt(app, D)
    a_folder = HookFolder(out)

    def stall_then_b_abandons() -> None:
        expire_leases(app.db)  # A stalled past its lock's expiry
        b = ExportSaga(app, destination=WitnessFolder(out, fail_names=lambda name: True))
        assert b.run_daily(D).state == "abandoned"  # B took over, failed, requeued the entries

    a_folder.hooks["reserve"] = stall_then_b_abandons
    a = ExportSaga(app, destination=a_folder).run_daily(D)
    assert a.in_progress and a.state == "abandoned", "A was fenced off"
    assert not out.exists() or list(out.iterdir()) == [], "no stray upload of an abandoned batch"
    assert ExportSaga(app).run_daily(D + timedelta(days=1)).state == "completed"
    assert_exactly_once(app, out, REFS)


def test_a_runner_that_lost_its_lock_cannot_delete_the_delivery_of_the_runner_that_took_over(
    make_export_app, tmp_path
):
    app = make_export_app(export_lock_seconds=60)
    record(app)
    out = tmp_path / "out"
    on_last_attempt(app, D)
    a_folder = HookFolder(out, fail_names=lambda name: name.endswith(".csv"))

    def stall_then_b_completes() -> None:
        expire_leases(app.db)  # A stalled past its lock's expiry
        assert ExportSaga(app).run_daily(D).state == "completed"

    a_folder.hooks["upload:journal_generic_2026-11-26.csv"] = stall_then_b_completes
    a = ExportSaga(app, destination=a_folder).run_daily(D)  # its upload then fails: last attempt
    assert a.state == "completed" and a_folder.deleted == []
    assert_exactly_once(app, out, REFS, deleted=a_folder.deleted)


def test_a_runner_that_lost_its_lock_cannot_abandon_the_batch_another_runner_holds(make_export_app, tmp_path):
    app = make_export_app(export_lock_seconds=60)
    record(app)
    out = tmp_path / "out"
    on_last_attempt(app, D)
    a_folder = HookFolder(out, fail_names=lambda name: name.endswith(".json"))
    holder: list[Any] = []

    def stall_then_b_takes_over() -> None:
        expire_leases(app.db)  # A stalled past its lock's expiry
        with app.db.begin() as conn:  # B holds the batch now, and is still working on it
            holder.append(BATCH_LOCK.acquire(conn, app.db, batch_row(app).id, 60))

    a_folder.hooks["upload:journal_generic_2026-11-26.manifest.json"] = stall_then_b_takes_over
    a = ExportSaga(app, destination=a_folder).run_daily(D)  # the CSV is up, the manifest fails
    assert holder[0] is not None and a.in_progress, "A was fenced off"
    assert a_folder.deleted == [] and (out / "journal_generic_2026-11-26.csv").exists()
    row = batch_row(app)
    assert (row.state, row.lock_token) == ("uploading", holder[0].token), (
        "A neither abandoned nor unlocked it"
    )
    expire_leases(app.db)  # B dies; the next run finishes the batch
    assert ExportSaga(app).run_daily(D).state == "completed"
    assert_exactly_once(app, out, REFS, deleted=a_folder.deleted)
