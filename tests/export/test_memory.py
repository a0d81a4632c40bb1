"""Memory stays flat whatever the batch size (measured in a subprocess, RSS sampled every 10 ms)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from bench.ledger_data import load_entries

from ledgerflow import App
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def export_in_subprocess(db_url: str, out: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.export_memory", db_url, out],
        capture_output=True,
        text=True,
        cwd=ROOT,
        # not traced by coverage: tracing made the test 1.7x slower and adds to the memory measured
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")},
            "PYTHONPATH": str(ROOT),
        },
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_exporting_10k_entries_peaks_below_100_mb(db_url, tmp_path):
    app = App(database_url=db_url, log_level="WARNING")
    load_entries(app, 10_000, 4)
    app.close()
    report = export_in_subprocess(db_url, str(tmp_path / "out"))
    assert report["state"] == "completed" and report["entries"] == 10_000
    assert report["peak_rss_mb"] < 100, report


def test_exporting_a_million_lines_grows_memory_by_less_than_30_mb(db_url, tmp_path):
    app = App(database_url=db_url, log_level="WARNING")
    load_entries(app, 50_000, 20)  # 1,000,000 journal lines
    app.close()
    report = export_in_subprocess(db_url, str(tmp_path / "out"))
    assert report["state"] == "completed" and report["lines"] == 1_000_000
    assert report["rss_growth_mb"] < 30, report
