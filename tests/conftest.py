"""Shared fixtures: a fresh, migrated database per test on SQLite *and* PostgreSQL.

PostgreSQL tests are skipped with a clear reason when no server answers on a laptop;
with CI=true a missing server is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, func, select

from ledgerflow import App
from ledgerflow.db.database import Database
from ledgerflow.db.migrate import migrate
from tests import durations, forkserver
from tests.runs import runs, test_metadata

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("LEDGERFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
ON_CI = os.environ.get("CI", "").lower() == "true"
ARTIFACTS = ROOT / "artifacts"

#: Fast lease settings so crash/rescue tests take seconds, not minutes.
FAST = {
    "LEDGERFLOW_LEASE_SECONDS": "2",
    "LEDGERFLOW_HEARTBEAT_SECONDS": "0.5",
    "LEDGERFLOW_RESCUE_INTERVAL": "0.25",
    "LEDGERFLOW_GRACE_SECONDS": "10",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest test files first (tests/durations.py), each file's tests together and in order:
    `make test` hands out whole files in this order."""
    seconds = durations.load()
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        first.setdefault(item.nodeid.split("::")[0], index)

    def key(item: pytest.Item) -> tuple[float, int]:
        path = item.nodeid.split("::")[0]
        return -seconds.get(path, durations.UNKNOWN), first[path]

    items.sort(key=key)


@pytest.fixture(scope="session", autouse=True)
def _stop_fork_server() -> Iterator[None]:
    """Stop the fork server at the end of the session, before coverage combines what each
    process measured (the server's own data is written as it exits)."""
    yield
    forkserver.stop_shared()


def _pg_error() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]


def _admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def pg_url(name: str) -> str:
    base = PG_ADMIN.rsplit("/", 1)[0]
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    problem = _pg_error()
    if problem:
        message = f"PostgreSQL not reachable at {PG_ADMIN}: {problem}"
        if ON_CI:
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(message)
    name = f"lf_tpl_{uuid.uuid4().hex[:8]}"
    _admin(f"CREATE DATABASE {name}")
    db = Database(pg_url(name))
    migrate(db)
    test_metadata.create_all(db.engine)
    db.dispose()
    yield name
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class PgDatabases:
    """Fresh databases from the template, made ahead while tests run and dropped behind them on
    background threads: a test waits for neither (together about 1 s of a PostgreSQL test on a
    busy machine). Every test still gets a database no other test used."""

    AHEAD = 2

    def __init__(self, template: str) -> None:
        self._template = template
        self._threads = ThreadPoolExecutor(2, thread_name_prefix="pg-databases")
        self._drops: list[Future[None]] = []
        self._ahead = deque(self._threads.submit(self._create) for _ in range(self.AHEAD))

    def _create(self) -> str:
        name = f"lf_t_{uuid.uuid4().hex[:10]}"
        _admin(f"CREATE DATABASE {name} TEMPLATE {self._template}")
        return name

    def take(self) -> str:
        """A new database's name (the next one is started at once)."""
        self._ahead.append(self._threads.submit(self._create))
        return self._ahead.popleft().result()

    def drop(self, name: str) -> None:
        self._drops.append(self._threads.submit(_admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))

    def close(self) -> None:
        """Drop the spares (or cancel them, not yet begun), wait for every drop; a failed one
        fails here."""
        for spare in self._ahead:
            if not spare.cancel():
                self.drop(spare.result())
        self._threads.shutdown(wait=True)
        for done in self._drops:
            done.result()


@pytest.fixture(scope="session")
def pg_databases(pg_template: str) -> Iterator[PgDatabases]:
    databases = PgDatabases(pg_template)
    yield databases
    databases.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    db = Database(f"sqlite:///{path}")
    migrate(db)
    test_metadata.create_all(db.engine)
    db.dispose()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh migrated database for one test (a copied file, or a database from a template)."""
    if request.param == "sqlite":
        path = tmp_path / "ledgerflow.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    databases: PgDatabases = request.getfixturevalue("pg_databases")
    name = databases.take()
    yield pg_url(name)
    databases.drop(name)


@pytest.fixture
def backend(db_url: str) -> str:
    return "sqlite" if db_url.startswith("sqlite") else "postgresql"


@pytest.fixture
def make_app(db_url: str) -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def make(**overrides: Any) -> App:
        settings = {k.removeprefix("LEDGERFLOW_").lower(): v for k, v in FAST.items()}
        settings.update(log_level="WARNING")
        settings.update(overrides)
        app = App(database_url=db_url, **settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def completed_job_row(now: datetime) -> dict[str, Any]:
    """The columns of a completed job with no arguments, to insert as a row of `jobs` directly
    (a database at an older revision, before the application can write it)."""
    return {
        "task": "t",
        "queue": "default",
        "priority": 0,
        "state": "completed",
        "args": [],
        "kwargs": {},
        "max_attempts": 3,
        "timeout": 60.0,
        "scheduled_at": now,
        "created_at": now,
        "errors": [],
    }


def count_runs(db_url: str, **where: Any) -> dict[int, int]:
    """job_id → number of runs that started."""
    engine = create_engine(Database(db_url).url)
    with engine.connect() as conn:
        query = select(runs.c.job_id, func.count()).where(runs.c.phase == "start").group_by(runs.c.job_id)
        for key, value in where.items():
            query = query.where(runs.c[key] == value)
        result = {int(r[0]): int(r[1]) for r in conn.execute(query)}
    engine.dispose()
    return result


def run_rows(db_url: str) -> list[dict[str, Any]]:
    engine = create_engine(Database(db_url).url)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(runs).order_by(runs.c.id))]
    engine.dispose()
    return rows


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, message: str = "") -> Any:
    """Poll `predicate` until truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


def race_workers(
    db_url: str, app: App, procs: list[WorkerProcess], enqueue: Callable[[], list[int]], done: dict[Any, int]
) -> list[int]:
    """Once every worker process has started, `enqueue` the jobs; wait until the job counts are
    `done`, stop the workers with SIGTERM (each exits 0) and assert every job ran exactly once."""
    for p in procs:
        wait_until(lambda p=p: "worker_started" in p.log(), 60, 0.05, f"worker {p.pid} started")
    ids = enqueue()
    wait_until(lambda: app.store.counts() == done, 240, 0.1, "all done")
    for p in procs:
        p.signal(signal.SIGTERM)
    for p in procs:
        assert p.wait(30) == 0, p.log()[-3000:]
    runs = count_runs(db_url)
    assert set(runs) == set(ids)
    assert set(runs.values()) == {1}, "some job ran twice"
    return ids


class WorkerProcess:
    """A real `ledgerflow worker` process for crash, signal and concurrency tests, forked from
    this test process's fork server (tests/forkserver.py): its own pid, signals and exit code,
    without a second import of ledgerflow."""

    def __init__(
        self,
        db_url: str,
        log_dir: Path,
        *,
        app: str = "tests.apps.basic:app",
        concurrency: int = 4,
        queues: str | None = None,
        burst: bool = False,
        env: dict[str, str] | None = None,
        name: str = "worker",
    ) -> None:
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        args = ["worker", "--app", app, "--concurrency", str(concurrency)]
        if queues:
            args += ["--queues", queues]
        if burst:
            args.append("--burst")
        full_env = {
            **os.environ,
            **FAST,
            "LEDGERFLOW_DATABASE_URL": db_url,
            "LEDGERFLOW_LOG_JSON": "true",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        full_env.update(env or {})
        self.proc = forkserver.shared().spawn("ledgerflow", args, env=full_env, stdout=self.log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def workers(tmp_path: Path, db_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(**kwargs: Any) -> WorkerProcess:
        w = WorkerProcess(kwargs.pop("db_url", db_url), tmp_path, **kwargs)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`ledgerflow ARGS` in-process with a fresh app from the environment: (exit code, stdout, stderr)."""
    from ledgerflow.cli import context
    from ledgerflow.cli.context import state
    from ledgerflow.cli.main import run

    state._app, state.app_ref, state.database_url, state.debug = None, None, None, False
    # a fresh console as a fresh process has: its width comes from this test's COLUMNS, not
    # from whichever earlier test in this xdist process printed first
    context.console._console = context.err_console._console = None
    try:
        with pytest.raises(SystemExit) as exit_info:
            run(list(args))
    finally:
        if state._app is not None:
            state._app.close()
            state._app = None
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err
