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

    def to(revision: str) -> None:
        cfg = alembic_config()
        with db.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.upgrade if revision == "head" else command.downgrade)(cfg, revision)

    try:
        with db.begin() as conn:
            conn.execute(insert(jobs), rows)
        before = found()
        assert len(before[0]) > 0 and len(before[1]) > 0
        to("0015")
        indexes = _index_definitions(db)
        assert "ix_jobs_state_finished" in indexes
        assert {"ix_jobs_schedule", "ix_jobs_finished_at"}.isdisjoint(_partial(indexes))
        assert found() == before
        to("head")
        indexes = _index_definitions(db)
        assert "ix_jobs_state_finished" not in indexes
        assert {"ix_jobs_schedule", "ix_jobs_finished_at"} <= _partial(indexes)
        assert found() == before
        assert _differences(db) == []
    finally:
        db.dispose()
