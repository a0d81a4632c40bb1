"""Metrics behind the Prometheus rules in docs/monitoring, on both backends."""

from __future__ import annotations

import re
from datetime import timedelta

import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from ledgerflow import JobSpec
from ledgerflow.api.metrics import render
from ledgerflow.db.tables import export_batches
from ledgerflow.engine.search import index_pending
from ledgerflow.export.saga import ExportSaga
from ledgerflow.ledger.dates import today_in
from tests.conftest import ROOT

RULES = ROOT / "docs" / "monitoring" / "prometheus-rules.yml"


def samples(app) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(render(app).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def export_days(app, days, durations, entries_per_day=2):
    for day, seconds in zip(days, durations, strict=True):
        app.ledger.record_many(
            [
                {
                    "date": day.isoformat(),
                    "reference": f"R-{day}-{i}",
                    "description": "x",
                    "currency": "THB",
                    "lines": [
                        {"account": "5100", "account_name": "A", "debit": "1.00", "credit": "0"},
                        {"account": "1000", "account_name": "B", "debit": "0", "credit": "1.00"},
                    ],
                }
                for i in range(entries_per_day)
            ]
        )
        assert ExportSaga(app).run_daily(day).state == "completed"
        with app.db.begin() as conn:
            conn.execute(
                update(export_batches)
                .where(export_batches.c.batch_date == day)
                .values(duration_seconds=seconds)
            )


def test_the_latest_two_consecutive_daily_batches_are_exposed_for_the_slow_and_large_rules(
    make_app, tmp_path
):
    app = make_app(export_destination=f"file://{tmp_path / 'out'}", export_work_dir=str(tmp_path / "w"))
    today = today_in(app.settings.timezone)
    export_days(app, [today - timedelta(days=3), today - timedelta(days=2)], [31.0, 26.5])
    got = samples(app)
    assert got[("ledgerflow_daily_export_batch_duration_seconds", (("batch", "latest"),))] == 26.5
    assert got[("ledgerflow_daily_export_batch_duration_seconds", (("batch", "previous"),))] == 31.0
    assert got[("ledgerflow_daily_export_batch_entries", (("batch", "latest"),))] == 2
    export_days(app, [today], [3.0], entries_per_day=3)  # a day without a batch in between
    got = samples(app)
    assert got[("ledgerflow_daily_export_batch_duration_seconds", (("batch", "latest"),))] == 3.0
    assert got[("ledgerflow_daily_export_batch_entries", (("batch", "latest"),))] == 3
    assert ("ledgerflow_daily_export_batch_duration_seconds", (("batch", "previous"),)) not in got


def test_every_rule_reads_metrics_that_are_exported(make_app, tmp_path):
    app = make_app(export_destination=f"file://{tmp_path / 'out'}", export_work_dir=str(tmp_path / "w"))
    export_days(app, [today_in(app.settings.timezone) - timedelta(days=1)], [1.0])
    exported = {name for name, _ in samples(app)} | {
        f.name for f in text_string_to_metric_families(render(app).decode())
    }
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {"LedgerflowDailyExportSlowTwoDays", "LedgerflowDailyExportLargeBatch"} <= names
    for rule in rules:
        for metric in re.findall(r"\b(?:ledgerflow|daily_batch)_[a-z_]+", rule["expr"]):
            if metric == "ledgerflow_heartbeat_age_seconds":  # written by running processes only
                continue
            assert metric in exported, (rule["alert"], metric)


def test_ids_the_search_index_has_not_reached_are_exposed_and_a_held_mark_shows(make_app, backend):
    """`ledgerflow_search_unindexed_ids`: the jobs a search scans instead of its index, back to 0
    once indexed; on PostgreSQL a transaction held open in the database holds the mark (the
    value stays up after indexing) until it ends."""
    app = make_app()
    lag = ("ledgerflow_search_unindexed_ids", ())
    assert samples(app)[lag] == 0
    for n in range(3):
        app.enqueue(JobSpec(task="t", args=(n,)))
    assert samples(app)[lag] == 3
    index_pending(app.db)
    assert samples(app)[lag] == 0
    if backend == "sqlite":
        return  # its mark follows the writer lock: no transaction holds it
    with app.db.engine.connect() as idle:  # a session idle in transaction
        idle.exec_driver_sql("SELECT 1")
        app.enqueue(JobSpec(task="t", args=("late",)))
        index_pending(app.db)
        index_pending(app.db)
        assert samples(app)[lag] == 1
    index_pending(app.db)
    assert samples(app)[lag] == 0
