"""Migration 0017 on SQLite: the in-place edit of the declared types against a table rebuild.

python -m bench.json_affinity [--jobs 1000000] [--reps 3]

A database at revision 0016 holds `jobs` finished jobs (one execution row each, results as a
job writes them: 1 in 100 a bare number, which NUMERIC affinity stored as INTEGER or REAL), the
newest 1,000 jobs pruned (`sqlite_sequence` above the largest id). On a copy of it, in turn
(`reps` rounds, alternating): `edit` runs migration 0017 (writable schema), `rebuild` the
documented 12-step rebuild of every table with a JSON column (Alembic batch mode, as 0010
did). For each: the seconds the migration's transaction held the write lock (wall; this
process's CPU, SQLite runs in it), the file size, `integrity_check`, `foreign_key_check`,
whether every index, trigger and FTS5 object and `sqlite_sequence` are as before, and how
many bare-number results read differently afterwards; for `edit`, its downgrade too.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.migration import MigrationContext
from alembic.operations import Operations

from bench.common import machine
from ledgerflow.db.database import Database
from ledgerflow.db.migrate import alembic_config, migrate

#: The JSON columns migration 0017 redeclares (its own list, read from the migration).
JSON_COLUMNS = importlib.import_module(
    "ledgerflow.db.migrations.versions.0017_sqlite_json_text_affinity"
).JSON_COLUMNS
#: Results a job may return that NUMERIC affinity stores as numbers.
NUMBERS = ("0.30000000000000004", "9223372036854775808", "1.0", "-0.0", "42", "1e300")


def _build(path: str, count: int) -> None:
    db = Database(f"sqlite:///{path}")
    migrate(db, "0016")
    db.dispose()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("BEGIN")
    now = "2026-11-30 12:00:00.000000"
    chunk = 50_000
    for start in range(1, count + 1, chunk):
        ids = range(start, min(start + chunk, count + 1))
        con.executemany(
            "INSERT INTO jobs (id, task, queue, priority, state, args, kwargs, attempt, max_attempts, "
            "snoozes, timeout, has_dependencies, scheduled_at, created_at, started_at, finished_at, "
            "errors, result) VALUES (?, 'invoice.post', 'default', 0, 'completed', ?, '{}', 1, 3, 0, "
            "60.0, 0, ?, ?, ?, ?, '[]', ?)",
            (
                (
                    i,
                    f"[{i}]",
                    now,
                    now,
                    now,
                    now,
                    NUMBERS[i // 100 % len(NUMBERS)] if i % 100 == 0 else '{"ok": true}',
                )
                for i in ids
            ),
        )
        con.executemany(
            "INSERT INTO job_executions (job_id, attempt, task, queue, status, worker_id, started_at, "
            "completed_at, duration_seconds, execution_metadata) "
            "VALUES (?, 1, 'invoice.post', 'default', 'completed', 'w', ?, ?, 0.01, '{\"n\": 1}')",
            ((i, now, now) for i in ids),
        )
    con.execute("DELETE FROM job_executions WHERE job_id > ?", (count - 1000,))
    con.execute("DELETE FROM jobs WHERE id > ?", (count - 1000,))
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def _state(path: str) -> dict[str, Any]:
    con = sqlite3.connect(path)
    try:
        objects = {
            (kind, name): sql
            for kind, name, sql in con.execute(
                "SELECT type, name, sql FROM sqlite_master WHERE type != 'table'"
            )
        }
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        numbers = {
            i: (type(v).__name__, v) if kind != "text" else (type(json.loads(v)).__name__, json.loads(v))
            for i, kind, v in con.execute(
                "SELECT id, typeof(result), result FROM jobs WHERE result GLOB '[0-9-]*'"
            )
        }
        return {
            "objects": objects,
            "tables": tables,
            "sequence": sorted(con.execute("SELECT name, seq FROM sqlite_sequence")),
            "numbers": numbers,
            "types": {
                t: {r[1]: r[2] for r in con.execute(f"PRAGMA table_xinfo({t})") if r[1] in cs}
                for t, cs in JSON_COLUMNS.items()
            },
        }
    finally:
        con.close()


def _checks(path: str) -> dict[str, Any]:
    con = sqlite3.connect(path)
    try:
        started = time.perf_counter()
        integrity = con.execute("PRAGMA integrity_check").fetchall()
        return {
            "integrity_check": [r[0] for r in integrity][:3],
            "integrity_check_seconds": round(time.perf_counter() - started, 2),
            "foreign_key_check": con.execute("PRAGMA foreign_key_check").fetchall()[:3],
        }
    finally:
        con.close()


def _edit(db: Database) -> None:
    migrate(db, "0017")


def _rebuild(db: Database) -> None:
    """The 12-step rebuild by Alembic batch mode, foreign keys off (as `migrate` does)."""
    with db.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.execute("PRAGMA foreign_keys=OFF")
        with conn.begin():
            ops = Operations(MigrationContext.configure(conn))
            for table, columns in JSON_COLUMNS.items():
                with ops.batch_alter_table(table, recreate="always") as batch:
                    for column in columns:
                        batch.alter_column(column, type_=sa.Text())
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.stamp(cfg, "0017")
        raw.execute("PRAGMA foreign_keys=ON")


def _run(base: str, work: str, variant: str) -> dict[str, Any]:
    shutil.copyfile(base, work)
    before = _state(work)
    size_before = os.path.getsize(work)
    db = Database(f"sqlite:///{work}")
    cpu = time.process_time()
    started = time.perf_counter()
    (_edit if variant == "edit" else _rebuild)(db)
    held = time.perf_counter() - started
    cpu = time.process_time() - cpu
    db.dispose()
    wal = Path(work + "-wal")
    peak = os.path.getsize(work) + (wal.stat().st_size if wal.exists() else 0)
    con = sqlite3.connect(work)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    after = _state(work)
    lost = {k: v for k, v in before["objects"].items() if after["objects"].get(k) != v}
    return {
        "variant": variant,
        "held_seconds": round(held, 2),
        "cpu_seconds": round(cpu, 2),
        "file_mb_before": round(size_before / 2**20, 1),
        "file_mb_after": round(os.path.getsize(work) / 2**20, 1),
        "file_and_wal_mb_at_commit": round(peak / 2**20, 1),
        "objects_changed_or_lost": sorted(f"{k[0]} {k[1]}" for k in lost),
        "tables_same": after["tables"] == before["tables"],
        "sqlite_sequence_before": before["sequence"],
        "sqlite_sequence_after": after["sequence"],
        "json_columns_declared": sorted({t for cs in after["types"].values() for t in cs.values()}),
        "bare_number_results": len(before["numbers"]),
        "read_differently": sum(1 for i, v in before["numbers"].items() if after["numbers"].get(i) != v),
        "examples": sorted(
            {
                (repr(v), repr(after["numbers"].get(i)))
                for i, v in before["numbers"].items()
                if after["numbers"].get(i) != v
            }
        )[:4],
        **_checks(work),
        **(_down(work) if variant == "edit" else {}),
    }


def _down(path: str) -> dict[str, Any]:
    """Migration 0017's downgrade, timed, and the checks after it."""
    db = Database(f"sqlite:///{path}")
    started = time.perf_counter()
    with db.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0016")
    held = time.perf_counter() - started
    db.dispose()
    checks = _checks(path)
    return {"down_held_seconds": round(held, 2), "down_integrity_check": checks["integrity_check"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lf-affinity-") as tmp:
        base, work = f"{tmp}/base.db", f"{tmp}/work.db"
        started = time.perf_counter()
        _build(base, args.jobs)
        print(f"built {args.jobs} jobs in {time.perf_counter() - started:.0f} s", flush=True)
        runs = []
        for _ in range(args.reps):
            for variant in ("edit", "rebuild"):
                runs.append(_run(base, work, variant))
                print(json.dumps(runs[-1]), flush=True)
                for suffix in ("", "-wal", "-shm"):
                    Path(work + suffix).unlink(missing_ok=True)
    summary = {
        variant: {
            key: {
                "median": statistics.median(r[key] for r in runs if r["variant"] == variant),
                "min": min(r[key] for r in runs if r["variant"] == variant),
                "max": max(r[key] for r in runs if r["variant"] == variant),
            }
            for key in ("held_seconds", "cpu_seconds") + (("down_held_seconds",) if variant == "edit" else ())
        }
        for variant in ("edit", "rebuild")
    }
    print(json.dumps({"jobs": args.jobs, "machine": machine(), "summary": summary}))


if __name__ == "__main__":
    main()
