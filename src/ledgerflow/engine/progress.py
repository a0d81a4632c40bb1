"""Progress and metadata a running task reports about its attempt.

A task calls `current_job().progress(40, "page 2 of 5")` or `current_job().set_metadata({...})`.
The values are checked at once (a bad one raises `BadInput` in the task) and kept in memory; the
worker's progress thread writes the latest of each running job to its execution row
(`job_executions.execution_metadata`) at most once per `PROGRESS_SECONDS`, and the attempt's
outcome carries the final values. Every write names the job's lease token and needs the
execution still running, so a runner whose lease was lost (fenced) cannot write.

A task with `isolation="process"` reports in its child process: the child's report checks
the values the same way and sends each change to the worker (`listener`), whose own report
takes them (`replace`) and is written like any other.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, exists, select, update

from ledgerflow.db.tables import job_executions, jobs
from ledgerflow.engine.states import JobState
from ledgerflow.errors import BadInput
from ledgerflow.payload import PayloadLimits, check_json

#: The worker writes a running job's progress at most this often.
PROGRESS_SECONDS = 1.0
#: Longest progress message kept.
MAX_MESSAGE = 500
#: Largest metadata object (encoded JSON).
METADATA_LIMITS = PayloadLimits(max_depth=8, max_bytes=16 * 1024)


class ProgressReport:
    """The latest progress of one attempt: what the task said, and whether it is written yet."""

    def __init__(
        self,
        job_id: int,
        attempt: int,
        token: int,
        listener: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.token = token
        self._listener = listener  # told every change, in order (a child process's pipe)
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        self._dirty = False
        self.closed = False

    def progress(self, percent: float, message: str | None = None) -> None:
        """Record how far the attempt is (0–100) and, optionally, what it is doing."""
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not math.isfinite(percent):
            raise BadInput(f"progress must be a number from 0 to 100, got {percent!r}")
        if not 0 <= percent <= 100:
            raise BadInput(f"progress must be from 0 to 100, got {percent}")
        if message is not None and not isinstance(message, str):
            raise BadInput(f"progress message must be text, got {type(message).__name__}")
        if message is not None and len(message) > MAX_MESSAGE:
            raise BadInput(f"progress message is {len(message)} characters, over the limit of {MAX_MESSAGE}")
        if message is not None:
            check_json(message, "progress message")
        self._set({"progress": percent, "message": message})

    def set_metadata(self, values: Mapping[str, Any]) -> None:
        """Merge `values` (a JSON object, at most 16 KiB) into the attempt's metadata."""
        if not isinstance(values, Mapping):
            raise BadInput(f"metadata must be a JSON object, got {type(values).__name__}")
        with self._lock:
            merged = {**self._values.get("metadata", {}), **values}
        check_json(merged, "job metadata", METADATA_LIMITS)
        self._set({"metadata": merged})

    def _set(self, values: dict[str, Any]) -> None:
        with self._lock:
            if self.closed:
                return
            self._values.update(values, updated_at=datetime.now(UTC).isoformat(timespec="seconds"))
            self._dirty = True
            if self._listener is not None:
                self._listener(dict(self._values))

    def replace(self, values: Mapping[str, Any]) -> None:
        """Take the values a child process reported (already checked there) as the latest."""
        with self._lock:
            if self.closed:
                return
            self._values = dict(values)
            self._dirty = True

    def snapshot(self) -> dict[str, Any] | None:
        """What to store now (None if the task reported nothing)."""
        with self._lock:
            return dict(self._values) or None

    def take_pending(self) -> dict[str, Any] | None:
        """The values not written yet (and mark them written), or None."""
        with self._lock:
            if not self._dirty or self.closed:
                return None
            self._dirty = False
            return dict(self._values)

    def write_again(self) -> None:
        """A write failed: keep the values pending for the next pass."""
        with self._lock:
            self._dirty = True

    def close(self) -> None:
        """The attempt ended (or was fenced): later reports are ignored."""
        with self._lock:
            self.closed = True


_write = (
    update(job_executions)
    .where(
        job_executions.c.job_id == bindparam("b_job"),
        job_executions.c.attempt == bindparam("b_attempt"),
        job_executions.c.status == "running",
        exists(
            select(1).where(
                jobs.c.id == bindparam("b_job"),
                jobs.c.lease_token == bindparam("b_token"),
                jobs.c.state == JobState.RUNNING,
            )
        ),
    )
    .values(execution_metadata=bindparam("b_values"))
)


def write_progress(
    conn: Connection, reports: Sequence[tuple[ProgressReport, dict[str, Any]]]
) -> list[ProgressReport]:
    """Store each report's values if its runner still holds the lease; returns the refused ones."""
    refused = []
    for report, values in reports:
        params = {
            "b_job": report.job_id,
            "b_attempt": report.attempt,
            "b_token": report.token,
            "b_values": values,
        }
        if not conn.execute(_write, params).rowcount:
            refused.append(report)
    return refused


def describe_progress(values: Mapping[str, Any]) -> str:
    """One line for people: "40% page 2 of 5 (at 2026-11-30T05:00:00+00:00) {metadata}"."""
    parts = []
    if values.get("progress") is not None:
        parts.append(f"{values['progress']:g}%")
    if values.get("message"):
        parts.append(str(values["message"]))
    if values.get("updated_at"):
        parts.append(f"(at {values['updated_at']})")
    if values.get("metadata"):
        parts.append(json.dumps(values["metadata"], ensure_ascii=False))
    return " ".join(parts)
