"""ledgerflow: a durable job queue, an exact cron scheduler and an exactly-once daily
journal export for small accounting teams, on SQLite or PostgreSQL."""

from ledgerflow.app import App, Transaction
from ledgerflow.config import Settings, load_settings
from ledgerflow.engine.jobs import Job, JobContext, JobSpec, current_job
from ledgerflow.engine.states import JobState
from ledgerflow.engine.worker import WorkerExit
from ledgerflow.errors import (
    BadInput,
    ConfigError,
    Conflict,
    DatabaseUnavailable,
    LedgerflowError,
    NotAllowed,
    NotFound,
    Snooze,
    UnknownTask,
)

__all__ = [
    "App",
    "BadInput",
    "ConfigError",
    "Conflict",
    "DatabaseUnavailable",
    "Job",
    "JobContext",
    "JobSpec",
    "JobState",
    "LedgerflowError",
    "NotAllowed",
    "NotFound",
    "Settings",
    "Snooze",
    "Transaction",
    "UnknownTask",
    "WorkerExit",
    "current_job",
    "load_settings",
]
__version__ = "0.1.0"
