"""The books through the real CLI (in-process, settings from the environment) and a real HTTP
server, on SQLite and PostgreSQL, for any export profile."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from ledgerflow.api.app import create_api
from ledgerflow.builtin import build_app
from ledgerflow.clock import system_clock
from ledgerflow.config import load_settings
from ledgerflow.ledger.dates import today_in
from tests.api.conftest import TOKEN, Service, free_port
from tests.conftest import run_cli

D = date(2026, 11, 26)
ZONE = "Asia/Bangkok"


def jpy_entry(ref: str, day: date = D, amount: str = "800", **extra: Any) -> dict[str, Any]:
    """A purchase with its consumption-tax line, in yen (fits every profile)."""
    tax = str(int(amount) * 8 // 100)
    total = str(int(amount) + int(tax))
    return {
        "date": day.isoformat(),
        "reference": ref,
        "description": "会議用お茶代",
        "currency": "JPY",
        "lines": [
            {
                "account": "5400",
                "account_name": "会議費",
                "debit": amount,
                "credit": "0",
                "tax_code": "課税仕入8%",
            },
            {"account": "1190", "account_name": "仮払消費税", "debit": tax, "credit": "0"},
            {"account": "1000", "account_name": "現金", "debit": "0", "credit": total},
        ],
        **extra,
    }


def future_day() -> date:
    """A day that has not begun in the export zone (two days on: safe across midnight)."""
    return today_in(ZONE) + timedelta(days=2)


@pytest.fixture
def env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Set LEDGERFLOW_* variables for the next CLI calls: `env(EXPORT_PROFILE="yayoi")`."""
    base = {
        "DATABASE_URL": db_url,
        "EXPORT_DESTINATION": f"file://{tmp_path / 'out'}",
        "EXPORT_WORK_DIR": str(tmp_path / "work"),
        "TIMEZONE": ZONE,
        "LOG_LEVEL": "ERROR",
    }

    def set_env(**values: str | None) -> None:
        for key, value in values.items():
            if value is None:
                monkeypatch.delenv(f"LEDGERFLOW_{key}", raising=False)
            else:
                monkeypatch.setenv(f"LEDGERFLOW_{key}", value)

    monkeypatch.setenv("COLUMNS", "250")
    set_env(**base)
    return set_env


@pytest.fixture
def cli(env: Callable[..., None], capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """`ledgerflow ARGS` in-process: (exit code, stdout, stderr)."""
    assert run_cli(capsys, "init")[0] == 0
    return lambda *args: run_cli(capsys, *args)


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[[str, Any], Path]:
    def write(name: str, data: Any) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(data, ensure_ascii=False) if not isinstance(data, str) else data)
        return path

    return write


@pytest.fixture
def make_service(db_url: str, tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """A real HTTP server (uvicorn on loopback) around an app with the given settings."""
    started: list[tuple[uvicorn.Server, threading.Thread, Service]] = []

    def make(**overrides: Any) -> Service:
        settings = load_settings(
            **{
                "database_url": db_url,
                "api_token": TOKEN,
                "export_destination": f"file://{tmp_path / 'out'}",
                "export_work_dir": str(tmp_path / "work"),
                "timezone": ZONE,
                "log_level": "ERROR",
                **overrides,
            }
        )
        app = build_app(settings)
        app.migrate()
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_api(app),
                host="127.0.0.1",
                port=port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        service = Service(app, url, system_clock, client)  # type: ignore[arg-type]
        started.append((server, thread, service))
        return service

    yield make
    for server, thread, service in started:
        service.client.close()
        server.should_exit = True
        thread.join(10)
        service.app.close()
