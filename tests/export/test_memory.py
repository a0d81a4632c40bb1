"""Memory stays flat whatever the batch size (measured in a subprocess, RSS sampled every 10 ms).

Flat is shown by two sizes in one database: 40,000 lines, then 200,000 lines; the growth of
the larger export may exceed the smaller one's by no more than the old bound of 30 MB over
1,000,000 lines allowed for its 160,000 extra lines. The 1,000,000-line export itself is
measured by `make bench` (bench/export.py, docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
from bench.ledger_data import load_entries

from ledgerflow import App
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

D = date(2026, 11, 26)


def load(db_url: str, entries: int, lines_per_entry: int, day: date, first: int) -> None:
    app = App(database_url=db_url, log_level="WARNING")
    try:
        load_entries(app, entries, lines_per_entry, day, first)
    finally:
        app.close()


def export_in_subprocess(db_url: str, out: Path, day: date) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.export_memory", db_url, str(out), day.isoformat()],
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


def test_memory_peaks_below_100_mb_for_10k_entries_and_does_not_grow_with_5x_the_lines(db_url, tmp_path):
    load(db_url, 10_000, 4, D, first=0)  # 40,000 lines
    small = export_in_subprocess(db_url, tmp_path / "small", D)
    assert small["state"] == "completed" and small["entries"] == 10_000 and small["lines"] == 40_000
    assert small["peak_rss_mb"] < 100, small
    load(db_url, 10_000, 20, D + timedelta(days=1), first=10_000)  # 200,000 lines, the next day
    large = export_in_subprocess(db_url, tmp_path / "large", D + timedelta(days=1))
    assert large["state"] == "completed" and large["entries"] == 10_000 and large["lines"] == 200_000
    assert large["rss_growth_mb"] < 30, large
    # 30 MB per 1,000,000 lines (the former bound) is 4.8 MB for the 160,000 lines more
    assert large["rss_growth_mb"] - small["rss_growth_mb"] < 4.8, (small, large)
