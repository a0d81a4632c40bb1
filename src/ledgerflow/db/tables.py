"""The schema, defined once with SQLAlchemy Core. Table names are part of the contract."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    UniqueConstraint,
    text,
)

from ledgerflow.db.types import Id, Json, String, Text, UTCDateTime

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
#: SQLite: the claimable jobs read through their index whatever `ANALYZE` measured. With
#: statistics (an operator's ANALYZE or `PRAGMA optimize`) SQLite's planner judged the one-value
#: queue and task columns useless and scanned the table instead (the burst worker's check
#: 0.33 -> 105-130 ms at 1,000,000 jobs) or skip-scanned the index and sorted every waiting job.
CLAIM_INDEX = "INDEXED BY ix_jobs_claim"
#: SQLite: the jobs of a few states read through the state index (statistics of a table of
#: mostly completed jobs made the check for due retries scan it: 194 ms at 1,000,000 jobs).
STATE_INDEX = "INDEXED BY ix_jobs_state_id"
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
    Column("snoozes", Integer, nullable=False, server_default="0"),  # attempts that do not count
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
    Column("trace_context", Json),  # W3C traceparent/tracestate of the enqueue (ledgerflow[otel])
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
    Index(
        "ix_jobs_unique_key_created",
        "unique_key",
        "created_at",
        sqlite_where=text("unique_key IS NOT NULL"),
        postgresql_where=text("unique_key IS NOT NULL"),
    ),
    Index("ix_jobs_state_task_queue", "state", "task", "queue"),
    Index("ix_jobs_state_id", "state", "id"),
    # Partial (migration 0016): a job enters the first only if a schedule made it, the second
    # only when it finishes. Every query on them bounds the column, which implies the predicate.
    Index(
        "ix_jobs_schedule",
        "schedule_id",
        "state",
        sqlite_where=text("schedule_id IS NOT NULL"),
        postgresql_where=text("schedule_id IS NOT NULL"),
    ),
    Index(
        "ix_jobs_finished_at",
        "finished_at",
        sqlite_where=text("finished_at IS NOT NULL"),
        postgresql_where=text("finished_at IS NOT NULL"),
    ),
    Index("ix_jobs_created_at", "created_at"),
    # Text search (engine/search.py) reads side tables of each backend's own kind, made by
    # migrations 0015 (SQLite FTS5) and 0018 (PostgreSQL GIN trigram) and not declared here
    # (SEARCH_TABLES).
    sqlite_autoincrement=True,  # ids never reused after pruning (migration 0010)
)

#: The job search side tables (same names on both backends), made by migrations 0015 and 0018.
SEARCH_TABLES = frozenset({"job_search", "job_error_search", "job_search_dirty", "job_search_mark"})

job_dependencies = Table(
    "job_dependencies",
    metadata,
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("depends_on_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_job_dependencies_parent", "depends_on_id"),
)

#: A job no unfinished job waits on (or a completed one, whose dependents may run anyway).
#: Every delete of finished jobs takes only these: deleting a dead or cancelled job removes
#: its dependency rows (ON DELETE CASCADE), which would let a retried dependent run without
#: its dependency ever completing.
NOT_AWAITED = text(
    "(jobs.state = 'completed' OR NOT EXISTS (SELECT 1 FROM job_dependencies AS awaited "
    "JOIN jobs AS waiting ON waiting.id = awaited.job_id "
    "WHERE awaited.depends_on_id = jobs.id AND waiting." + _LIVE + "))"
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
    sqlite_autoincrement=True,  # ids never reused after pruning (migration 0010)
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

#: Limits shared by every worker: at most `concurrency` running jobs and at most `rate_limit`
#: starts per `rate_period` seconds, per queue or per task type. `recent_starts` is the sliding
#: log of the database-clock times (epoch seconds) of the starts still inside the period.
job_limits = Table(
    "job_limits",
    metadata,
    Column("kind", String(10), primary_key=True),  # 'queue' | 'task'
    Column("name", String(200), primary_key=True),
    Column("concurrency", Integer),
    Column("rate_limit", Integer),
    Column("rate_period", Float),
    Column("recent_starts", Json, nullable=False),
    Column("set_by", String(50), nullable=False),  # 'user' | 'code'
    Column("updated_at", UTCDateTime, nullable=False),
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
    sqlite_autoincrement=True,  # ids never reused after pruning (migration 0010)
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
    # pruning a job sets its fires' job_id to NULL: without this, every deleted job scans them all
    Index("ix_schedule_fires_job", "job_id"),
    sqlite_autoincrement=True,  # ids never reused after pruning (migration 0010)
)

journal_entries = Table(
    "journal_entries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("reference", String(64), nullable=False, unique=True),
    Column("entry_date", Date, nullable=False),
    Column("description", Text, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("export_path", String(10), nullable=False),  # scheduled | immediate
    Column("status", String(10), nullable=False),  # posted | draft
    Column("source", String(20), nullable=False),
    Column("reverses_id", Id, ForeignKey("journal_entries.id")),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_journal_entries_date", "entry_date"),
)

#: Amounts are integer minor units of the entry's currency (THB satang, JPY yen): never floats.
journal_lines = Table(
    "journal_lines",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("entry_id", Id, ForeignKey("journal_entries.id", ondelete="CASCADE"), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("account", String(40), nullable=False),
    Column("account_name", String(100), nullable=False),
    Column("debit_minor", BigInteger, nullable=False),
    Column("credit_minor", BigInteger, nullable=False),
    Column("tax_code", String(40)),
    Column("memo", Text),
    UniqueConstraint("entry_id", "line_no", name="uq_journal_lines_entry_line"),
)

export_batches = Table(
    "export_batches",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("batch_key", String(100), nullable=False, unique=True),  # daily:2026-11-26 | immediate:<entry id>
    Column("kind", String(10), nullable=False),
    Column("batch_date", Date, nullable=False),
    Column("state", String(12), nullable=False),
    Column("step", String(12), nullable=False),  # last completed step: claimed | generated | uploaded
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    Column("next_retry_at", UTCDateTime),
    Column("error_type", String(40)),
    Column("error", Text),
    Column("cutoff_at", UTCDateTime, nullable=False),
    Column("profile", String(20), nullable=False),
    Column("destination", String(500), nullable=False),
    Column("lock_token", Id),
    Column("lock_expires_at", UTCDateTime),
    Column("reservation", Json, nullable=False),
    Column("files", Json, nullable=False),
    Column("manifest", Json),
    Column("entry_count", Integer, nullable=False, server_default="0"),
    Column("line_count", Integer, nullable=False, server_default="0"),
    Column("totals", Json, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("completed_at", UTCDateTime),
    Column("duration_seconds", Float),  # of the attempt that completed it
    Index("ix_export_batches_kind_date", "kind", "batch_date"),
    Index("ix_export_batches_state", "state"),
    sqlite_autoincrement=True,  # ids never reused after pruning (migration 0010)
)

export_queue = Table(
    "export_queue",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("entry_id", Id, ForeignKey("journal_entries.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("export_path", String(10), nullable=False),
    Column("status", String(12), nullable=False),  # queued | processing | completed | failed
    Column("batch_id", Id, ForeignKey("export_batches.id", ondelete="SET NULL")),
    Column("file_id", Text),
    Column("file_link", Text),
    Column("error", Text),
    Column("queued_at", UTCDateTime, nullable=False),
    Column("exported_at", UTCDateTime),
    Index("ix_export_queue_status_path", "status", "export_path"),
    Index("ix_export_queue_batch", "batch_id"),
)

#: The entries a batch claimed (its snapshot), so every attempt exports the same set.
export_batch_entries = Table(
    "export_batch_entries",
    metadata,
    Column("batch_id", Id, ForeignKey("export_batches.id", ondelete="CASCADE"), primary_key=True),
    Column("entry_id", Id, ForeignKey("journal_entries.id", ondelete="CASCADE"), primary_key=True),
    Column("late", Boolean, nullable=False, server_default=text("false")),
)

#: Append-only audit trail; each row stores the SHA-256 of the previous row and of its own content.
export_logs = Table(
    "export_logs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("batch_id", Id, ForeignKey("export_batches.id", ondelete="SET NULL")),
    Column("batch_key", String(100)),
    Column("action", String(30), nullable=False),
    Column("batch_date", Date),
    Column("message", Text, nullable=False),
    Column("metadata", Json, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("row_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index(
        "uq_export_logs_delivery",
        "batch_key",
        "action",
        unique=True,
        sqlite_where=text("action IN ('csv_generated', 'no_entries')"),
        postgresql_where=text("action IN ('csv_generated', 'no_entries')"),
    ),
    Index("ix_export_logs_batch", "batch_id"),
)

circuit_breakers = Table(
    "circuit_breakers",
    metadata,
    Column("destination", String(500), primary_key=True),
    Column("state", String(10), nullable=False),  # closed | open | half_open
    Column("failures", Integer, nullable=False),
    Column("opened_at", UTCDateTime),
    Column("open_until", UTCDateTime),
    Column("trial_token", Id),  # the half-open trial is a lease (db/lease.py)
    Column("trial_expires_at", UTCDateTime),
    Column("last_error", Text),
    Column("updated_at", UTCDateTime, nullable=False),
)

# ---------------------------------------------------------------- receipts
#: Where each IMAP mailbox scan stopped: only UIDs above `last_uid` are fetched next time.
mail_cursors = Table(
    "mail_cursors",
    metadata,
    Column("mailbox", String(500), primary_key=True),  # user@host/MAILBOX
    Column("uid_validity", BigInteger, nullable=False),
    Column("last_uid", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

#: One row per distinct file (content-addressed by sha256: exact duplicates merge here).
receipts = Table(
    "receipts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("content_type", String(100), nullable=False),
    Column("extension", String(10), nullable=False),
    Column("size", Integer, nullable=False),
    Column("original_name", String(300), nullable=False),
    # received | draft | review | approved | rejected
    Column("status", String(10), nullable=False),
    Column("reason", Text),  # why it needs a person
    Column("text", Text),
    Column("vendor", String(300)),
    Column("receipt_date", Date),
    Column("currency", String(3)),
    Column("total_minor", BigInteger),
    Column("tax_minor", BigInteger),
    Column("tax_rate", Integer),
    Column("confidence", Float),
    Column("expense_account", String(100)),
    Column("duplicate_of", Id, ForeignKey("receipts.id")),
    Column("entry_reference", String(64)),
    Column("filed_name", String(500)),
    Column("filed_id", String(500)),  # reserved (Drive) or final remote id
    Column("filed_link", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("tax_code", String(40)),  # set by a correction; else JCT8, VAT7 ... from the rate
    Column("account_note", Text),  # where the expense account came from (rule, learned, default)
    # what was read, kept when a person corrects the booked values (duplicates are found by both)
    Column("read_vendor", String(300)),
    Column("read_date", Date),
    Column("read_total_minor", BigInteger),
    Index("ix_receipts_status", "status"),
    Index("ix_receipts_date_total", "receipt_date", "total_minor"),
    Index("ix_receipts_read_date_total", "read_date", "read_total_minor"),
    Index("ix_receipts_vendor", "vendor"),  # the accounts learned per vendor
    Index("ix_receipts_read_vendor", "read_vendor"),
)

#: Every message attachment a receipt came from (the same file mailed twice: two sources).
receipt_sources = Table(
    "receipt_sources",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("receipt_id", Id, ForeignKey("receipts.id", ondelete="CASCADE"), nullable=False),
    Column("mailbox", String(500), nullable=False),
    Column("uid_validity", BigInteger, nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("part", Integer, nullable=False),
    Column("message_id", String(500)),
    Column("sender", String(500)),
    Column("subject", Text),
    Column("sent_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("mailbox", "uid_validity", "uid", "part", name="uq_receipt_sources_message_part"),
    Index("ix_receipt_sources_receipt", "receipt_id"),
)

#: Signed-in dashboard sessions: a row per session, deleted at logout (a copied cookie stops
#: working). Only a hash of the session id is kept.
dashboard_sessions = Table(
    "dashboard_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_dashboard_sessions_expires_at", "expires_at"),
)

#: Every message or attachment that did not become a receipt, with the reason (a zip, a file
#: over the size limit, an inline logo, a message whose text is not a receipt).
mail_skipped = Table(
    "mail_skipped",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("mailbox", String(500), nullable=False),
    Column("uid_validity", BigInteger, nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("part", Integer, nullable=False),  # 0: the message itself
    Column("name", String(300)),
    Column("content_type", String(100)),
    Column("size", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("message_id", String(500)),
    Column("sender", String(500)),
    Column("subject", Text),
    Column("sent_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("mailbox", "uid_validity", "uid", "part", name="uq_mail_skipped_message_part"),
)
