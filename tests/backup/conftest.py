"""Fixtures for backup tests: apps with the built-in tasks, the real CLI in and out of process."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from ledgerflow import App
from ledgerflow.builtin import build_app
from ledgerflow.config import load_settings
from tests import forkserver
from tests.conftest import ROOT, _admin, pg_url, run_cli

# the export's S3 (moto) and Google Drive (fake server) fixtures, for backups off the machine
from tests.export.conftest import entry, fake_drive, moto_s3  # noqa: F401


@pytest.fixture
def backup_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    """Settings (as environment variables) shared by in-process apps and CLI runs."""
    return {
        "LEDGERFLOW_DATABASE_URL": db_url,
        "LEDGERFLOW_BACKUP_DIR": str(tmp_path / "backups"),
        "LEDGERFLOW_EXPORT_DESTINATION": f"file://{tmp_path / 'out'}",
        "LEDGERFLOW_EXPORT_WORK_DIR": str(tmp_path / "work"),
        "LEDGERFLOW_RECEIPTS_DIR": str(tmp_path / "receipts"),
        "LEDGERFLOW_LOG_LEVEL": "ERROR",
    }


@pytest.fixture
def other_db_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[str]:
    """A second, separate ledgerflow database on the same backend."""
    if backend == "sqlite":
        path = tmp_path / "other.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    name = f"lf_other_{uuid.uuid4().hex[:10]}"
    _admin(f"CREATE DATABASE {name} TEMPLATE {request.getfixturevalue('pg_template')}")
    yield pg_url(name)
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def books_app(backup_env: dict[str, str]) -> Iterator[Callable[..., App]]:
    """`books_app(**overrides)`: the built-in app on the test database."""
    apps: list[App] = []

    def make(**overrides: Any) -> App:
        values = {k.removeprefix("LEDGERFLOW_").lower(): v for k, v in backup_env.items()}
        values.update(overrides)
        app = build_app(load_settings(**values))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def cli(
    backup_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """`ledgerflow ARGS` in-process: (exit code, stdout, stderr)."""
    for key, value in backup_env.items():
        monkeypatch.setenv(key, value)

    def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        return run_cli(capsys, *args)

    return run


@pytest.fixture
def cli_process(backup_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`ledgerflow ARGS` as a real process (for SIGKILL at a crash point), forked from the fork
    server (tests/forkserver.py)."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full = {**os.environ, **backup_env, "PYTHONPATH": str(ROOT), **(env or {})}
        return forkserver.run("ledgerflow", list(args), env=full, timeout=600)

    return run


def count(app: App, table: Any, *where: Any) -> int:
    with app.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def delivered_references(folder: Path) -> Counter[str]:
    """How many delivered CSV files (generic profile) each entry reference appears in."""
    seen: Counter[str] = Counter()
    for path in sorted(folder.glob("*.csv")):
        with path.open(encoding="utf-8-sig", newline="") as fh:
            seen.update({row["entry_reference"] for row in csv.DictReader(fh)})
    return seen
