"""Migration 0017: SQLite's JSON columns redeclared TEXT in place, the numbers NUMERIC affinity
stored written back as their JSON text, everything else untouched; down and up again with data.
PostgreSQL: nothing changes."""

from __future__ import annotations

import importlib
import json
import math
import random
import sqlite3
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from sqlalchemy import insert, select

from ledgerflow.db.database import Database
from ledgerflow.db.migrate import alembic_config, current_revision, migrate
from ledgerflow.db.tables import alerts, job_executions, jobs, metadata
from ledgerflow.db.types import Json
from ledgerflow.engine.jobs import JobSpec
from tests.conftest import completed_job_row, count_runs, wait_until
from tests.engine.test_json_columns import assert_kept

JSON_COLUMNS = [(t.name, c.name) for t in metadata.sorted_tables for c in t.columns if c.type is Json]

_0017 = importlib.import_module("ledgerflow.db.migrations.versions.0017_sqlite_json_text_affinity")

#: Results a job may have returned: bare numbers of every kind, and documents that are not.
_rng = random.Random(17)
RESULTS: list[Any] = [
    *(2**63, 2**70, -(2**70), 2**63 - 1, 0, 42, 1.0, -0.0, 3.0e5, 1e300, 0.30000000000000004, 5e-324),
    *(_rng.randint(-(2**70), 2**70) for _ in range(60)),
    *(_rng.uniform(-1e6, 1e6) for _ in range(60)),
    *(float(_rng.randint(-(10**17), 10**17)) for _ in range(30)),
    *("12", "1.0", True, False, [1.0, -0.0], {"n": 2**70}),
]


def _to(db: Database, revision: str) -> None:
    """Up or down to `revision` (0017 itself, not the head: later migrations are not tested here)."""
    current = current_revision(db)
    cfg = alembic_config()
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        up = current is None or revision > current
        (command.upgrade if up else command.downgrade)(cfg, revision)


def _read(db: Database) -> dict[int, Any]:
    """Each job's result as the application reads it (SQLAlchemy's JSON type, the shared decoder)."""
    with db.read() as conn:
        return {i: r for i, r in conn.execute(select(jobs.c.id, jobs.c.result).order_by(jobs.c.id))}


def _schema(db: Database) -> dict[str, Any]:
    with db.read() as conn:
        if db.is_sqlite:
            objects = conn.exec_driver_sql("SELECT type, name, sql FROM sqlite_master WHERE type <> 'table'")
            return {
                "objects": sorted(objects),
                "tables": sorted(conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")),
                "sequence": sorted(conn.exec_driver_sql("SELECT name, seq FROM sqlite_sequence")),
            }
        query = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        columns = "SELECT table_name, column_name, data_type FROM information_schema.columns"
        return {
            "indexes": sorted(conn.exec_driver_sql(query)),
            "columns": sorted(conn.exec_driver_sql(columns)),
        }


def _storage(db: Database) -> dict[str, set[str]]:
    """SQLite: the declared type of the JSON columns and the storage classes they hold."""
    with db.read() as conn:
        declared = {
            (t, row[1]): row[2]
            for t in {t for t, _ in JSON_COLUMNS}
            for row in conn.exec_driver_sql(f"PRAGMA table_xinfo({t})")
        }
        kinds = set()
        for table, column in JSON_COLUMNS:
            kinds |= {k for (k,) in conn.exec_driver_sql(f'SELECT DISTINCT typeof("{column}") FROM {table}')}
        return {"declared": {declared[c] for c in JSON_COLUMNS}, "kinds": kinds}


def _checks(db: Database) -> list[Any]:
    with db.read() as conn:
        return [
            conn.exec_driver_sql("PRAGMA integrity_check").all(),
            conn.exec_driver_sql("PRAGMA foreign_key_check").all(),
        ]


def test_0017_goes_up_and_down_with_every_stored_value_read_alike_and_the_schema_kept(db_url):
    db = Database(db_url)
    now = datetime.now(UTC)
    job = completed_job_row(now)
    try:
        _to(db, "0016")
        with db.begin() as conn:
            conn.execute(insert(jobs), [{**job, "args": [i], "result": r} for i, r in enumerate(RESULTS)])
            conn.execute(insert(jobs), [{**job, "args": [], "result": 1} for _ in range(5)])
            conn.execute(jobs.delete().where(jobs.c.id > len(RESULTS)))  # the newest pruned
            execution = {
                "attempt": 1,
                "task": "t",
                "queue": "default",
                "status": "completed",
                "started_at": now,
            }
            conn.execute(insert(job_executions), [{**execution, "job_id": 1, "execution_metadata": 2**70}])
            alert = {
                "incident_key": "k",
                "severity": "warning",
                "title": "t",
                "message": "m",
                "opened_at": now,
            }
            conn.execute(insert(alerts), [{**alert, "context": 1.0, "delivery": -0.0}])
        before, schema = _read(db), _schema(db)
        if db.is_sqlite:
            assert _storage(db) == {"declared": {"JSON"}, "kinds": {"integer", "real", "text", "null"}}
            assert before[1] == 2**63 and type(before[1]) is float, "NUMERIC affinity: a REAL"

        _to(db, "0017")
        assert json.dumps(_read(db)) == json.dumps(before)
        assert _schema(db) == schema
        if db.is_sqlite:
            assert _storage(db) == {"declared": {"TEXT"}, "kinds": {"text", "null"}}
            assert _checks(db) == [[("ok",)], []]
            with db.begin() as conn:  # written now: kept as given
                conn.execute(insert(jobs), [{**job, "args": [], "result": r} for r in RESULTS])
            written = list(_read(db).values())[len(RESULTS) :]
            assert json.dumps(written) == json.dumps(RESULTS)
        schema = _schema(db)  # the new rows' ids in sqlite_sequence

        _to(db, "0016")
        assert _schema(db) == schema
        if db.is_sqlite:
            assert _storage(db) == {"declared": {"JSON"}, "kinds": {"integer", "real", "text", "null"}}
            assert _checks(db) == [[("ok",)], []]
            again = list(_read(db).values())[len(RESULTS) :]  # stored as 0016 stores them
            assert json.dumps(again) == json.dumps(list(before.values()))
        _to(db, "0017")
        assert _schema(db) == schema
        if db.is_sqlite:
            assert _storage(db)["declared"] == {"TEXT"} and _checks(db) == [[("ok",)], []]
    finally:
        db.dispose()


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE x (\n\tid INTEGER, \n\targs VARCHAR(10) NOT NULL\n)",  # not JSON: unknown schema
        "CREATE TABLE x (\n\targs JSON, \n\tkwargs JSON, \n\tb JSON\n, args JSON)",  # twice
    ],
)
def test_0017_refuses_a_table_whose_json_columns_it_does_not_find_once(sql):
    with pytest.raises(ValueError, match="args declared JSON"):
        _0017.retyped(sql, ("args",), "JSON", "TEXT")


def test_0017_changes_only_the_declared_type_of_the_columns_named():
    sql = 'CREATE TABLE "jobs" (\n\targs JSON NOT NULL, \n\tjson_args JSON, \n\tresult JSON\n, context JSON)'
    want = 'CREATE TABLE "jobs" (\n\targs TEXT NOT NULL, \n\tjson_args JSON, \n\tresult TEXT\n, context TEXT)'
    assert _0017.retyped(sql, ("args", "result", "context"), "JSON", "TEXT") == want


#: Bare documents SQLite's NUMERIC affinity changes (and some it keeps).
CHANGED = [2**63, 2**70, -(2**70), 1.0, -0.0, 3.0e5, 2.0**63, 1e300, 0.5, 42, "12", True]


def _as_numeric_affinity_kept(value: Any) -> Any:
    """`value` as a SQLite column declared JSON (NUMERIC affinity) gave it back."""
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE t (j JSON)")
    con.execute("INSERT INTO t VALUES (?)", (json.dumps(value),))
    (stored,) = con.execute("SELECT j FROM t").fetchone()
    con.close()
    return json.loads(stored) if isinstance(stored, str) else stored


def test_workers_running_through_0017_lose_no_job_and_store_exactly_once_it_commits(
    db_url, backend, workers, make_app
):
    """Two worker processes complete bare-number results while 0017 runs: each job runs once,
    a result stored before the upgrade reads as that affinity kept it, and the same worker
    processes (their connections opened before it) store every later result exactly."""
    db = Database(db_url)
    try:
        _to(db, "0016")
        app = make_app()
        before = [app.enqueue(JobSpec("echo", args=[v], kwargs={"sleep": 0.01})).id for v in CHANGED * 20]
        workers(app="tests.apps.outcomes:app", concurrency=2, name="a")
        workers(app="tests.apps.outcomes:app", concurrency=2, name="b")

        def done(ids: list[int]) -> int:
            return sum(app.get_job(i).state == "completed" for i in ids)

        wait_until(lambda: done(before) >= 20, 120, message="some jobs done before the upgrade")
        migrate(db)
        after = [app.enqueue(JobSpec("echo", args=[v])).id for v in CHANGED * 5]
        wait_until(lambda: done(before + after) == len(before + after), 120, message="every job done")

        assert count_runs(db_url) == dict.fromkeys(before + after, 1)
        for job_id, value in zip(before + after, CHANGED * 25, strict=True):
            result = app.get_job(job_id).result
            if backend == "postgresql":
                assert_kept(backend, result, value)
            elif job_id in after:
                assert json.dumps(result) == json.dumps(value)
            else:  # either side of the commit
                kept = _as_numeric_affinity_kept(value)
                assert json.dumps(result) in (json.dumps(value), json.dumps(kept))
        if db.is_sqlite:
            assert _storage(db) == {"declared": {"TEXT"}, "kinds": {"text", "null"}}
            assert _checks(db) == [[("ok",)], []]
    finally:
        db.dispose()


def test_0017_writes_an_integer_numeric_affinity_made_infinite_as_json(db_url):
    """10**400 as a result: NUMERIC affinity stored an infinite REAL. 0017 writes it as JSON
    (`1e999`, not `Infinity`, which SQLite's json_valid refuses) that reads as it read before,
    and the downgrade stores it as that REAL again. PostgreSQL's jsonb keeps every digit."""
    db = Database(db_url)
    now = datetime.now(UTC)
    job = completed_job_row(now)
    huge = [10**400, -(10**400)]
    try:
        _to(db, "0016")
        with db.begin() as conn:
            conn.execute(insert(jobs), [{**job, "result": r} for r in huge])
        before = list(_read(db).values())
        _to(db, "0017")
        assert list(_read(db).values()) == before
        if not db.is_sqlite:
            assert before == huge
            return
        assert before == [math.inf, -math.inf], "NUMERIC affinity: infinite REALs"
        stored = "SELECT result, typeof(result), json_valid(result) FROM jobs ORDER BY id"
        with db.read() as conn:
            assert conn.exec_driver_sql(stored).all() == [("1e999", "text", 1), ("-1e999", "text", 1)]
        assert _checks(db) == [[("ok",)], []]
        _to(db, "0016")
        with db.read() as conn:
            assert [k for _, k, _ in conn.exec_driver_sql(stored)] == ["real", "real"]
        assert list(_read(db).values()) == before and _checks(db) == [[("ok",)], []]
    finally:
        db.dispose()
