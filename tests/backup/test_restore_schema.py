"""A restore across schema versions: an older backup is brought up to this ledgerflow's schema,
a backup from a newer ledgerflow (a schema this one does not know) is refused before anything
changes, with or without --force. Through the real CLI on SQLite files and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, text

from ledgerflow import JobFilter, JobSpec
from ledgerflow.backup import create_backup
from ledgerflow.db.database import Database
from ledgerflow.db.migrate import current_revision, head_revision, migrate
from ledgerflow.db.tables import jobs
from ledgerflow.engine.search import index_pending
from tests.backup.conftest import entry
from tests.backup.test_restore_books import D1, _references
from tests.conftest import _admin, completed_job_row, pg_url

OLD_REVISION = "0006"  # receipts exist, their corrections (0007) do not yet


@pytest.fixture
def empty_db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database with no schema at all, on the test's backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    request.getfixturevalue("pg_template")  # skips (or fails on CI) without PostgreSQL
    name = f"lf_empty_{uuid.uuid4().hex[:10]}"
    _admin(f"CREATE DATABASE {name}")
    yield pg_url(name)
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _set_revision(url: str, revision: str) -> None:
    db = Database(url)
    with db.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    db.dispose()


def test_an_older_backup_is_restored_and_brought_up_to_this_schema(books_app, cli, empty_db_url):
    old = Database(empty_db_url)
    migrate(old, OLD_REVISION)
    old.dispose()
    app = books_app(database_url=empty_db_url)
    app.ledger.record(entry("OLD-1", D1))
    name = create_backup(app).name
    assert create_backup(app).revision == OLD_REVISION
    migrate(app.db)  # the upgrade to this version of ledgerflow

    code, stdout, err = cli("backup", "restore", name, env={"LEDGERFLOW_DATABASE_URL": empty_db_url})

    assert code == 0, err
    assert (
        f"schema {OLD_REVISION}" in stdout
        and f"upgraded the schema from {OLD_REVISION} to {head_revision()}" in stdout
    )
    app.db.dispose()
    assert current_revision(app.db) == head_revision()
    assert _references(app) == {"OLD-1"}
    code, _, err = cli("receipts", "list", env={"LEDGERFLOW_DATABASE_URL": empty_db_url})
    assert code == 0, "every command works on the restored database: " + err


@pytest.mark.parametrize("force", [False, True])
def test_a_backup_from_a_newer_ledgerflow_is_refused_and_nothing_changes(books_app, cli, db_url, force):
    app = books_app()
    _set_revision(db_url, "9999")  # as left by a later version's migration
    name = create_backup(app).name
    _set_revision(db_url, head_revision() or "")
    app.ledger.record(entry("KEPT-1", D1))

    code, _, err = cli("backup", "restore", name, *(["--force"] if force else []))

    assert code == 2
    assert "schema 9999" in err and "newer ledgerflow" in err, err
    app.db.dispose()
    assert current_revision(app.db) == head_revision() and _references(app) == {"KEPT-1"}


def test_migrate_on_a_database_of_a_newer_ledgerflow_exits_2_saying_so(cli, db_url):
    _set_revision(db_url, "9999")
    code, _, err = cli("migrate")
    assert code == 2 and "schema 9999" in err and "newer ledgerflow" in err, err


#: Results NUMERIC affinity changed on SQLite before migration 0017 (and some it kept).
BARE_NUMBERS = [2**63, 2**70, -(2**70), 1.0, -0.0, 3.0e5, 0.30000000000000004, 10**400, 42, "12", True]


def _results(db: Database) -> list[Any]:
    with db.read() as conn:
        return list(conn.execute(select(jobs.c.result).order_by(jobs.c.id)).scalars())


def test_a_backup_from_before_0017_with_bare_number_results_restores_as_it_read(books_app, cli, empty_db_url):
    """A 0016 backup whose results NUMERIC affinity stored as numbers, restored after the
    upgrade: each result reads as it read when backed up, SQLite's JSON columns hold text
    only, and the restored database backs up again (the snapshot's integrity_check)."""
    old = Database(empty_db_url)
    migrate(old, "0016")
    now = datetime.now(UTC)
    job = completed_job_row(now)
    with old.begin() as conn:
        conn.execute(insert(jobs), [{**job, "result": r} for r in BARE_NUMBERS])
    before = _results(old)
    old.dispose()
    app = books_app(database_url=empty_db_url)
    name = create_backup(app).name
    migrate(app.db)
    with app.db.begin() as conn:
        conn.execute(jobs.delete())

    code, stdout, err = cli("backup", "restore", name, env={"LEDGERFLOW_DATABASE_URL": empty_db_url})

    assert code == 0, err
    assert "upgraded the schema from 0016" in stdout
    app.db.dispose()
    assert json.dumps(_results(app.db)) == json.dumps(before)
    if app.db.is_sqlite:
        with app.db.read() as conn:
            kinds = {k for (k,) in conn.exec_driver_sql("SELECT DISTINCT typeof(result) FROM jobs")}
            assert kinds == {"text"}
            valid = conn.exec_driver_sql("SELECT count(*) FROM jobs WHERE NOT json_valid(result)").scalar()
            assert valid == 0, "every result is JSON"
    assert create_backup(app).revision == head_revision()


def test_a_backup_from_before_0018_restored_after_it_is_searched_exactly(books_app, cli, empty_db_url):
    """A 0017 backup (no PostgreSQL search side tables) restored into a database whose side
    tables index other jobs: they are dropped and made afresh by 0018, so every search finds
    the restored jobs and none of the replaced ones, before and after the indexer runs."""
    old = Database(empty_db_url)
    migrate(old, "0017")
    now = datetime.now(UTC)
    job = completed_job_row(now)
    with old.begin() as conn:
        conn.execute(insert(jobs), [{**job, "args": [f"restored kiwi {i}"]} for i in range(5)])
    old.dispose()
    app = books_app(database_url=empty_db_url)
    name = create_backup(app).name
    migrate(app.db)
    with app.db.begin() as conn:
        conn.execute(jobs.delete())
    replaced = app.enqueue_many([JobSpec(task="t", args=(f"replaced kiwi mango {i}",)) for i in range(5)])
    assert index_pending(app.db) >= len(replaced)  # the side tables hold the replaced jobs

    code, stdout, err = cli("backup", "restore", name, env={"LEDGERFLOW_DATABASE_URL": empty_db_url})

    assert code == 0, err
    app.db.dispose()
    with app.db.read() as conn:
        restored = sorted(conn.execute(select(jobs.c.id)).scalars())
    assert len(restored) == 5
    for _ in range(2):
        assert sorted(j.id for j in app.find_jobs(JobFilter(text="kiwi"))) == restored
        assert app.find_jobs(JobFilter(text="mango")) == []
        index_pending(app.db)
