"""`ledgerflow serve` as a real process: refuses unsafe or unready starts, stops gracefully."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from tests.api.conftest import free_port
from tests.conftest import FAST, ROOT, run_rows, wait_until


def _serve(db_url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full = {**os.environ, **FAST, "LEDGERFLOW_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "ledgerflow", "serve", *args],
        env=full,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_serve_refuses_a_public_host_without_a_token(db_url):
    proc = _serve(db_url, "--host", "0.0.0.0", "--port", str(free_port()))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert (
        err.strip()
        == "error: refusing to serve on 0.0.0.0 without LEDGERFLOW_API_TOKEN (set it, or pass --insecure)"
    )


def test_serve_refuses_an_unmigrated_database(tmp_path):
    proc = _serve(f"sqlite:///{tmp_path / 'empty.db'}", "--port", str(free_port()))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "schema is not up to date: run `ledgerflow migrate`" in err


def test_sigterm_lets_the_running_job_finish_and_exits_zero(db_url, make_app):
    from tests.apps import basic

    app = make_app()
    (job_id,) = app.enqueue_many([basic.record.prepare(sleep=2.0)])
    port = free_port()
    proc = _serve(db_url, "--port", str(port), "--app", "tests.apps.basic:app", "--queues", "default")
    wait_until(lambda: run_rows(db_url), 30, 0.1, "job started in the service's worker")
    assert httpx.get(f"http://127.0.0.1:{port}/api/health").json()["workers"]
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err[-2000:]
    assert time.monotonic() - started < 30
    assert app.get_job(job_id).state == "completed"
    assert '"service_stopped"' in err and '"worker_draining"' in err
