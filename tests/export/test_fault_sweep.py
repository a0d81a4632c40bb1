"""Proof by fault injection at every database statement of an export saga run (issue 11).

A clean run is counted first: every statement the saga's own threads send (the main one, and
the one that sums the books in SQL while the main one re-reads the files), and every COMMIT
(the lock renewer's statements run on their own thread, unnumbered). Then, for every number k,
the run is replayed from a fresh start with one fault at statement k:

* (a) `error_before`: a transient error instead of statement k;
* (b) `error_after` at every COMMIT: the transaction committed, the caller sees an error (the
  ambiguous commit);
* (c) `kill`: a real `ledgerflow export run` subprocess SIGKILLed just before statement k;
* and `stop`: the subprocess frozen (SIGSTOP) before each move of its batch, past its lock,
  while another runner delivers the batch; after SIGCONT it must find itself fenced.

A clean delivery of three entries sends 64 statements (15 commits) on SQLite and 56 (15) on
PostgreSQL: 4 more than before issue 12, for the control totals summed in SQL and the audit
chain head that the manifest anchors, read in one transaction after the files are written.

After each fault the next runs recover (`exactly_once.recover`) and every invariant of
`exactly_once.assert_exactly_once` must hold. Two runs are swept: a clean delivery, and a last
attempt whose manifest upload fails, so the batch is abandoned and compensated (its CSV deleted).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ledgerflow.errors import DatabaseUnavailable
from ledgerflow.export.saga import ExportSaga
from tests import forkserver
from tests.conftest import ROOT, wait_until
from tests.export.conftest import D, entry
from tests.export.exactly_once import (
    WitnessFolder,
    assert_exactly_once,
    expire_leases,
    on_last_attempt,
    recover,
    reset_database,
    reset_folders,
)
from tests.faults import Statement, StatementFaults, process_state
from tests.forkserver import ForkedProcess

REFS = {"S-0", "S-1", "S-2"}
#: The saga's own threads: the main one, and the one summing the books while the file is re-read.
THREADS = "MainThread,ledgerflow-export-books"
MAIN = StatementFaults.in_thread(THREADS)
DAYS = [D, D + timedelta(days=1)]  # an abandoned day's entries go to the next batch
KILL_PARTS = 2  # the SIGKILL sweep in parts (tests of their own): together every point


def fresh_start(app: Any, tmp_path: Path, scenario: str) -> WitnessFolder:
    """Empty database and folders, three entries; for `abandon`, a last attempt whose
    manifest upload will fail."""
    reset_database(app.db)
    reset_folders(tmp_path / "out", tmp_path / "work")
    app.ledger.record_many([entry(ref) for ref in sorted(REFS)])
    witness = WitnessFolder(tmp_path / "out")
    if scenario == "abandon":
        on_last_attempt(app, D)
        witness.fail_names = lambda name: name.endswith(".json")
    return witness


def count_clean_run(app: Any, tmp_path: Path, scenario: str) -> list[Statement]:
    witness = fresh_start(app, tmp_path, scenario)
    counted = StatementFaults(only=MAIN).install(app.db.engine)
    try:
        result = ExportSaga(app, destination=witness).run_daily(D)
    finally:
        counted.uninstall()
    assert result.state == ("abandoned" if scenario == "abandon" else "completed")
    witness.fail_names = None
    recover(app, DAYS, lambda: ExportSaga(app, destination=witness))
    assert_exactly_once(app, tmp_path / "out", REFS, deleted=witness.deleted)
    return counted.log


def check_recovery(app: Any, tmp_path: Path, witness: WitnessFolder) -> None:
    witness.fail_names = None  # the outage is over
    recover(app, DAYS, lambda: ExportSaga(app, destination=witness))
    assert_exactly_once(app, tmp_path / "out", REFS, deleted=witness.deleted)


def report(record_property: Callable[[str, Any], None], name: str, value: Any) -> None:
    record_property(name, value)
    print(f"{name}: {value}")


@pytest.mark.parametrize("scenario", ["deliver", "abandon"])
@pytest.mark.parametrize("mode", ["error_before", "error_after"])
def test_a_transient_error_at_any_statement_never_breaks_exactly_once(
    make_export_app, tmp_path, scenario, mode, backend, record_property
):
    app = make_export_app()
    log = count_clean_run(app, tmp_path, scenario)
    points = [s for s in log if mode == "error_before" or s.kind == "commit"]
    failures: list[str] = []
    for point in points:
        witness = fresh_start(app, tmp_path, scenario)
        faults = StatementFaults(mode, point.number, only=MAIN).install(app.db.engine)
        try:
            ExportSaga(app, destination=witness).run_daily(D)
        except DatabaseUnavailable:
            pass  # reported to the caller as a transient error: the job (or the next run) retries
        finally:
            faults.uninstall()
        try:
            assert faults.fired is not None and faults.fired.sql == point.sql, "the fault fired where counted"
            check_recovery(app, tmp_path, witness)
        except AssertionError as error:
            failures.append(f"{mode} at {point}: {error}")
    report(record_property, f"{backend} {scenario} statements counted", len(log))
    report(record_property, f"{backend} {scenario} {mode} faults injected", len(points))
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- real processes
def cli(export_env: dict[str, str], fault: str, out: Path, log: Path | None = None) -> ForkedProcess:
    """`ledgerflow export run --date D` with `LEDGERFLOW_TEST_FAULT=fault`, a real process forked
    from the fork server (tests/forkserver.py); its stdout and stderr go to files in `out`."""
    env = {**os.environ, **export_env, "PYTHONPATH": str(ROOT), "LEDGERFLOW_TEST_FAULT": fault}
    if log is not None:
        env["LEDGERFLOW_TEST_FAULT_LOG"] = str(log)
    args = ["export", "run", "--date", D.isoformat(), "--json"]
    return forkserver.shared().spawn(
        "tests.faultrun", args, env=env, stdout=out / "stdout.txt", stderr=out / "stderr.txt"
    )


def count_cli_run(app: Any, tmp_path: Path, export_env: dict[str, str]) -> list[tuple[str, str]]:
    """(kind, sql) of each statement the main thread of a clean `export run` sends."""
    fresh_start(app, tmp_path, "deliver")
    log = tmp_path / "clean.log"
    proc = cli(export_env, f"count:0:{THREADS}", tmp_path, log)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_exactly_once(app, tmp_path / "out", REFS)
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    return [(kind, sql) for kind, _thread, sql in rows]


def transaction_starts(statements: list[tuple[str, str]]) -> list[int]:
    """Numbers of the first statement of each transaction: one kill there per distinct crash
    state (a kill anywhere inside a transaction leaves what a kill at its start leaves)."""
    starts, after_commit = [], True
    for number, (kind, _sql) in enumerate(statements, 1):
        if after_commit:
            starts.append(number)
        after_commit = kind == "commit"
    return starts


@pytest.mark.parametrize("part", range(KILL_PARTS), ids=lambda p: f"{p + 1}of{KILL_PARTS}")
def test_sigkill_of_a_real_export_run_at_any_statement_never_breaks_exactly_once(
    make_export_app, tmp_path, export_env, backend, record_property, part
):
    """A real `export run` SIGKILLed at every statement (SQLite), or at the start of every
    transaction (PostgreSQL): this part takes every `KILL_PARTS`-th of them from `part`."""
    app = make_export_app()
    statements = count_cli_run(app, tmp_path, export_env)
    # every statement on SQLite; every distinct crash state (each transaction's start) on PostgreSQL
    points = list(range(1, len(statements) + 1)) if backend == "sqlite" else transaction_starts(statements)
    points = points[part::KILL_PARTS]
    failures: list[str] = []
    for k in points:
        fresh_start(app, tmp_path, "deliver")
        proc = cli(export_env, f"kill:{k}:{THREADS}", tmp_path)
        _out, err = proc.communicate(timeout=300)
        try:
            assert proc.returncode == -signal.SIGKILL, f"not killed (exit {proc.returncode}): {err[-500:]}"
            expire_leases(app.db)  # the dead runner's lock lapses
            check_recovery(app, tmp_path, WitnessFolder(tmp_path / "out"))
        except AssertionError as error:
            failures.append(f"kill at #{k} {statements[k - 1]}: {error}")
    report(record_property, f"{backend} export run statements counted", len(statements))
    report(record_property, f"{backend} kills injected (part {part + 1}/{KILL_PARTS})", len(points))
    assert not failures, "\n".join(failures)


def wait_frozen(proc: ForkedProcess) -> None:
    wait_until(lambda: process_state(proc.pid) == "T", 120, message="the runner to freeze itself")


def test_a_runner_frozen_past_its_lock_is_fenced_when_it_wakes(
    make_export_app, tmp_path, export_env, backend, record_property
):
    app = make_export_app()
    statements = count_cli_run(app, tmp_path, export_env)
    starts = transaction_starts(statements)
    moves = [  # the transaction of each guarded write under the lock (each one extends it)
        max(s for s in starts if s <= n)
        for n, (_kind, sql) in enumerate(statements, 1)
        if sql.startswith("UPDATE export_batches SET")
        and "lock_expires_at=" in sql.split(" WHERE ")[0]
        and "lock_token=" not in sql.split(" WHERE ")[0]  # not taking or releasing the lock
    ]
    failures: list[str] = []
    for k in moves:
        fresh_start(app, tmp_path, "deliver")
        frozen = cli(export_env, f"stop:{k}:{THREADS}", tmp_path)
        try:
            wait_frozen(frozen)
            expire_leases(app.db)  # it stays frozen past its lock
            other = ExportSaga(app, destination=WitnessFolder(tmp_path / "out"))
            assert other.run_daily(D).state == "completed", "another runner took over and delivered"
            frozen.send_signal(signal.SIGCONT)
            out, err = frozen.communicate(timeout=300)
            assert frozen.returncode == 0, err
            assert '"in_progress": true' in out and "export_fenced" in err, f"not fenced: {out[-300:]}"
            check_recovery(app, tmp_path, WitnessFolder(tmp_path / "out"))
        except AssertionError as error:
            failures.append(f"frozen at #{k} {statements[k - 1]}: {error}")
        finally:
            if frozen.poll() is None:
                frozen.send_signal(signal.SIGCONT)
                frozen.kill()
                frozen.wait()
    report(record_property, f"{backend} runners frozen", len(moves))
    assert len(moves) >= 5 and not failures, "\n".join(
        failures
    )  # generated, uploading, fence, uploaded, completed
