"""Issue 12, the export saga's side, on SQLite and PostgreSQL and at real destinations (a folder,
the fake Drive server, moto's S3 server):

* an entry held back at export time is named with the reason wherever the batch is shown, and
  `export run` exits 1;
* the audit chain is anchored outside the database: each delivered manifest carries the chain
  head, and `export verify` finds deleted or truncated audit rows from the manifests;
* `verify` checks files against the hash-chained `csv_generated` checksums, by the service's
  own content checksum (or a download), never by a label the uploader wrote;
* the file's control totals are reconciled with the books (SQL) and the re-read file before
  anything is sent: a mismatch stops the batch.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from bench.ledger_data import load_entries
from sqlalchemy import delete, select, update

from ledgerflow.db.tables import export_batches, export_logs
from ledgerflow.export import audit, writer
from ledgerflow.export import saga as saga_module
from ledgerflow.export.saga import ExportSaga
from tests.api.conftest import TOKEN
from tests.books.conftest import jpy_entry, make_service  # noqa: F401 - a fixture
from tests.export.conftest import D, entry, queue_states

D2 = D + timedelta(days=1)
CSV, MANIFEST = "journal_generic_2026-11-27.csv", "journal_generic_2026-11-27.manifest.json"


@dataclass
class Place:
    """A real destination: the settings that send exports there, and a way to reach its files."""

    settings: dict[str, str]
    read: Callable[[str], bytes]
    #: replace a file's content, keeping every label the uploader wrote (Drive appProperties, S3 metadata)
    tamper: Callable[[str, bytes], None]


@pytest.fixture(params=["folder", "drive", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if request.param == "folder":
        out = tmp_path / "out"
        return Place(
            {}, lambda name: (out / name).read_bytes(), lambda name, data: (out / name).write_bytes(data)
        )
    if request.param == "drive":
        drive = request.getfixturevalue("fake_drive")

        def drive_file(name: str) -> dict[str, Any]:
            (found,) = [f for f in drive.in_folder("FOLDER") if f["name"] == name]
            return found  # type: ignore[no-any-return]

        def drive_tamper(name: str, data: bytes) -> None:
            found = drive_file(name)
            found["content"], found["md5"] = data, hashlib.md5(data, usedforsecurity=False).hexdigest()

        return Place(
            {"export_destination": "gdrive://FOLDER", "gdrive_endpoint": drive.url},
            lambda name: drive_file(name)["content"],
            drive_tamper,
        )
    endpoint, client, bucket = request.getfixturevalue("moto_s3")

    def s3_tamper(name: str, data: bytes) -> None:
        key = f"exports/{name}"
        label = client.head_object(Bucket=bucket, Key=key)["Metadata"]
        client.put_object(
            Bucket=bucket,
            Key=key,
            Body=data,
            Metadata=label,  # the uploader's lf-sha256 label still names the original content
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
        )

    return Place(
        {"export_destination": f"s3://{bucket}/exports", "s3_endpoint_url": endpoint},
        lambda name: client.get_object(Bucket=bucket, Key=f"exports/{name}")["Body"].read(),
        s3_tamper,
    )


def cli_env(settings: dict[str, str]) -> dict[str, str]:
    return {f"LEDGERFLOW_{k.upper()}": v for k, v in settings.items()}


def verify(run_cli: Callable[..., Any], place: Place) -> tuple[int, dict[str, Any]]:
    done = run_cli("export", "verify", "--json", env=cli_env(place.settings))
    return done.returncode, json.loads(done.stdout)


def two_delivered_days(make_export_app: Callable[..., Any], settings: dict[str, str]) -> Any:
    app = make_export_app(**settings)
    app.ledger.record_many([entry("A-1"), entry("B-1", D2)])
    assert ExportSaga(app).run_daily(D).state == "completed"
    assert ExportSaga(app).run_daily(D2).state == "completed"
    return app


# ---------------------------------------------------------------- the chain, anchored outside
def test_deleting_the_last_days_audit_rows_is_found_from_the_delivered_manifests(
    make_export_app, run_cli, place
):
    app = two_delivered_days(make_export_app, place.settings)
    anchor = json.loads(place.read(MANIFEST))["audit_anchor"]
    with app.db.read() as conn:
        head = conn.execute(select(export_logs.c.row_hash).where(export_logs.c.id == anchor["seq"])).scalar()
    assert anchor["row_hash"] == head, "the manifest carries the chain head at its generation"
    code, report = verify(run_cli, place)
    assert code == 0 and report["anchors_checked"] == 2 and report["files_checked"] == 4, report

    with app.db.begin() as conn:  # the whole of the last day's history, cut off the chain's end
        conn.execute(delete(export_logs).where(export_logs.c.batch_key == f"daily:{D2.isoformat()}"))
    code, report = verify(run_cli, place)
    assert code == 1
    problems = "\n".join(report["chain_problems"])
    assert f"anchors the chain at row {anchor['seq']}" in problems and "no longer holds" in problems
    assert f"{MANIFEST} of daily:2026-11-27" in problems
    assert "daily:2026-11-27 is completed but its csv_generated audit row is missing" in problems
    assert "daily:2026-11-26" not in problems, "the first day's rows are intact"


def test_manifests_are_found_at_the_destination_even_when_the_database_forgets_them(
    make_export_app, run_cli, tmp_path
):
    app = two_delivered_days(make_export_app, {})
    out = tmp_path / "out"
    with app.db.begin() as conn:  # the last day's history gone, and its batch's list of files
        conn.execute(delete(export_logs).where(export_logs.c.batch_key == f"daily:{D2.isoformat()}"))
        conn.execute(
            update(export_batches)
            .where(export_batches.c.batch_key == f"daily:{D2.isoformat()}")
            .values(files=[])
        )
    stranger = json.loads((out / MANIFEST).read_text()) | {"batch_key": "daily:2026-11-20"}
    (out / "journal_generic_2026-11-20.manifest.json").write_text(json.dumps(stranger))
    done = run_cli("export", "verify", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 1
    problems = "\n".join(report["chain_problems"])
    assert f"the manifest {MANIFEST} of daily:2026-11-27 at {out.as_uri()} anchors the chain" in problems
    assert "no longer holds" in problems
    assert report["file_problems"] == [
        f"the manifest journal_generic_2026-11-20.manifest.json at {out.as_uri()} belongs to "
        "daily:2026-11-20, which export_batches does not hold (rows deleted?)"
    ]


def test_a_delivered_day_rewritten_as_abandoned_is_found_from_its_manifest(
    make_export_app, run_cli, tmp_path
):
    """The last day's history after its anchor deleted, its batch marked abandoned and its entries
    requeued (they would be delivered twice): the chain is intact, but its delivered manifest
    at the destination still says the day was delivered."""
    app = two_delivered_days(make_export_app, {})
    key = f"daily:{D2.isoformat()}"
    anchor = json.loads((tmp_path / "out" / MANIFEST).read_text())["audit_anchor"]
    with app.db.begin() as conn:
        conn.execute(delete(export_logs).where(export_logs.c.id > anchor["seq"]))
        conn.execute(
            update(export_batches)
            .where(export_batches.c.batch_key == key)
            .values(state="abandoned", files=[])
        )
    done = run_cli("export", "verify", "--json")
    report = json.loads(done.stdout)
    assert report["chain_problems"] == [], "only the chain's tail after the last anchor was cut"
    assert done.returncode == 1 and report["file_problems"] == [
        f"the manifest {MANIFEST} at {(tmp_path / 'out').as_uri()} belongs to {key}, which export_batches "
        "holds as abandoned: a delivered file of a batch whose entries went back to the queue "
        "(delivered twice? rows rewritten?)"
    ], report


def test_truncating_only_the_last_completion_row_is_found(make_export_app, run_cli, tmp_path):
    app = two_delivered_days(make_export_app, {})
    with app.db.begin() as conn:
        last = conn.execute(select(export_logs.c.id).order_by(export_logs.c.id.desc()).limit(1)).scalar()
        conn.execute(delete(export_logs).where(export_logs.c.id == last))
    done = run_cli("export", "verify")
    assert done.returncode == 1
    assert "daily:2026-11-27 is completed but its csv_generated audit row is missing" in done.stdout


# ---------------------------------------------------------------- files against the chained checksums
def test_a_changed_file_with_its_stored_checksum_rewritten_fails_verify(make_export_app, run_cli, place):
    app = two_delivered_days(make_export_app, place.settings)
    forged = place.read(CSV).replace(b"107.00", b"701.00")
    place.tamper(CSV, forged)
    with app.db.begin() as conn:  # export_batches.files is not hash-chained: rewrite it to match
        batch = conn.execute(
            select(export_batches.c.id, export_batches.c.files).where(
                export_batches.c.batch_key == f"daily:{D2.isoformat()}"
            )
        ).one()
        files = [
            {**f, "sha256": hashlib.sha256(forged).hexdigest()} if f["name"] == CSV else f
            for f in batch.files
        ]
        conn.execute(update(export_batches).where(export_batches.c.id == batch.id).values(files=files))
    code, report = verify(run_cli, place)
    assert code == 1 and len(report["file_problems"]) == 2, report
    assert (
        f"daily:2026-11-27: export_batches.files gives {CSV} another checksum" in report["file_problems"][0]
    )
    assert f"daily:2026-11-27: {CSV} at " in report["file_problems"][1]
    assert "differs from the checksum in the audit trail" in report["file_problems"][1]
    assert report["chain_problems"] == [] and report["unreachable"] == []


def test_a_changed_file_with_its_chained_checksum_rewritten_fails_against_the_delivered_manifest(
    make_export_app, run_cli, place
):
    """The last csv_generated row comes after every anchor: rewritten with its hash recomputed,
    the chain still checks. The delivered manifest, out of the database's reach, lists the CSV's
    checksum: verify holds the file to it as well."""
    app = two_delivered_days(make_export_app, place.settings)
    forged = place.read(CSV).replace(b"107.00", b"701.00")
    place.tamper(CSV, forged)
    with app.db.begin() as conn:
        row = conn.execute(select(export_logs).order_by(export_logs.c.id.desc()).limit(1)).one()
        assert row.action == "csv_generated" and row.batch_key == f"daily:{D2.isoformat()}"
        metadata = json.loads(json.dumps(row.metadata))
        metadata["sha256"][CSV] = hashlib.sha256(forged).hexdigest()
        metadata["md5"][CSV] = hashlib.md5(forged, usedforsecurity=False).hexdigest()
        content = audit._content(
            row.batch_key, row.action, row.batch_date, row.message, metadata, row.created_at
        )
        conn.execute(
            update(export_logs)
            .where(export_logs.c.id == row.id)
            .values(metadata=metadata, row_hash=audit.row_hash(row.prev_hash, content))
        )
        stored = conn.execute(
            select(export_batches.c.files).where(export_batches.c.batch_key == row.batch_key)
        )
        files = [{**f, "sha256": metadata["sha256"][f["name"]]} for f in stored.scalar_one()]
        conn.execute(
            update(export_batches).where(export_batches.c.batch_key == row.batch_key).values(files=files)
        )
    code, report = verify(run_cli, place)
    assert report["chain_problems"] == [], "the rewritten row's hash was recomputed: the chain holds"
    assert code == 1 and report["file_problems"] == [
        f"daily:2026-11-27: the delivered manifest {MANIFEST} gives {CSV} another checksum than "
        "its csv_generated audit row (audit row rewritten?)"
    ], report


def test_verify_trusts_the_services_checksum_not_the_uploaders_label(make_export_app, run_cli, place):
    two_delivered_days(make_export_app, place.settings)
    place.tamper(CSV, place.read(CSV).replace(b"107.00", b"701.00"))  # labels untouched
    code, report = verify(run_cli, place)
    (problem,) = report["file_problems"]
    assert code == 1 and problem.startswith(f"daily:2026-11-27: {CSV} at ")
    assert problem.endswith("differs from the checksum in the audit trail")


# ---------------------------------------------------------------- control totals
def test_a_file_whose_totals_differ_from_the_books_is_never_sent(make_export_app, tmp_path, monkeypatch):
    app = make_export_app()
    app.ledger.record_many([entry("T-1"), entry("T-2")])
    row_builder = writer.row_builder

    def wrong_amount(profile: Any, text: Any) -> Any:  # a writer bug: one cell off
        build = row_builder(profile, text)

        def rows(entry_: Any, slip: int) -> Any:
            out = build(entry_, slip)
            if entry_.reference == "T-2":
                out[0][5] = "170.00"
            return out

        return rows

    monkeypatch.setattr(writer, "row_builder", wrong_amount)
    result = ExportSaga(app).run_daily(D)
    assert result.state == "abandoned" and result.error_type == "totals_mismatch" and result.attempts == 1
    assert "the written file holds THB Dr 277.00 Cr 214.00 in 4 lines" in result.error
    assert "the books hold THB Dr 214.00 Cr 214.00 in 4 lines" in result.error
    assert not (tmp_path / "out").exists(), "nothing was sent"
    assert queue_states(app) == {"queued": 2}, "the entries wait for the next batch"
    (alert,) = app.alerts.history(state="open", kind="export_abandoned")
    assert alert.severity == "critical" and "control totals do not reconcile" in alert.message


def test_entries_the_writer_missed_stop_the_batch(make_export_app, tmp_path, monkeypatch):
    app = make_export_app()
    app.ledger.record_many([entry("T-1"), entry("T-2")])
    stream = saga_module.stream_entries

    def drops_the_last(rows: Any) -> Any:  # a bug that loses an entry, still balanced
        return (item for item in stream(rows) if item.reference != "T-2")

    monkeypatch.setattr(saga_module, "stream_entries", drops_the_last)
    result = ExportSaga(app).run_daily(D)
    assert result.state == "abandoned" and result.error_type == "totals_mismatch"
    assert "the writer counted THB Dr 107.00 Cr 107.00 but the books hold THB Dr 214.00" in result.error
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- held-back entries
def test_a_held_back_entry_is_named_with_the_reason_everywhere_and_run_exits_1(
    make_export_app,
    run_cli,
    make_service,  # noqa: F811 - the fixture imported above
    tmp_path,
):
    recorder = make_export_app()  # recorded under the generic profile: Thai text is fine there
    recorder.ledger.record_many([jpy_entry("OK-1"), jpy_entry("TH-1", description="ค่ากาแฟ")])
    yayoi = {"LEDGERFLOW_EXPORT_PROFILE": "yayoi"}  # cp932 cannot hold Thai

    run = run_cli("export", "run", "--date", D.isoformat(), env=yayoi)
    assert run.returncode == 1
    assert "held back: TH-1: entry TH-1 (yayoi profile): character" in run.stdout and "cp932" in run.stdout
    assert "1 entry was held back (TH-1)" in run.stderr and "--upsert" in run.stderr
    as_json = json.loads(run_cli("export", "run", "--date", D.isoformat(), "--json", env=yayoi).stdout)
    assert as_json["already"] and as_json["held_back"][0]["reference"] == "TH-1"

    manifest = json.loads((tmp_path / "out" / "journal_yayoi_2026-11-26.manifest.json").read_text())
    assert manifest["entry_count"] == 1 and [h["reference"] for h in manifest["held_back"]] == ["TH-1"]
    assert "cp932" in manifest["held_back"][0]["reason"]

    status = run_cli("export", "status", env={**yayoi, "COLUMNS": "250"})
    assert "TH-1" in status.stdout and "daily:2026-11-26  held back: TH-1: entry TH-1" in status.stdout
    (row,) = json.loads(run_cli("export", "status", "--json", env=yayoi).stdout)
    assert row["held_back"][0]["reference"] == "TH-1"

    service = make_service(export_profile="yayoi", export_destination=f"file://{tmp_path / 'out'}")
    (batch,) = service.get("/api/exports").json()["batches"]
    assert batch["held_back"][0]["reference"] == "TH-1" and "cp932" in batch["held_back"][0]["reason"]
    assert service.get("/api/exports/status").json()["last_batch"]["held_back"][0]["reference"] == "TH-1"
    signed = httpx.post(f"{service.url}/login", data={"password": TOKEN, "next": "/exports"})
    page = httpx.get(
        f"{service.url}/exports", cookies={"ledgerflow_session": signed.cookies["ledgerflow_session"]}
    )
    row_html = page.text.split('id="batch-daily:2026-11-26"')[1].split("</tr>")[0]
    assert "1 held back" in row_html and "<code>TH-1</code>: entry TH-1 (yayoi profile)" in row_html


def test_a_dry_run_lists_the_entries_a_run_would_hold_back(make_export_app, run_cli, tmp_path):
    recorder = make_export_app()
    recorder.ledger.record_many([jpy_entry("OK-1"), jpy_entry("TH-1", description="ค่ากาแฟ")])
    preview = run_cli(
        "export",
        "run",
        "--date",
        D.isoformat(),
        "--dry-run",
        "--out",
        str(tmp_path / "dry"),
        "--json",
        env={"LEDGERFLOW_EXPORT_PROFILE": "yayoi"},
    )
    result = json.loads(preview.stdout)
    assert preview.returncode == 0 and result["entry_count"] == 1
    assert [h["reference"] for h in result["held_back"]] == ["TH-1"]
    assert queue_states(recorder) == {"queued": 2}, "a preview marks nothing"


def test_an_entry_held_back_at_the_head_of_a_long_stream_leaves_every_other_entry_written(
    make_export_app, tmp_path
):
    """Holding the first entry back leaves the row stream while the server is still sending
    (20,000 lines, several chunks): the preview and the run then write every other entry."""
    app = make_export_app()
    load_entries(app, 5_000, 4)  # BULK-…, THB, dated D
    app.ledger.record(entry("A-0", currency="USD"))  # first in the file's order
    profile = replace(app.export_profile, currencies=frozenset({"THB"}))
    dry = ExportSaga(app, profile=profile).dry_run(D, tmp_path / "dry")
    run = ExportSaga(app, profile=profile).run_daily(D)
    for result in (dry, run):
        assert result.entry_count == 5_000 and result.line_count == 20_000
        assert [h["reference"] for h in result.held_back] == ["A-0"]
    assert run.state == "completed"
    (dry_csv,) = (tmp_path / "dry").glob("*.csv")
    assert dry_csv.read_bytes() == (tmp_path / "out" / dry_csv.name.removeprefix("DRYRUN-")).read_bytes()


# ---------------------------------------------------------------- restores
def test_verify_reports_a_restore_that_rolled_the_books_back(make_export_app, run_cli, tmp_path):
    from ledgerflow.backup import create_backup

    folders = {"backup_dir": str(tmp_path / "backups"), "receipts_dir": str(tmp_path / "receipts")}
    app = make_export_app(**folders)
    app.ledger.record(entry("A-1"))
    assert ExportSaga(app).run_daily(D).state == "completed"
    name = create_backup(app).name
    app.ledger.record(entry("B-1", D2))  # newer than the backup, never exported: dropped by the restore
    app.db.dispose()
    restored = run_cli("backup", "restore", name, "--force", env=cli_env(folders))
    assert restored.returncode == 0, restored.stderr
    done = run_cli("export", "verify", env=cli_env(folders))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "restore divergence: " in done.stdout and f"restore of {name} rolled the books back" in done.stdout
    assert "1 entries recorded after the backup and never exported were dropped" in done.stdout
