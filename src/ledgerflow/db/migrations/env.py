"""Alembic environment: runs on the connection `ledgerflow.db.migrate` hands it."""

from __future__ import annotations

from alembic import context

from ledgerflow.db.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` CLI use during development
    from sqlalchemy import create_engine

    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "sqlite://")
    connection = engine.connect()

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
