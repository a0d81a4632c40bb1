"""Tasks: functions registered with an app, and how calls to them become jobs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from ledgerflow.engine.jobs import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    DEFAULT_TIMEOUT,
    Job,
    JobSpec,
    as_id_tuple,
)
from ledgerflow.engine.limits import check_concurrency, parse_rate
from ledgerflow.engine.retry import Backoff, default_backoff, exponential_backoff, fixed_schedule
from ledgerflow.errors import BadInput, UnknownTask

if TYPE_CHECKING:
    from ledgerflow.app import App

Isolation = Literal["thread", "process"]


@dataclass(frozen=True)
class TaskOptions:
    """Defaults a task gives its jobs; `configure()` overrides them per call."""

    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float = DEFAULT_TIMEOUT
    unique_key: str | None = None
    unique_for: float | timedelta | None = None
    delay: float | None = None
    scheduled_at: datetime | None = None
    depends_on: tuple[int, ...] = ()


class Task:
    """A registered task. Call it to run the function directly; `enqueue` to run it as a job."""

    def __init__(
        self,
        app: App,
        func: Callable[..., Any],
        *,
        name: str,
        options: TaskOptions,
        isolation: Isolation,
        backoff: Backoff,
        global_limit: int | None = None,
        rate_limit: str | tuple[int, float] | None = None,
    ) -> None:
        if isolation not in ("thread", "process"):
            raise BadInput(f"isolation must be 'thread' or 'process', got {isolation!r}")
        self.app = app
        self.func = func
        self.name = name
        self.options = options
        self.isolation = isolation
        self.backoff = backoff
        #: (concurrency, (starts, period)) this task declares for every worker together.
        self.declared_limits = (
            check_concurrency(global_limit),
            parse_rate(rate_limit) if rate_limit is not None else None,
        )
        self.is_async = inspect.iscoroutinefunction(func)
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    @property
    def _configured(self) -> ConfiguredTask:
        """The task with its own options (kept while they stay the same: it holds their checked spec)."""
        configured: ConfiguredTask | None = self.__dict__.get("_with_options")
        if configured is None or configured.options is not self.options:
            configured = self.__dict__["_with_options"] = ConfiguredTask(self, self.options)
        return configured

    def configure(self, **overrides: Any) -> ConfiguredTask:
        """Per-call options: queue, priority, max_attempts, timeout, unique_key, unique_for,
        delay, scheduled_at, depends_on."""
        return self._configured.configure(**overrides)

    def prepare(self, *args: Any, **kwargs: Any) -> JobSpec:
        return self._configured.prepare(*args, **kwargs)

    def enqueue(self, *args: Any, **kwargs: Any) -> Job:
        return self._configured.enqueue(*args, **kwargs)


@dataclass(frozen=True)
class ConfiguredTask:
    """A task with per-call options; `prepare` / `enqueue` like the task itself."""

    task: Task
    options: TaskOptions

    def configure(self, **overrides: Any) -> ConfiguredTask:
        unknown = set(overrides) - set(TaskOptions.__dataclass_fields__)
        if unknown:
            raise BadInput(f"unknown job option(s): {', '.join(sorted(unknown))}")
        if "depends_on" in overrides:
            overrides["depends_on"] = as_id_tuple(overrides["depends_on"])
        return ConfiguredTask(self.task, replace(self.options, **overrides))

    def prepare(self, *args: Any, **kwargs: Any) -> JobSpec:
        """The job these options make with this payload. The first one is checked whole and
        kept (without its payload); later ones copy it and check only theirs (half the time)."""
        checked: JobSpec | None = self.__dict__.get("_checked")
        if checked is not None:
            return checked.with_payload(args, kwargs)
        o = self.options
        spec = JobSpec(
            task=self.task.name,
            args=args,
            kwargs=kwargs,
            queue=o.queue,
            priority=o.priority,
            max_attempts=o.max_attempts,
            timeout=o.timeout,
            unique_key=o.unique_key,
            unique_for=o.unique_for,
            scheduled_at=o.scheduled_at,
            delay=o.delay,
            depends_on=o.depends_on,
        )
        self.__dict__["_checked"] = spec.with_payload((), {})  # frozen: set as `cached_property` does
        return spec

    def enqueue(self, *args: Any, **kwargs: Any) -> Job:
        return self.task.app.enqueue(self.prepare(*args, **kwargs))


class TaskRegistry:
    """Name → Task for one app."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def add(self, task: Task) -> None:
        existing = self._tasks.get(task.name)
        if existing is not None and existing.func is not task.func:
            raise BadInput(f"task name {task.name!r} is already registered")
        self._tasks[task.name] = task

    def get(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTask(f"unknown task {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def names(self) -> list[str]:
        return sorted(self._tasks)


def default_task_name(func: Callable[..., Any]) -> str:
    """`module.qualname`, the default name of a task."""
    return f"{func.__module__}.{func.__qualname__}"


def make_backoff(retry_backoff: float | Sequence[float] | Backoff | None) -> Backoff:
    """Accept a base delay in seconds, an explicit list of delays, or a callable."""
    if retry_backoff is None:
        return default_backoff
    if callable(retry_backoff):
        return retry_backoff
    if isinstance(retry_backoff, int | float):
        return exponential_backoff(base=float(retry_backoff))
    delays = [float(d) for d in retry_backoff]
    if not delays:
        raise BadInput("retry_backoff list is empty")
    return fixed_schedule(*delays)
