"""The app of partition tests (`--app tests.apps.partition:app`), run behind tests/netproxy.py.

Its tasks record their runs through `LEDGERFLOW_TEST_RUNS_URL`, a direct connection that the
partition does not cut: like a side effect at some other service, a run happens (and is
counted) even while the worker cannot reach its queue. Statements are sent as text every time
(psycopg otherwise prepares a statement after five runs and sends only its name), so the proxy
can recognise the one to cut after. `LEDGERFLOW_TEST_HOSTNAME` gives the worker a host name of
its own: a partition separates hosts, and the rescue treats a worker on its own host differently.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from sqlalchemy import event, insert

from ledgerflow import App, current_job
from ledgerflow.db.database import Database
from tests.runs import runs

if hostname := os.environ.get("LEDGERFLOW_TEST_HOSTNAME"):
    socket.gethostname = lambda: hostname  # before the worker names itself

app = App()
_runs_db = Database(os.environ.get("LEDGERFLOW_TEST_RUNS_URL") or app.settings.database_url)


@event.listens_for(app.db.engine, "connect")
def _statements_as_text(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.prepare_threshold = None


@app.task(name="record", retry_backoff=0.2)
def record(sleep: float = 0.0, label: str | None = None) -> None:
    """Record the run (start and end) around an optional sleep."""
    job = current_job()
    assert job is not None
    for phase in ("start", "end"):
        with _runs_db.begin() as conn:
            conn.execute(
                insert(runs).values(
                    job_id=job.job_id, attempt=job.attempt, pid=os.getpid(), label=label, phase=phase
                )
            )
        if phase == "start" and sleep:
            time.sleep(sleep)
