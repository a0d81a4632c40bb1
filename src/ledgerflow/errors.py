"""One exception type per failure class; messages name the offending value.

`exit_code` is what the CLI exits with: 2 for bad input or configuration,
1 for an operation that failed.
"""

from __future__ import annotations


class LedgerflowError(Exception):
    """Base class of every error ledgerflow raises on purpose."""

    exit_code = 1
    code = "error"


class BadInput(LedgerflowError):
    """The caller gave something invalid (argument, file, expression)."""

    exit_code = 2
    code = "bad_input"


class ConfigError(BadInput):
    """A setting is missing or invalid; the message names the variable."""

    code = "config_error"


class NotFound(BadInput):
    """A named thing (job, schedule, entry, batch) does not exist."""

    code = "not_found"


class UnknownTask(NotFound):
    """No task of that name is registered with the app."""

    code = "unknown_task"


class Conflict(LedgerflowError):
    """The operation is not allowed in the object's current state."""

    code = "conflict"


class NotAllowed(Conflict):
    """A user action the object's current state does not allow (e.g. retrying a running job)."""

    exit_code = 2


class DatabaseUnavailable(LedgerflowError):
    """The database could not be reached; retrying later may succeed.

    The CLI exits 2 on it: an unreachable database URL is a configuration problem.
    """

    exit_code = 2
    code = "database_unavailable"
    retryable = True


class LeaseLost(LedgerflowError):
    """A worker tried to write about a job whose lease it no longer holds."""

    code = "lease_lost"


class JobTimeout(LedgerflowError):
    """An attempt ran past its timeout."""

    code = "timeout"


class Snooze(Exception):
    """Raised by a task to run again after `seconds` without using up an attempt."""

    def __init__(self, seconds: float, reason: str = "") -> None:
        super().__init__(reason or f"snoozed for {seconds:g}s")
        self.seconds = max(0.0, float(seconds))
        self.reason = reason
