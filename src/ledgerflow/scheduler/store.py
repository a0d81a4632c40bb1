"""ScheduleStore: schedules and their fire records in the database."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, exc, insert, select, update

from ledgerflow.db.tables import job_executions, job_schedules, jobs, schedule_fires
from ledgerflow.engine.jobs import JobSpec
from ledgerflow.engine.states import LIVE
from ledgerflow.engine.store import dialect_insert
from ledgerflow.errors import BadInput, Conflict, NotFound
from ledgerflow.scheduler.schedules import Schedule

if TYPE_CHECKING:
    from ledgerflow.app import App


#: Fields `ScheduleStore.edit` changes (name and id identify the schedule; the rest is kept
#: by the store).
EDITABLE = frozenset(
    {
        "cron_expression",
        "timezone",
        "job_type",
        "args",
        "kwargs",
        "queue",
        "priority",
        "enabled",
        "misfire_policy",
        "misfire_max",
        "allow_overlap",
        "holiday_calendar",
        "extra_holidays",
        "business_day",
        "disabled_reason",
    }
)
#: Fields whose change moves the fire times (the cursor restarts from the edit).
TIMING = ("cron_expression", "timezone", "holiday_calendar", "extra_holidays", "business_day")


class ScheduleExists(BadInput):
    """A schedule of that name is already stored."""


class ScheduleStore:
    def __init__(self, app: App) -> None:
        self.app = app
        self.db = app.db

    # ---------------------------------------------------------------- CRUD
    def add(self, schedule: Schedule) -> Schedule:
        """Insert a new schedule; a duplicate name is refused."""
        now = datetime.now(UTC)
        row = {**schedule.to_row(), "created_at": now, "updated_at": now}
        row["next_fire_time"] = _first(schedule, now)
        try:
            with self.db.begin() as conn:
                new_id = conn.execute(
                    insert(job_schedules).values(row).returning(job_schedules.c.id)
                ).scalar_one()
        except exc.IntegrityError:
            raise ScheduleExists(f"schedule {schedule.name!r} already exists") from None
        return self.get(int(new_id))

    def upsert(self, schedule: Schedule, keep_enabled: bool = True) -> Schedule:
        """Create, or update the definition of, the schedule called `schedule.name`."""
        try:
            current = self.get(schedule.name)
        except NotFound:
            try:
                return self.add(schedule)
            except ScheduleExists:  # another process stored it meanwhile: update it instead
                current = self.get(schedule.name)
        values = schedule.to_row()
        if keep_enabled:
            values["enabled"] = current.enabled
            values["disabled_reason"] = current.disabled_reason
        if {k: v for k, v in current.to_row().items()} == values:
            return current
        values["updated_at"] = datetime.now(UTC)
        values["next_fire_time"] = _first(replace(schedule, **{"enabled": True}), datetime.now(UTC))
        with self.db.begin() as conn:
            conn.execute(update(job_schedules).where(job_schedules.c.id == current.id).values(values))
        return self.get(schedule.name)

    def get(self, key: int | str, conn: Connection | None = None) -> Schedule:
        if conn is None:
            with self.db.read() as c:
                return self.get(key, c)
        column = job_schedules.c.id if isinstance(key, int) else job_schedules.c.name
        row = conn.execute(select(job_schedules).where(column == key)).first()
        if row is None:
            raise NotFound(f"unknown schedule {key!r}")
        return Schedule.from_row(row)

    def list(self, enabled_only: bool = False) -> list[Schedule]:
        query = select(job_schedules).order_by(job_schedules.c.name)
        if enabled_only:
            query = query.where(job_schedules.c.enabled.is_(True))
        with self.db.read() as conn:
            return [Schedule.from_row(r) for r in conn.execute(query)]

    def set_enabled(self, name: str, enabled: bool, reason: str | None = None) -> Schedule:
        schedule = self.get(name)
        if enabled and schedule.job_type not in self.app.registry:
            raise BadInput(
                f"cannot enable {name!r}: task {schedule.job_type!r} is not registered in this app"
            )
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "enabled": enabled,
            "disabled_reason": None if enabled else reason,
            "updated_at": now,
        }
        if enabled:
            # resume from now: fires missed while disabled are not owed
            values["last_fire_time"] = now
            values["next_fire_time"] = _first(replace(schedule, enabled=True), now)
        with self.db.begin() as conn:
            conn.execute(update(job_schedules).where(job_schedules.c.name == name).values(values))
        return self.get(name)

    def edit(self, name: str, **changes: Any) -> Schedule:
        """Change some fields of a stored schedule (checked like a new one).

        A change of timing (cron, zone, business-day rule, holidays) applies from now: the
        cursor moves to now, so fires the new timing would have made before the edit are not
        owed. Standard schedules are refused (their definition comes from the settings), and
        a schedule declared in code is stored again from the code when the app starts.
        """
        unknown = sorted(set(changes) - EDITABLE)
        if unknown:
            raise BadInput(
                f"cannot edit {', '.join(unknown)} of a schedule (editable: {', '.join(sorted(EDITABLE))})"
            )
        current = self.get(name)
        if current.standard:
            raise BadInput(f"schedule {name!r} is a standard schedule: change its settings instead")
        if "job_type" in changes and changes["job_type"] not in self.app.registry:
            raise BadInput(f"task {changes['job_type']!r} is not registered in this app")
        if changes.get("enabled") is True and current.job_type not in self.app.registry:
            raise BadInput(f"cannot enable {name!r}: task {current.job_type!r} is not registered in this app")
        if "enabled" in changes and changes["enabled"] != current.enabled:
            changes.setdefault("disabled_reason", None if changes["enabled"] else "disabled by user")
        updated = replace(current, **changes)
        values = updated.to_row()
        if values == current.to_row():
            return current
        now = datetime.now(UTC)
        values["updated_at"] = now
        if any(current.to_row()[k] != values[k] for k in TIMING) or (updated.enabled and not current.enabled):
            values["last_fire_time"] = now
        values["next_fire_time"] = _first(updated, now)
        with self.db.begin() as conn:
            if not conn.execute(
                update(job_schedules).where(job_schedules.c.id == current.id).values(values)
            ).rowcount:
                raise NotFound(f"unknown schedule {name!r}")
        return self.get(name)

    def remove(self, name: str) -> None:
        with self.db.begin() as conn:
            if not conn.execute(delete(job_schedules).where(job_schedules.c.name == name)).rowcount:
                raise NotFound(f"unknown schedule {name!r}")

    # ---------------------------------------------------------------- fires
    def record_fire(
        self,
        conn: Connection,
        schedule: Schedule,
        fire_time: datetime,
        *,
        status: str,
        reason: str | None = None,
        run_at: datetime | None = None,
        trigger: str = "cron",
        run_key: str | None = None,
    ) -> int | None:
        """Insert the fire row; None if it already exists (another scheduler won)."""
        index = ["schedule_id", "run_key"] if run_key else ["schedule_id", "fire_time"]
        stmt = (
            dialect_insert(self.db, schedule_fires)
            .values(
                schedule_id=schedule.id,
                fire_time=fire_time,
                run_at=run_at,
                status=status,
                reason=reason,
                trigger=trigger,
                run_key=run_key,
                created_at=datetime.now(UTC),
            )
            .on_conflict_do_nothing(index_elements=index)
            .returning(schedule_fires.c.id)
        )
        value = conn.execute(stmt).scalar()
        return int(value) if value is not None else None

    def enqueue_fire(
        self, conn: Connection, schedule: Schedule, fire_id: int, fire_time: datetime, run_at: datetime
    ) -> int:
        """Enqueue the fire's job in the same transaction as its fire row, and link them."""
        task = self.app.registry.get(schedule.job_type) if schedule.job_type in self.app.registry else None
        spec = JobSpec(
            task=schedule.job_type,
            args=tuple(schedule.args),
            kwargs=schedule.kwargs,
            queue=schedule.queue,
            priority=schedule.priority,
            max_attempts=task.options.max_attempts if task else 5,
            timeout=task.options.timeout if task else 1800.0,
            scheduled_at=run_at,
            schedule_id=schedule.id,
            fire_time=fire_time,
        )
        job_id = self.app.store.enqueue(conn, [spec])[0]
        conn.execute(update(schedule_fires).where(schedule_fires.c.id == fire_id).values(job_id=job_id))
        return job_id

    def lock(self, conn: Connection, schedule_id: int) -> Schedule | None:
        """The schedule, row-locked for this transaction; None if another transaction holds it
        (SKIP LOCKED: a scheduler never waits for another) or it was removed."""
        query = select(job_schedules).where(job_schedules.c.id == schedule_id)
        row = conn.execute(self.db.backend.skip_locked(query)).first()
        return Schedule.from_row(row) if row is not None else None

    def running_job(self, conn: Connection, schedule_id: int) -> int | None:
        """A job of this schedule that has not finished yet, if any (overlap check)."""
        return conn.execute(
            select(jobs.c.id).where(jobs.c.schedule_id == schedule_id, jobs.c.state.in_(LIVE)).limit(1)
        ).scalar()

    def run_now(self, name: str, run_key: str | None = None) -> dict[str, Any]:
        """Trigger one run immediately (also while disabled); once per `run_key`."""
        schedule = self.get(name)
        run_key = run_key or uuid.uuid4().hex
        now = datetime.now(UTC)
        with self.db.begin() as conn:
            fire_id = self.record_fire(
                conn,
                schedule,
                now,
                status="enqueued",
                reason="manual run",
                run_at=now,
                trigger="manual",
                run_key=run_key,
            )
            if fire_id is None:
                existing = conn.execute(
                    select(schedule_fires.c.job_id).where(
                        schedule_fires.c.schedule_id == schedule.id, schedule_fires.c.run_key == run_key
                    )
                ).scalar()
                raise Conflict(f"run {run_key!r} of {name!r} was already triggered (job {existing})")
            job_id = self.enqueue_fire(conn, schedule, fire_id, now, now)
        self.app._wake_local()
        return {"schedule": name, "run_key": run_key, "job_id": job_id, "fire_time": now.isoformat()}

    def fires(self, name: str, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
        """Fire records, newest first, with the state of each fire's job."""
        schedule = self.get(name)
        query = (
            select(schedule_fires, jobs.c.state.label("job_state"), jobs.c.started_at, jobs.c.finished_at)
            .select_from(schedule_fires.outerjoin(jobs, jobs.c.id == schedule_fires.c.job_id))
            .where(schedule_fires.c.schedule_id == schedule.id)
            .order_by(schedule_fires.c.fire_time.desc())
            .limit(limit)
        )
        if status:
            query = query.where(schedule_fires.c.status == status)
        return self._local_times(schedule, query)

    def history(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        """Every run (attempt) of the schedule's jobs: fire time, status, start/end, error, metadata."""
        schedule = self.get(name)
        query = (
            select(
                job_executions.c.job_id,
                job_executions.c.attempt,
                jobs.c.fire_time,
                job_executions.c.status,
                job_executions.c.started_at,
                job_executions.c.completed_at,
                job_executions.c.duration_seconds,
                job_executions.c.error_type,
                job_executions.c.error_message,
                job_executions.c.execution_metadata,
            )
            .select_from(job_executions.join(jobs, jobs.c.id == job_executions.c.job_id))
            .where(job_executions.c.schedule_id == schedule.id)
            .order_by(job_executions.c.started_at.desc())
            .limit(limit)
        )
        return self._local_times(schedule, query)

    def _local_times(self, schedule: Schedule, query: Any) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for r in rows:
            for key, value in r.items():
                if isinstance(value, datetime):
                    r[key] = value.astimezone(schedule.tz)
        return rows


def _first(schedule: Schedule, now: datetime) -> datetime | None:
    times = schedule.next_times(now, 1) if schedule.enabled else []
    return times[0] if times else None
