"""The first jobs in claim order (priority, scheduled_at, id) over several queues, read without
sorting the backlog.

Neither backend can read ix_jobs_claim (queue, priority, scheduled_at, id) in claim order for
`queue IN (…)` of several queues: each claim sorted every waiting job of those queues
(PostgreSQL a bitmap scan then a sort, SQLite a temporary B-tree). Instead each queue is read
on its own, in the index's order and limited; the first `limit` jobs over the queues are among
the first `limit` of each, so the reads are merged by UNION ALL and only those are sorted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, select, union_all

from ledgerflow.db.database import Database
from ledgerflow.db.tables import CLAIM_INDEX, CLAIMABLE_SQL, jobs

#: The claim order, and the columns that carry it.
ORDER = (jobs.c.priority, jobs.c.scheduled_at, jobs.c.id)


def first_in_claim_order(
    db: Database,
    walks: Sequence[ColumnElement[bool]],
    limit: Any,
    columns: Sequence[Any],
) -> Select[Any]:
    """The `columns` of the first `limit` claimable jobs matching any of `walks` (each bounding
    `queue` to one value), in claim order, skipping locked rows (PostgreSQL).

    Each walk reads its queue through ix_jobs_claim in order and locks (PostgreSQL) up to `limit`
    rows: with n walks the statement may lock up to (n - 1) x `limit` rows it does not return,
    until the transaction ends; other claims skip those meanwhile, as they skip any locked row.
    """
    arms: list[Select[Any]] = []
    for i, where in enumerate(walks):
        arm = (
            select(*columns, *(c for c in ORDER if not any(c is given for given in columns)))
            .where(CLAIMABLE_SQL, where)
            .order_by(*ORDER)
            .limit(limit)
            .with_hint(jobs, CLAIM_INDEX, "sqlite")
        )
        if len(walks) == 1:
            return db.backend.skip_locked(arm)
        # each walk in its own sub-select: PostgreSQL refuses FOR UPDATE on a UNION's inputs
        arms.append(select(db.backend.skip_locked(arm).subquery(f"queue_{i}")))
    merged = union_all(*arms).subquery("merged")
    return (
        select(*(merged.c[c.name] for c in columns)).order_by(*(merged.c[c.name] for c in ORDER)).limit(limit)
    )
