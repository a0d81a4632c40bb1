"""Apply Alembic migrations programmatically (`ledgerflow migrate`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from ledgerflow.db.database import Database
from ledgerflow.errors import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_ID = 72_771_001  # pg_advisory_xact_lock key: one migrator at a time


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def migrate(db: Database, revision: str = "head") -> None:
    """Upgrade the schema to `revision`, in one transaction, serialised across processes.

    A database whose schema this ledgerflow does not know (made by a newer version) is refused.
    """
    cfg = alembic_config()
    if db.is_sqlite:
        _migrate_sqlite(db, cfg, revision)
        return
    with db.begin() as conn:
        db.lift_limits(conn, lock_wait=True)  # a migration may rewrite big tables, or wait for another
        conn.execute(text(f"SELECT pg_advisory_xact_lock({_LOCK_ID})"))
        check_known(MigrationContext.configure(conn).get_current_revision(), "the database")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def _migrate_sqlite(db: Database, cfg: Config, revision: str) -> None:
    """SQLite rebuilds a table to change it: with foreign keys on, dropping the old table would
    delete (ON DELETE CASCADE) or unlink the rows that reference it. So, as SQLite's own
    procedure says, foreign keys are off during the migration (set outside any transaction)
    and checked before the commit."""
    with db.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                check_known(MigrationContext.configure(conn).get_current_revision(), "the database")
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"migration left rows whose foreign keys point nowhere: {broken[:5]}")
        finally:
            raw.execute("PRAGMA foreign_keys=ON")


def current_revision(db: Database) -> str | None:
    with db.read() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revisions() -> set[str]:
    """Every schema revision this version of ledgerflow can upgrade from."""
    return {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def check_known(revision: str | None, what: str) -> None:
    """Refuse a schema `revision` (of `what`) made by a newer ledgerflow than this one."""
    if revision is not None and revision not in known_revisions():
        raise ConfigError(
            f"{what} has schema {revision}, made by a newer ledgerflow than this one (which knows up to "
            f"{head_revision()}): upgrade ledgerflow first"
        )
