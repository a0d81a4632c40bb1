"""The Alembic migrations build exactly the schema the code declares, and go down and up again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, insert, select

from ledgerflow.db.database import Database
from ledgerflow.db.migrate import alembic_config, current_revision, head_revision, migrate
from ledgerflow.db.tables import jobs, metadata
from ledgerflow.engine.search import JobFilter, index_pending, matching
from ledgerflow.engine.states import FINAL, JobState


def _differences(db: Database) -> list[object]:
    with db.read() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    ours = set(metadata.tables)
    # tables (and their indexes) not declared here are not differences: the tests add some to
    # the template, and each backend's search side tables are made by its migrations only
    theirs = [
        d
        for d in diff
        if isinstance(d, tuple)
        and (
            (d[0] == "remove_table" and d[1].name not in ours)
            or (d[0] == "remove_index" and d[1].table.name not in ours)
        )
    ]
    return [d for d in diff if d not in theirs]


def test_migrations_match_the_declared_tables(db_url):
    db = Database(db_url)
    try:
        assert current_revision(db) == head_revision()
        assert _differences(db) == []
    finally:
        db.dispose()


def test_downgrade_to_nothing_and_upgrade_again(db_url):
    db = Database(db_url)
    try:
        cfg = alembic_config()
        with db.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
        assert current_revision(db) is None
        migrate(db)
        assert current_revision(db) == head_revision()
        assert _differences(db) == []
    finally:
        db.dispose()


def _index_definitions(db: Database) -> dict[str, str]:
    """The database's own definition (`CREATE INDEX …`) of each index of `jobs`."""
    with db.read() as conn:
        if db.is_sqlite:
            query = (
                "SELECT name, sql FROM sqlite_master "
                "WHERE type = 'index' AND tbl_name = 'jobs' AND sql IS NOT NULL"
            )
        else:
            query = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs'"
        return dict(conn.exec_driver_sql(query).all())  # type: ignore[arg-type]


def _to(db: Database, revision: str) -> None:
    cfg = alembic_config()
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.upgrade if revision == "head" else command.downgrade)(cfg, revision)


def _partial(definitions: dict[str, str]) -> set[str]:
    return {name for name, sql in definitions.items() if " WHERE " in sql.upper()}


def test_every_index_declared_partial_is_partial_in_the_database(db_url):
    """Alembic's comparison ignores index predicates: a migration that built a partial index
    whole (or the reverse) would pass `test_migrations_match_the_declared_tables`."""
    db = Database(db_url)
    try:
        dialect = "sqlite" if db.is_sqlite else "postgresql"
        declared = {i.name for i in jobs.indexes if i.dialect_options[dialect]["where"] is not None}
        assert {"ix_jobs_claim", "ix_jobs_schedule", "ix_jobs_finished_at"} <= declared
        assert _partial(_index_definitions(db)) == declared
    finally:
        db.dispose()


def test_0016_goes_down_and_up_with_jobs_of_every_state_kept_and_found_alike(db_url):
    db = Database(db_url)
    now = datetime.now(UTC)
    rows = [
        {
            "task": "t",
            "queue": "default",
            "priority": 0,
            "state": state.value,
            "args": [i],
            "kwargs": {},
            "attempt": 0,
            "max_attempts": 3,
            "snoozes": 0,
            "timeout": 60.0,
            "has_dependencies": False,
            "scheduled_at": now + timedelta(hours=1) if state == JobState.SCHEDULED else now,
            "created_at": now,
            "errors": [],
            "finished_at": now - timedelta(days=i) if state in FINAL else None,
            "schedule_id": 7 if i % 2 else None,
        }
        for i, state in enumerate(list(JobState) * 3)
    ]
    live = [s.value for s in JobState if s not in FINAL]
    queries = (
        select(jobs.c.id).where(jobs.c.finished_at < now - timedelta(days=4)).order_by(jobs.c.id),
        select(jobs.c.id).where(jobs.c.schedule_id == 7, jobs.c.state.in_(live)).order_by(jobs.c.id),
        select(jobs.c.state, func.count()).group_by(jobs.c.state).order_by(jobs.c.state),
    )

    def found() -> list[list[tuple[object, ...]]]:
        with db.read() as conn:
            return [[tuple(r) for r in conn.execute(q)] for q in queries]

    try:
        with db.begin() as conn:
            conn.execute(insert(jobs), rows)
        before = found()
        assert len(before[0]) > 0 and len(before[1]) > 0
        _to(db, "0015")
        indexes = _index_definitions(db)
        assert "ix_jobs_state_finished" in indexes
        assert {"ix_jobs_schedule", "ix_jobs_finished_at"}.isdisjoint(_partial(indexes))
        assert found() == before
        _to(db, "head")
        indexes = _index_definitions(db)
        assert "ix_jobs_state_finished" not in indexes
        assert {"ix_jobs_schedule", "ix_jobs_finished_at"} <= _partial(indexes)
        assert found() == before
        assert _differences(db) == []
    finally:
        db.dispose()


def test_0018_goes_down_and_up_with_indexed_jobs_and_their_errors_found_alike(db_url):
    """PostgreSQL: down restores migration 0012's GIN index on jobs and drops the side tables
    (indexed or not), up drops it again and the indexer refills them; every search finds
    the same jobs throughout. SQLite: 0018 changes nothing, its FTS5 index answers alike."""
    db = Database(db_url)
    now = datetime.now(UTC)
    words = ["kiwi", "Mango", "papaya", "KIWI-7", 'say "hi"']
    rows = [
        {
            "task": "t",
            "queue": "default",
            "priority": 0,
            "state": (JobState.DEAD if i % 3 == 0 else JobState.COMPLETED).value,
            "args": [words[i % len(words)], i],
            "kwargs": {"memo": words[(i + 1) % len(words)]},
            "attempt": 1,
            "max_attempts": 1,
            "snoozes": 0,
            "timeout": 60.0,
            "has_dependencies": False,
            "scheduled_at": now,
            "created_at": now,
            "errors": [{"attempt": 1, "type": "ValueError", "message": f"no {words[i % 4]}"}] * (i % 3 == 0),
            "finished_at": now,
        }
        for i in range(40)
    ]
    filters = [JobFilter(text=w) for w in (*words, "kiw", "ango", "none such")]
    filters += [JobFilter(error=w) for w in ("kiwi", "mango", "papaya", "valueerror")]
    filters.append(JobFilter(text="kiwi", states=(JobState.DEAD,)))

    def scanned() -> list[list[int]]:  # the rows themselves, at any revision
        with db.read() as conn:
            return [
                sorted(conn.execute(select(jobs.c.id).where(matching(f, db.is_sqlite, scan=True))).scalars())
                for f in filters
            ]

    def searched() -> list[list[int]]:  # through the search index, as the app searches
        with db.read() as conn:
            return [
                sorted(conn.execute(select(jobs.c.id).where(matching(f, db.is_sqlite, conn=conn))).scalars())
                for f in filters
            ]

    try:
        with db.begin() as conn:
            conn.execute(insert(jobs), rows)
        before = scanned()
        assert all(before[:3]) and all(before[-5:])
        assert searched() == before
        index_pending(db)
        assert searched() == before
        _to(db, "0016")
        indexes = _index_definitions(db)
        assert ("ix_jobs_search" in indexes) is (not db.is_sqlite)
        assert scanned() == before
        _to(db, "head")
        assert "ix_jobs_search" not in _index_definitions(db)
        assert searched() == before  # nothing indexed yet on PostgreSQL: every job is above the mark
        assert index_pending(db) == (0 if db.is_sqlite else len(rows))
        assert searched() == before
        assert _differences(db) == []
    finally:
        db.dispose()
