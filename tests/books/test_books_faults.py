"""Correcting a held-back entry is one transaction: a real `entries import --upsert` process
SIGKILLed at every database statement leaves the old entry or the new one, never neither and
never both, and running it again finishes the correction exactly once."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy import func, select, update

from ledgerflow.builtin import build_app
from ledgerflow.config import load_settings
from ledgerflow.db.tables import export_queue, journal_entries, journal_lines
from tests import forkserver
from tests.books.conftest import jpy_entry
from tests.conftest import ROOT

HELD_BACK = jpy_entry("H-1", description="ค่ากาแฟ")  # Thai: cp932 (Yayoi) cannot hold it
FIXED = jpy_entry("H-1", description="コーヒー代")


def test_an_upsert_killed_at_any_statement_leaves_the_old_or_the_new_entry(db_url: str, tmp_path: Path):
    env = {
        **os.environ,
        "LEDGERFLOW_DATABASE_URL": db_url,
        "LEDGERFLOW_EXPORT_PROFILE": "yayoi",
        "LEDGERFLOW_EXPORT_DESTINATION": f"file://{tmp_path / 'out'}",
        "LEDGERFLOW_LOG_LEVEL": "ERROR",
        "PYTHONPATH": str(ROOT),
    }
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps([FIXED], ensure_ascii=False))
    app = build_app(load_settings(database_url=db_url, log_level="ERROR"))  # generic: records the Thai text
    app.migrate()

    def held_back_entry() -> None:
        """The state the export leaves for an entry its profile cannot hold (queue status failed)."""
        with app.db.begin() as conn:
            conn.execute(journal_entries.delete())
        app.ledger.record(HELD_BACK)
        with app.db.begin() as conn:
            conn.execute(
                update(export_queue).values(status="failed", error="character 'ค' cannot be written")
            )

    def state() -> list[tuple[str, str | None, int]]:
        with app.db.read() as conn:
            rows = conn.execute(
                select(journal_entries.c.description, export_queue.c.status, func.count(journal_lines.c.id))
                .select_from(journal_entries.outerjoin(export_queue).outerjoin(journal_lines))
                .where(journal_entries.c.reference == "H-1")
                .group_by(journal_entries.c.id, export_queue.c.status)
            ).all()
        return [tuple(r) for r in rows]

    def upsert(**extra: str) -> tuple[int, str]:
        """A real `entries import --upsert` process, forked from the fork server
        (tests/forkserver.py): its exit code (-9: killed) and stderr."""
        proc = forkserver.shared().spawn(
            "tests.faultrun",
            ["entries", "import", str(fixed), "--upsert"],
            env={**env, **extra},
            stdout=tmp_path / "stdout.txt",
            stderr=tmp_path / "stderr.txt",
        )
        _out, err = proc.communicate(timeout=120)
        return proc.wait(), err

    held_back_entry()
    code, err = upsert(LEDGERFLOW_TEST_FAULT_LOG=str(tmp_path / "clean.log"))
    assert code == 0, err
    statements = (tmp_path / "clean.log").read_text().splitlines()
    assert any(s.startswith("execute") and "DELETE FROM journal_entries" in s for s in statements)
    old, new = [("ค่ากาแฟ", "failed", 3)], [("コーヒー代", "queued", 3)]
    assert state() == new
    for k in range(1, len(statements) + 1):
        held_back_entry()
        code, err = upsert(LEDGERFLOW_TEST_FAULT=f"kill:{k}")
        assert code == -9, f"statement {k}: {err}"
        assert state() in (old, new), f"killed at {statements[k - 1]}"
        code, err = upsert()
        assert code == 0, err
        assert state() == new, f"after a kill at {statements[k - 1]}"
    app.close()
