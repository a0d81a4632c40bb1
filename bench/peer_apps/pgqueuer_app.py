"""PgQueuer on PostgreSQL, for the peer benchmark, as its performance guide and its own
benchmark tool run it: an asyncpg connection, an async entrypoint, `batch_size` 10.

Run as `python -m bench.peer_apps.pgqueuer_app` (PgQueuer 1.6's `pgqueuer run` crashes on its
log-level option). `PGQ_BATCH_SIZE` and `PGQ_MAX_CONCURRENT_TASKS` (unset: no cap, as in
PgQueuer's benchmark) come from the environment.
"""

from __future__ import annotations

import asyncio
import os

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job

from bench import stamp


async def create() -> PgQueuer:
    conn = await asyncpg.connect(dsn=os.environ["PEER_DSN"])
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        """Records its start (bench/stamp.py), nothing else."""
        stamp.record((job.payload or b"").decode())

    return pgq


async def main() -> None:
    pgq = await create()
    cap = os.environ.get("PGQ_MAX_CONCURRENT_TASKS")
    await pgq.run(
        batch_size=int(os.environ.get("PGQ_BATCH_SIZE", "10")),
        max_concurrent_tasks=int(cap) if cap else None,
    )


if __name__ == "__main__":
    asyncio.run(main())
