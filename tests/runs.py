"""The tests' own table, in a module light enough for the test apps that worker subprocesses
import (no pytest, psycopg or Alembic: each spawned worker starts faster)."""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table

test_metadata = MetaData()
#: One row per task run; lets tests count exactly-once delivery without trusting the queue.
runs = Table(
    "test_runs",
    test_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("label", String(100)),
    Column("phase", String(10), nullable=False),  # 'start' | 'end'
)
