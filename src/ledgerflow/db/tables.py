"""The schema, defined once with SQLAlchemy Core. Table names are part of the contract."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from ledgerflow.db.types import Id, Json, UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

# Predicates of the partial indexes. Queries must repeat them as literal SQL (see
# CLAIMABLE_SQL): with bound parameters neither SQLite nor a generic PostgreSQL plan can
# prove that the index applies, and every claim would sort all waiting jobs.
_LIVE = "state IN ('scheduled', 'available', 'running', 'retryable')"
_CLAIMABLE = "state IN ('scheduled', 'available', 'retryable')"
CLAIMABLE_SQL = text("jobs." + _CLAIMABLE)
UNIQUE_KEY_WHERE = text("unique_key IS NOT NULL AND " + _LIVE)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task", String(200), nullable=False),
    Column("queue", String(100), nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("args", Json, nullable=False),
    Column("kwargs", Json, nullable=False),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    Column("timeout", Float, nullable=False),
    Column("unique_key", String(255)),
    Column("has_dependencies", Boolean, nullable=False, server_default=text("false")),
    Column("scheduled_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("worker_id", String(120)),
    Column("lease_token", Id),
    Column("lease_expires_at", UTCDateTime),
    Column("errors", Json, nullable=False),
    Column("result", Json),
    Column("state_reason", Text),
    Column("schedule_id", Id),
    Column("fire_time", UTCDateTime),
    Index(
        "ix_jobs_claim",
        "queue",
        "priority",
        "scheduled_at",
        "id",
        sqlite_where=text(_CLAIMABLE),
        postgresql_where=text(_CLAIMABLE),
    ),
    Index(
        "ix_jobs_lease",
        "lease_expires_at",
        sqlite_where=text("state = 'running'"),
        postgresql_where=text("state = 'running'"),
    ),
    Index(
        "uq_jobs_unique_key",
        "unique_key",
        unique=True,
        sqlite_where=text(f"unique_key IS NOT NULL AND {_LIVE}"),
        postgresql_where=text(f"unique_key IS NOT NULL AND {_LIVE}"),
    ),
    Index("ix_jobs_state_task", "state", "task"),
    Index("ix_jobs_state_finished", "state", "finished_at"),
    Index("ix_jobs_schedule", "schedule_id", "state"),
)

job_dependencies = Table(
    "job_dependencies",
    metadata,
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("depends_on_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_job_dependencies_parent", "depends_on_id"),
)

job_executions = Table(
    "job_executions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("schedule_id", Id),
    Column("attempt", Integer, nullable=False),
    Column("task", String(200), nullable=False),
    Column("queue", String(100), nullable=False),
    Column("status", String(16), nullable=False),
    Column("worker_id", String(120)),
    Column("started_at", UTCDateTime, nullable=False),
    Column("completed_at", UTCDateTime),
    Column("duration_seconds", Float),
    Column("error_type", String(200)),
    Column("error_message", Text),
    Column("execution_metadata", Json),
    UniqueConstraint("job_id", "attempt", name="uq_job_executions_job_attempt"),
    Index("ix_job_executions_started", "started_at"),
    Index("ix_job_executions_task_completed", "task", "completed_at"),
    Index("ix_job_executions_schedule", "schedule_id", "started_at"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(120), primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("queues", Json, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("stopped_at", UTCDateTime),
)

pauses = Table(
    "pauses",
    metadata,
    Column("kind", String(10), primary_key=True),  # 'queue' | 'task'
    Column("name", String(200), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("paused_by", String(50), nullable=False),  # 'user' | 'autostop'
    Column("paused_at", UTCDateTime, nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("incident_key", String(255), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("title", String(500), nullable=False),
    Column("message", Text, nullable=False),
    Column("context", Json, nullable=False),
    Column("opened_at", UTCDateTime, nullable=False),
    Column("resolved_at", UTCDateTime),
    Column("delivery", Json, nullable=False),
    Index(
        "uq_alerts_open_incident",
        "incident_key",
        unique=True,
        sqlite_where=text("resolved_at IS NULL"),
        postgresql_where=text("resolved_at IS NULL"),
    ),
    Index("ix_alerts_opened", "opened_at"),
)

job_schedules = Table(
    "job_schedules",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("cron_expression", String(100), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("job_type", String(200), nullable=False),
    Column("args", Json, nullable=False),
    Column("kwargs", Json, nullable=False),
    Column("queue", String(100), nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("misfire_policy", String(8), nullable=False),
    Column("misfire_max", Integer, nullable=False),
    Column("allow_overlap", Boolean, nullable=False),
    Column("holiday_calendar", String(8)),
    Column("extra_holidays", Json, nullable=False),
    Column("business_day", String(10)),
    Column("disabled_reason", Text),
    Column("standard", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("last_fire_time", UTCDateTime),
    Column("next_fire_time", UTCDateTime),
)

#: One row per (schedule, fire time): the record that makes a fire happen once and makes a
#: missed or skipped fire a queryable fact.
schedule_fires = Table(
    "schedule_fires",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("schedule_id", Id, ForeignKey("job_schedules.id", ondelete="CASCADE"), nullable=False),
    Column("fire_time", UTCDateTime, nullable=False),
    Column("run_at", UTCDateTime),
    Column("status", String(10), nullable=False),  # enqueued | skipped | missed
    Column("reason", Text),
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="SET NULL")),
    Column("trigger", String(10), nullable=False),  # cron | manual
    Column("run_key", String(100)),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("schedule_id", "fire_time", name="uq_schedule_fires_schedule_time"),
    UniqueConstraint("schedule_id", "run_key", name="uq_schedule_fires_run_key"),
    Index("ix_schedule_fires_status", "status", "fire_time"),
)
