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
