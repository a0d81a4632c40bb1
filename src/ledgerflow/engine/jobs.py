"""Public value types of the engine: what to enqueue (`JobSpec`) and what exists (`Job`)."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ledgerflow.engine.states import JobState
from ledgerflow.errors import BadInput
from ledgerflow.names import check_name
from ledgerflow.payload import PayloadError, encoded

if TYPE_CHECKING:
    from ledgerflow.engine.progress import ProgressReport

DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = 5
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_TIMEOUT = 1800.0
#: The largest max_attempts PostgreSQL's integer column holds (SQLite's would hold more).
MAX_ATTEMPTS = 2**31 - 1
#: A job is due before this instant (a day before the last one a Python datetime holds: a delay
#: checked now is applied at the enqueue, later).
LATEST_DUE = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)


@dataclass(frozen=True)
class JobSpec:
    """Everything needed to insert one job; build it with `Task.prepare`."""

    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float = DEFAULT_TIMEOUT
    unique_key: str | None = None
    scheduled_at: datetime | None = None
    delay: float | None = None
    depends_on: tuple[int, ...] = ()
    schedule_id: int | None = None
    fire_time: datetime | None = None
    #: Seconds (or a timedelta) during which `unique_key` also covers finished jobs.
    unique_for: float | None = None
    #: `args` and `kwargs` as stored (JSON text), encoded once by the validation: what was
    #: checked is what is written, and no insert encodes them again.
    args_json: str = field(default="[]", init=False, repr=False, compare=False)
    kwargs_json: str = field(default="{}", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.unique_for, timedelta):
            object.__setattr__(self, "unique_for", self.unique_for.total_seconds())
        args_json, kwargs_json = validate_spec(self)
        object.__setattr__(self, "args_json", args_json)
        object.__setattr__(self, "kwargs_json", kwargs_json)

    def with_payload(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> JobSpec:
        """This spec with other args and kwargs, of which only these are checked: the rest was
        when this spec was made (`Task.prepare`'s fast path: half its time)."""
        spec: JobSpec = object.__new__(JobSpec)
        values = spec.__dict__
        values.update(self.__dict__)
        values["args"], values["kwargs"] = args, kwargs
        values["args_json"], values["kwargs_json"] = check_payload(spec)
        return spec


def validate_spec(spec: JobSpec) -> tuple[str, str]:
    """Refuse a spec that could never run, naming the bad value; returns its args and kwargs
    as JSON text."""
    check_name(spec.task, "task")
    check_name(spec.queue, "queue")
    if isinstance(spec.priority, bool) or not isinstance(spec.priority, int):
        raise BadInput(f"priority must be an integer 0..9, got {spec.priority!r}")
    if not 0 <= spec.priority <= 9:
        raise BadInput(f"priority must be 0..9, got {spec.priority}")
    if isinstance(spec.max_attempts, bool) or not isinstance(spec.max_attempts, int):
        raise BadInput(f"max_attempts must be an integer >= 1, got {spec.max_attempts!r}")
    if spec.max_attempts < 1:
        raise BadInput(f"max_attempts must be >= 1, got {spec.max_attempts}")
    if spec.max_attempts > MAX_ATTEMPTS:
        raise BadInput(f"max_attempts must be <= {MAX_ATTEMPTS}, got {spec.max_attempts}")
    timeout = spec.timeout
    if (type(timeout) is not float and not _is_float(timeout)) or not timeout > 0:  # NaN too
        raise BadInput(f"timeout must be > 0 seconds, got {timeout!r}")
    if spec.delay is not None and not _due_in_time(spec.delay):
        raise BadInput(f"delay must be >= 0 seconds, due before {LATEST_DUE:%Y-%m-%d}, got {spec.delay!r}")
    if spec.delay is not None and spec.scheduled_at is not None:
        raise BadInput("give delay or scheduled_at, not both")
    if spec.scheduled_at is not None and spec.scheduled_at.tzinfo is None:
        raise BadInput(f"scheduled_at must be timezone-aware, got {spec.scheduled_at!r}")
    if spec.scheduled_at is not None and not _in_utc_range(spec.scheduled_at):
        raise BadInput(f"scheduled_at must be within years 1..9999 in UTC, got {spec.scheduled_at!r}")
    if spec.unique_key is not None and (
        not isinstance(spec.unique_key, str) or not 0 < len(spec.unique_key) <= 255
    ):
        raise BadInput("unique_key must be 1..255 characters")
    if spec.unique_for is not None:
        if spec.unique_key is None:
            raise BadInput("unique_for needs a unique_key")
        window = spec.unique_for
        if isinstance(window, bool) or not isinstance(window, int | float) or not 0 < window <= 366 * 86400:
            raise BadInput(f"unique_for must be 0 < seconds <= 366 days, got {window!r}")
    return check_payload(spec)


def _is_float(value: object) -> bool:
    """Whether `value` is a number that converts to a float (10**400 does not)."""
    if not isinstance(value, int | float):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _due_in_time(delay: float) -> bool:
    """Whether `delay` seconds from now is a time (not negative, NaN or past `LATEST_DUE`)."""
    try:
        return delay >= 0 and datetime.now(UTC) + timedelta(seconds=delay) < LATEST_DUE
    except (OverflowError, ValueError, TypeError):
        return False


def _in_utc_range(moment: datetime) -> bool:
    """Whether `moment` in UTC is still a datetime (9999-12-31 23:00-05:00 is not)."""
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return False
    return True


def check_payload(spec: JobSpec) -> tuple[str, str]:
    """Refuse args or kwargs that cannot be stored (`check_json`); returns them as JSON text."""
    args, kwargs = spec.args, spec.kwargs
    args_json, why = encoded(args if type(args) in _SEQUENCES else list(args))
    if args_json is None:
        raise PayloadError(f"args of task {spec.task!r}: {why}")
    kwargs_json, why = encoded(kwargs if type(kwargs) is dict else dict(kwargs))
    if kwargs_json is None:
        raise PayloadError(f"kwargs of task {spec.task!r}: {why}")
    return args_json, kwargs_json


_SEQUENCES = (tuple, list)


@dataclass(frozen=True)
class JobError:
    """One failed attempt, as kept on the job."""

    attempt: int
    type: str
    message: str
    traceback: str | None
    at: str


#: State by stored value: a dict lookup (calling the enum costs more, once per claimed job).
JOB_STATES = {state.value: state for state in JobState}


@dataclass(frozen=True)
class Job:
    """A job as stored; returned by enqueue, `App.get_job` and listings."""

    id: int
    task: str
    queue: str
    priority: int
    state: JobState
    args: list[Any]
    kwargs: dict[str, Any]
    attempt: int
    max_attempts: int
    snoozes: int  # attempts that ended in a snooze: they do not count against max_attempts
    timeout: float
    unique_key: str | None
    scheduled_at: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    errors: list[JobError]
    result: Any
    state_reason: str | None
    schedule_id: int | None
    fire_time: datetime | None
    worker_id: str | None
    trace_context: dict[str, str] | None = None

    @classmethod
    def from_row(cls, row: Any) -> Job:
        m = row._mapping
        return cls(
            id=int(m["id"]),
            task=m["task"],
            queue=m["queue"],
            priority=int(m["priority"]),
            state=JOB_STATES[m["state"]],
            args=list(m["args"] or []),
            kwargs=dict(m["kwargs"] or {}),
            attempt=int(m["attempt"]),
            max_attempts=int(m["max_attempts"]),
            snoozes=int(m["snoozes"]),
            timeout=float(m["timeout"]),
            unique_key=m["unique_key"],
            scheduled_at=m["scheduled_at"],
            created_at=m["created_at"],
            started_at=m["started_at"],
            finished_at=m["finished_at"],
            errors=[JobError(**e) for e in (m["errors"] or [])],
            result=m["result"],
            state_reason=m["state_reason"],
            schedule_id=m["schedule_id"],
            fire_time=m["fire_time"],
            worker_id=m["worker_id"],
            trace_context=m.get("trace_context"),
        )

    @classmethod
    def inserted(
        cls,
        spec: JobSpec,
        job_id: int,
        state: str,
        scheduled_at: datetime,
        created_at: datetime,
        trace_context: dict[str, str] | None,
    ) -> Job:
        """A plain job just inserted: its spec plus what the insert decided and the database
        assigned. Built without the frozen dataclass's `__init__` (one `object.__setattr__` per
        field: 2.6 against 0.9 µs per one-call enqueue); `test_inserted_job_equals_the_row_read_back`."""
        job: Job = object.__new__(Job)
        job.__dict__.update(
            id=job_id,
            task=spec.task,
            queue=spec.queue,
            priority=spec.priority,
            state=JOB_STATES[state],
            args=list(spec.args),
            kwargs=dict(spec.kwargs),
            attempt=0,
            max_attempts=spec.max_attempts,
            snoozes=0,
            timeout=float(spec.timeout),
            unique_key=None,
            scheduled_at=scheduled_at,
            created_at=created_at,
            started_at=None,
            finished_at=None,
            errors=[],
            result=None,
            state_reason=None,
            schedule_id=None,
            fire_time=None,
            worker_id=None,
            trace_context=trace_context,
        )
        return job

    @property
    def attempts_counted(self) -> int:
        """Attempts that count against `max_attempts` (snoozed ones do not)."""
        return self.attempt - self.snoozes

    @property
    def out_of_attempts(self) -> bool:
        return self.attempts_counted >= self.max_attempts

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ISO 8601 times, plain types."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
            elif key == "errors":
                out[key] = [e.__dict__ for e in value]
            elif key == "state":
                out[key] = str(value)
            else:
                out[key] = value
        return out


@dataclass(frozen=True)
class JobContext:
    """What a running task may know about its own job (see `current_job`)."""

    job_id: int
    task: str
    queue: str
    attempt: int
    max_attempts: int
    schedule_id: int | None
    fire_time: datetime | None
    worker_id: str
    report: ProgressReport | None = field(default=None, compare=False, repr=False)

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    def progress(self, percent: float, message: str | None = None) -> None:
        """Record how far this attempt is, 0–100, and optionally what it is doing
        (e.g. `progress(40, "page 2 of 5")`); written at most once a second, shown in the
        job's detail (dashboard, API, CLI). Raises `BadInput` on a value out of range."""
        self._report().progress(percent, message)

    def set_metadata(self, values: Mapping[str, Any]) -> None:
        """Merge `values` (a JSON object, at most 16 KiB encoded) into this attempt's metadata,
        stored with its progress."""
        self._report().set_metadata(values)

    def _report(self) -> ProgressReport:
        if self.report is None:
            raise BadInput(f"job {self.job_id} was not started by a worker that records progress")
        return self.report


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "ledgerflow_current_job", default=None
)


def current_job() -> JobContext | None:
    """The job the calling task runs for, or None outside a worker."""
    return _current.get()


def set_current_job(ctx: JobContext | None) -> contextvars.Token[JobContext | None]:
    return _current.set(ctx)


def reset_current_job(token: contextvars.Token[JobContext | None]) -> None:
    _current.reset(token)


def as_id_tuple(ids: Sequence[int | Job] | None) -> tuple[int, ...]:
    """Normalise `depends_on` (ids or Job objects) to a tuple of ints."""
    if not ids:
        return ()
    return tuple(int(j.id if isinstance(j, Job) else j) for j in ids)
