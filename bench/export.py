"""Export benchmark: end-to-end daily export vs a plain csv.writer loop over the same cursor."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import literal, select

from bench.common import ROOT, database
from bench.ledger_data import load_entries
from ledgerflow import App
from ledgerflow.db.tables import journal_entries as e
from ledgerflow.db.tables import journal_lines as ln

SIZES = {"10k_lines": (2_500, 4), "10k_entries": (10_000, 4), "1m_lines": (50_000, 20)}


def reference_seconds(app: App, directory: Path) -> float:
    """The floor: stream the same rows in the same order and write them with csv.writer, nothing else."""
    query = (
        select(
            e.c.reference,
            e.c.entry_date,
            ln.c.account,
            ln.c.account_name,
            e.c.description,
            ln.c.debit_minor,
            ln.c.credit_minor,
            ln.c.tax_code,
            e.c.currency,
            ln.c.memo,
            literal(1),
        )
        .select_from(e.join(ln, ln.c.entry_id == e.c.id))
        .order_by(e.c.entry_date, e.c.reference, ln.c.line_no)
    )
    started = time.perf_counter()
    with (
        app.db.read() as conn,
        open(directory / "reference.csv", "w", encoding="utf-8-sig", newline="") as out,
    ):
        writer = csv.writer(out, lineterminator="\r\n")
        for r in conn.execution_options(stream_results=True, yield_per=5000).execute(query):
            writer.writerow(
                (
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    r[4],
                    f"{r[5] // 100}.{r[5] % 100:02d}",
                    f"{r[6] // 100}.{r[6] % 100:02d}",
                    r[7],
                    r[8],
                    r[9],
                )
            )
    return time.perf_counter() - started


def one(backend: str, entries: int, lines: int) -> dict[str, Any]:
    with database(backend) as url, tempfile.TemporaryDirectory(prefix="lf-bench-export-") as tmp:
        app = App(database_url=url, log_level="WARNING")
        app.migrate()
        load_entries(app, entries, lines)
        reference = reference_seconds(app, Path(tmp))
        app.close()
        out = subprocess.run(
            [sys.executable, "-m", "bench.export_memory", url, f"{tmp}/out"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=True,
        )
        result = json.loads(out.stdout)
        result["reference_seconds"] = round(reference, 3)
        result["ratio_to_reference"] = round(result["seconds"] / reference, 2)
        return result


def run(backends: list[str], sizes: list[str] | None = None) -> dict[str, Any]:
    return {
        backend: {name: one(backend, *SIZES[name]) for name in (sizes or list(SIZES))} for backend in backends
    }


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1:] or ["sqlite", "postgresql"]), indent=2))
