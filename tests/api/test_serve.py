"""`ledgerflow serve` as a real process: its token, refusals of unsafe or unready starts, graceful stop."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import free_port
from tests.conftest import FAST, ROOT, run_rows, wait_until


class Served:
    """A `ledgerflow serve` process whose output goes to files (read them while it runs)."""

    def __init__(self, db_url: str, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out, self.err = cwd / f"serve-{self.port}.out", cwd / f"serve-{self.port}.err"
        full = {**os.environ, **FAST, "LEDGERFLOW_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
        full.pop("LEDGERFLOW_API_TOKEN", None)
        full.update(env or {})
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ledgerflow", "serve", "--port", str(self.port), *args],
                env=full,
                cwd=cwd,
                text=True,
                stdout=out,
                stderr=err,
            )

    def ready(self) -> None:
        """Wait until the server answers (not for any side effect of starting)."""

        def answers() -> bool:
            assert self.proc.poll() is None, self.err.read_text()[-2000:]
            try:
                return httpx.get(f"{self.url}/api/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, 120, 0.1, "the server to answer /api/health")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def served(db_url, tmp_path):
    started: list[Served] = []

    def start(*args: str, env: dict[str, str] | None = None, url: str | None = None) -> Served:
        s = Served(url or db_url, tmp_path, *args, env=env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


@pytest.mark.parametrize(("value", "problem"), [("", "is empty"), ("short-token", "is 11 characters long")])
def test_serve_refuses_an_empty_or_short_token(served, value, problem):
    s = served("--host", "0.0.0.0", env={"LEDGERFLOW_API_TOKEN": value})
    assert s.proc.wait(60) == 2
    assert s.err.read_text().strip() == f"error: LEDGERFLOW_API_TOKEN: {problem}" + (
        " (use at least 16 characters, or unset it)" if value == "" else "; use at least 16"
    )


def test_first_start_makes_a_private_token_and_later_starts_reuse_it(served, tmp_path, backend):
    first = served("--host", "0.0.0.0")
    first.ready()
    out = first.out.read_text()
    line = next(x for x in out.splitlines() if x.startswith("sign in at"))
    assert f"http://127.0.0.1:{first.port}/login" in line and line.endswith("(made now)")
    path = Path(line.split(" with the API token in ")[1].removesuffix(" (made now)"))
    expected = (tmp_path / "ledgerflow.db.token") if backend == "sqlite" else (tmp_path / "ledgerflow.token")
    assert path == expected.resolve()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert len(token) >= 40
    assert "/api/health and /metrics are public on 0.0.0.0" in out
    assert httpx.get(f"{first.url}/api/jobs").status_code == 401, "no unauthenticated mode"
    bearer = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{first.url}/api/jobs", headers=bearer).status_code == 200
    assert first.stop() == 0

    second = served()
    second.ready()
    assert path.read_text().strip() == token
    assert f"with the API token in {path} (kept)" in second.out.read_text()
    assert httpx.get(f"{second.url}/api/jobs", headers=bearer).status_code == 200
    assert second.stop() == 0


def test_a_token_file_others_can_read_is_refused(served, tmp_path):
    path = tmp_path / "api.token"
    path.write_text("x" * 32 + "\n")
    path.chmod(0o644)
    s = served(env={"LEDGERFLOW_API_TOKEN_FILE": str(path)})
    assert s.proc.wait(60) == 2
    assert s.err.read_text().strip() == (
        f"error: {path}: the API token file is readable by others (mode 0644); run: chmod 600 {path}"
    )


def test_serve_refuses_an_unmigrated_database(served, tmp_path):
    s = served(url=f"sqlite:///{tmp_path / 'empty.db'}")
    assert s.proc.wait(60) == 2
    assert "schema is not up to date: run `ledgerflow migrate`" in s.err.read_text()


def test_sigterm_lets_the_running_job_finish_and_exits_zero(served, db_url, make_app):
    from tests.apps import basic

    app = make_app()
    s = served("--app", "tests.apps.basic:app", "--queues", "default")
    s.ready()
    wait_until(lambda: httpx.get(f"{s.url}/api/health").json()["workers"], 60, 0.1, "the worker's heartbeat")
    (job_id,) = app.enqueue_many([basic.record.prepare(sleep=3.0)])
    wait_until(lambda: run_rows(db_url), 60, 0.05, "job started in the service's worker")
    started = time.monotonic()
    assert s.stop() == 0, s.err.read_text()[-2000:]
    assert time.monotonic() - started < 30
    err = s.err.read_text()
    assert app.get_job(job_id).state == "completed"
    assert '"service_stopped"' in err and '"worker_draining"' in err


def test_serve_without_a_worker_still_runs_the_alert_checks(served, make_app):
    """An API-only process is where the connection pool runs out: it checks itself."""
    app = make_app()
    from tests.apps import basic

    app.enqueue_many([basic.record.prepare() for _ in range(4)])
    s = served(
        "--app",
        "tests.apps.basic:app",
        "--no-worker",
        env={"LEDGERFLOW_ALERT_QUEUE_DEPTHS": '{"default": 3}', "LEDGERFLOW_ALERT_CHECK_SECONDS": "0.2"},
    )
    s.ready()
    wait_until(lambda: app.alerts.is_open("queue_overflow:default"), 60, 0.1, "the queue alert")
    assert s.stop() == 0, s.err.read_text()[-2000:]
