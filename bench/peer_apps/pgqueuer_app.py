"""PgQueuer on PostgreSQL, for the peer benchmark (`pgqueuer run bench.peer_apps.pgqueuer_app:create`)."""

from __future__ import annotations

import os

import psycopg
from pgqueuer import PgQueuer, PsycopgDriver
from pgqueuer.models import Job


async def create() -> PgQueuer:
    conn = await psycopg.AsyncConnection.connect(os.environ["PEER_DSN"], autocommit=True)
    pgq = PgQueuer(PsycopgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        """Does nothing."""

    return pgq


async def main() -> None:
    """One worker process: 4 concurrent tasks, batches of 2 (PgQueuer 1.6's CLI fails to start:
    its log-level option crashes, so the benchmark runs the same loop itself)."""
    pgq = await create()
    await pgq.run(max_concurrent_tasks=4, batch_size=2)  # it requires tasks >= 2 x batch


if __name__ == "__main__":
    import asyncio

    asyncio.run(main())
