"""The Alembic migrations build exactly the schema the code declares, and go down and up again."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from ledgerflow.db.database import Database
from ledgerflow.db.migrate import alembic_config, current_revision, head_revision, migrate
from ledgerflow.db.tables import SEARCH_OBJECTS, metadata


def _differences(db: Database) -> list[object]:
    with db.read() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    ours = set(metadata.tables)
    # tables the tests add to the template (not ledgerflow's) are not differences
    theirs = [d for d in diff if isinstance(d, tuple) and d[0] == "remove_table" and d[1].name not in ours]
    # the search index of one backend (tables.SEARCH_OBJECTS) is declared in its migration only
    search = [
        d for d in diff if isinstance(d, tuple) and d[0] == "remove_index" and d[1].name in SEARCH_OBJECTS
    ]
    return [d for d in diff if d not in theirs and d not in search]


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
