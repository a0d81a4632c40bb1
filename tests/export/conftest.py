"""Fixtures for export tests: apps with the built-in tasks, entries, destinations."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from ledgerflow import App
from ledgerflow.builtin import build_app
from ledgerflow.config import load_settings
from ledgerflow.db.tables import export_logs, export_queue
from tests import forkserver
from tests.conftest import ROOT
from tests.fakes.drive import FakeDrive

D = date(2026, 11, 26)


def entry(
    ref: str, day: date = D, amount: str = "107.00", path: str = "scheduled", **extra: Any
) -> dict[str, Any]:
    return {
        "date": day.isoformat(),
        "reference": ref,
        "description": f"ค่าเครื่องเขียน {ref}",
        "currency": "THB",
        "export_path": path,
        "lines": [
            {
                "account": "5100",
                "account_name": "Office supplies",
                "debit": amount,
                "credit": "0",
                "tax_code": "VAT7",
            },
            {"account": "1000", "account_name": "Cash", "debit": "0", "credit": amount},
        ],
        **extra,
    }


@pytest.fixture
def export_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    """Settings (as environment variables) shared by in-process apps and CLI subprocesses."""
    return {
        "LEDGERFLOW_DATABASE_URL": db_url,
        "LEDGERFLOW_EXPORT_DESTINATION": f"file://{tmp_path / 'out'}",
        "LEDGERFLOW_EXPORT_WORK_DIR": str(tmp_path / "work"),
        "LEDGERFLOW_EXPORT_LOCK_SECONDS": "3",
        "LEDGERFLOW_LOG_LEVEL": "WARNING",
        "LEDGERFLOW_LEASE_SECONDS": "2",
        "LEDGERFLOW_HEARTBEAT_SECONDS": "0.5",
        "LEDGERFLOW_DESTINATION_TIMEOUT": "2",
    }


@pytest.fixture
def make_export_app(export_env: dict[str, str]) -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def make(**overrides: Any) -> App:
        values = {k.removeprefix("LEDGERFLOW_").lower(): v for k, v in export_env.items()}
        values.update(overrides)
        app = build_app(load_settings(**values))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def run_cli(export_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`ledgerflow ARGS` as a real process (forked from the fork server, tests/forkserver.py)."""
        full = {**os.environ, **export_env, "PYTHONPATH": str(ROOT), **(env or {})}
        return forkserver.run("ledgerflow", list(args), env=full, timeout=timeout)

    return run


@pytest.fixture
def fake_drive() -> Iterator[FakeDrive]:
    drive = FakeDrive().start()
    yield drive
    drive.stop()


def csv_generated_rows(app: App) -> int:
    with app.db.read() as conn:
        return int(
            conn.execute(select(func.count()).where(export_logs.c.action == "csv_generated")).scalar_one()
        )


def queue_states(app: App) -> dict[str, int]:
    with app.db.read() as conn:
        return {
            r[0]: int(r[1])
            for r in conn.execute(select(export_queue.c.status, func.count()).group_by(export_queue.c.status))
        }


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any, str]]:
    """moto's S3 server on a loopback port, with a fresh bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    bucket = f"books-{uuid.uuid4().hex[:8]}"  # moto keeps state across servers in one process
    client.create_bucket(Bucket=bucket)
    yield endpoint, client, bucket
    server.stop()
