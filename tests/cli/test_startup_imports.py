"""What `ledgerflow worker` imports: a worker's start-up is its imports (docs/benchmarks.md,
"Worker start-up"), so modules only other commands, the server or alert delivery use stay out.

Checked in a fresh interpreter through `sys.modules`, not by timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

#: never needed by a worker (the server extra, cloud destinations, mail and webhook delivery)
NOT_FOR_A_WORKER = (
    "fastapi",
    "starlette",
    "uvicorn",
    "jinja2",
    "prometheus_client",
    "httpx",
    "boto3",
    "googleapiclient",
    "alembic",
    "smtplib",
    "urllib.request",
    "typer.rich_utils",
    "ledgerflow.api",
    "ledgerflow.web",
    "ledgerflow.backup",
)

_REPORT = "import json, sys; print(json.dumps(sorted(sys.modules)))"


def _env(db_url: str) -> dict[str, str]:
    return {**os.environ, "LEDGERFLOW_DATABASE_URL": db_url, "LEDGERFLOW_LOG_LEVEL": "ERROR"}


def _modules(code: str, db_url: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(db_url), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_the_cli_imports_nothing_a_worker_does_not_need(db_url):
    loaded = _modules(f"import ledgerflow.cli.main; {_REPORT}", db_url)
    assert loaded.isdisjoint(NOT_FOR_A_WORKER), sorted(loaded & set(NOT_FOR_A_WORKER))
    assert "psycopg" not in loaded  # the PostgreSQL driver: imported by PostgreSQL paths only


def test_a_worker_running_a_job_imports_nothing_it_does_not_need(db_url, backend):
    env = _env(db_url)
    for args in (
        ["init"],
        ["jobs", "enqueue", "ledgerflow.cleanup", "--args", "[30]", "--queue", "maintenance"],
    ):
        subprocess.run(
            [sys.executable, "-m", "ledgerflow", *args], env=env, cwd=ROOT, check=True, timeout=120
        )
    run = (
        "from ledgerflow.cli.main import run\n"
        "try:\n"
        "    run(['worker', '--burst', '--queues', 'maintenance', '-c', '2'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "from ledgerflow.cli.context import state\n"
        "assert [j.state.value for j in state.app().find_jobs()] == ['completed']\n"
    )
    loaded = _modules(f"{run}{_REPORT}", db_url)
    assert loaded.isdisjoint(NOT_FOR_A_WORKER), sorted(loaded & set(NOT_FOR_A_WORKER))
    assert ("psycopg" in loaded) == (backend == "postgresql")
