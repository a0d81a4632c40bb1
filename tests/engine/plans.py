"""Reading the plans the databases choose for the statements the code runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event


@contextmanager
def recorded(app: Any, kinds: tuple[str, ...] = ("SELECT", "DELETE")) -> Iterator[dict[str, Any]]:
    """statement → its first parameters, of every statement of `kinds` run meanwhile on `jobs`
    (not executemany)."""
    seen: dict[str, Any] = {}

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool) -> None:
        head = statement.lstrip()
        if not many and head.upper().startswith(kinds) and " jobs" in statement:
            seen.setdefault(statement, parameters)

    event.listen(app.db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(app.db.engine, "before_cursor_execute", record)


def explain(app: Any, statement: str, parameters: Any, backend: str) -> str:
    """The plan of `statement` (not run: EXPLAIN QUERY PLAN on SQLite, EXPLAIN on PostgreSQL)."""
    sql = ("EXPLAIN QUERY PLAN " if backend == "sqlite" else "EXPLAIN (COSTS OFF) ") + statement
    with app.db.begin() as conn:
        rows = conn.exec_driver_sql(sql, parameters).all()
        conn.rollback()
    return "\n".join(str(r[-1] if backend == "sqlite" else r[0]) for r in rows)


def explain_statement(app: Any, statement: Any, values: dict[str, Any], backend: str) -> str:
    """The plan of a SQLAlchemy `statement` with these parameter `values` (see `explain`)."""
    compiled = statement.compile(dialect=app.db.engine.dialect).construct_expanded_state(values)
    given = compiled.positional_parameters if backend == "sqlite" else compiled.parameters
    return explain(app, compiled.statement, given, backend)


def scans_jobs(plan: str) -> bool:
    """Whether the plan reads the whole `jobs` table."""
    return "SCAN jobs" in plan.replace("SCAN jobs USING", "") or "Seq Scan on jobs" in plan
