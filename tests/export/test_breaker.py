"""The destination circuit breaker (issue 11, item 9): the half-open trial is a lease that every
outcome ends, and opening the breaker raises a critical alert."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ledgerflow.clock import FixedClock
from ledgerflow.db.lease import Renewer
from ledgerflow.export.saga import ExportSaga
from tests.conftest import wait_until
from tests.export.conftest import D, entry
from tests.export.exactly_once import WitnessFolder, assert_exactly_once


def open_breaker_a_while_ago(app: Any) -> str:
    """Three destination failures 16 minutes ago: the breaker's open window has just passed."""
    breaker = ExportSaga(app, clock=FixedClock(datetime.now(UTC) - timedelta(minutes=16))).breaker
    assert [breaker.failure("HTTP 503") for _ in range(3)] == [False, False, True]
    return breaker.destination


def breaker_state(app: Any) -> str:
    return str(ExportSaga(app).breaker.state()["state"])


def test_opening_the_breaker_raises_a_critical_alert_and_closing_it_resolves_it(make_export_app, tmp_path):
    app = make_export_app()
    app.ledger.record_many([entry("B-1"), entry("B-2")])
    t0 = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
    clock = FixedClock(t0)
    down = WitnessFolder(tmp_path / "out", fail_names=lambda name: True)
    for _ in range(3):
        assert ExportSaga(app, destination=down, clock=clock).run_daily(D).state == "retryable"
    key = f"export_breaker_open:{down.key}"
    assert app.alerts.is_open(key)
    (alert,) = [a for a in app.alerts.history(open_only=True) if a.incident_key == key]
    assert alert.severity == "critical" and "3 consecutive failure(s)" in alert.message
    clock.set(t0 + timedelta(minutes=16))
    assert ExportSaga(app, clock=clock).run_daily(D).state == "completed"  # the trial succeeds
    assert breaker_state(app) == "closed" and not app.alerts.is_open(key)
    assert_exactly_once(app, tmp_path / "out", {"B-1", "B-2"})


@pytest.mark.parametrize("outcome", ["generation_timeout", "conflict", "destination_error"])
def test_every_outcome_of_the_half_open_trial_ends_it(make_export_app, tmp_path, outcome):
    app = make_export_app(export_generation_timeout=1e-6 if outcome == "generation_timeout" else 30)
    refs = {f"T-{i}" for i in range(500 if outcome == "generation_timeout" else 2)}
    app.ledger.record_many([entry(ref) for ref in sorted(refs)])  # 500: the timeout is checked per 500
    open_breaker_a_while_ago(app)
    destination = None
    if outcome == "conflict":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "journal_generic_2026-11-26.csv").write_text("someone else's file")
    if outcome == "destination_error":
        destination = WitnessFolder(tmp_path / "out", fail_names=lambda name: True)
    trial = ExportSaga(app, destination=destination).run_daily(D)
    expected = {"generation_timeout": "timeout", "conflict": "conflict", "destination_error": "unknown"}
    assert trial.error_type == expected[outcome] and trial.deferred_until is None
    if outcome == "destination_error":
        assert breaker_state(app) == "open", "a failed trial re-opens the breaker"
        return
    assert breaker_state(app) == "open", "no verdict: the trial is given back at once"
    nxt = make_export_app()  # a later run, with the problem gone, gets a trial of its own
    day = D + timedelta(days=1) if outcome == "conflict" else D
    assert ExportSaga(nxt).run_daily(day).state == "completed"
    assert breaker_state(app) == "closed"


def test_a_crashed_trial_expires_and_the_next_run_gets_a_trial(make_export_app, run_cli, tmp_path):
    app = make_export_app()
    app.ledger.record_many([entry("K-1"), entry("K-2")])
    open_breaker_a_while_ago(app)
    crashed = run_cli(
        "export", "run", "--date", D.isoformat(), env={"LEDGERFLOW_EXPORT_CRASH_AT": "mid_stream"}
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert breaker_state(app) == "half_open", "the dead process held the trial"
    results = []

    def run() -> bool:
        results.append(ExportSaga(app).run_daily(D))
        return results[-1].state == "completed"

    wait_until(run, 60, interval=0.5, message="the dead trial and batch lock to expire")
    assert [r.deferred_until is not None or r.in_progress for r in results[:-1]] == [True] * (
        len(results) - 1
    )
    assert breaker_state(app) == "closed"
    assert_exactly_once(app, tmp_path / "out", {"K-1", "K-2"})


def test_a_renewed_trial_outlives_its_expiry_and_an_abandoned_one_expires(make_export_app):
    app = make_export_app()
    open_breaker_a_while_ago(app)
    first = ExportSaga(app).breaker.permit()
    assert first.allowed and first.trial is not None
    granted = ExportSaga(app).breaker.state()["trial_expires_at"]
    renewer = Renewer().add(first.trial).start()
    try:
        wait_until(
            lambda: ExportSaga(app).breaker.state()["trial_expires_at"] > granted + timedelta(seconds=1),
            60,
            message="the renewer to extend the trial",
        )
        assert not ExportSaga(app).breaker.permit().allowed, "one trial at a time"
    finally:
        renewer.stop()
    wait_until(lambda: ExportSaga(app).breaker.permit().trial, 60, message="the unrenewed trial to expire")
