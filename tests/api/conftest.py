"""A real HTTP server (uvicorn on loopback, in a thread) around a test app."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from ledgerflow import App
from ledgerflow.api.app import create_api
from ledgerflow.builtin import build_app
from ledgerflow.clock import FixedClock
from ledgerflow.config import load_settings

TOKEN = "s3cret-token-for-tests"  # at least 16 characters, like every API token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    app: App
    url: str
    clock: FixedClock
    client: httpx.Client

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.post(path, **kwargs)


@pytest.fixture
def serve_app(db_url: str, tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start a real HTTP server (uvicorn on loopback) around a fresh app; `settings` override the test's."""
    started: list[tuple[uvicorn.Server, threading.Thread, Service]] = []

    def start(**overrides: Any) -> Service:
        settings = load_settings(
            **{
                "database_url": db_url,
                "api_token": TOKEN,
                "export_destination": f"file://{tmp_path / 'out'}",
                "export_work_dir": str(tmp_path / "work"),
                "log_level": "ERROR",
                "lease_seconds": 2,
                "heartbeat_seconds": 0.5,
                **overrides,
            }
        )
        app = build_app(settings)
        app.sync_schedules()
        clock = FixedClock(datetime.now(UTC))
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_api(app, clock=clock),
                host="127.0.0.1",
                port=port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        service = Service(app, url, clock, client)
        started.append((server, thread, service))
        return service

    yield start
    for server, thread, service in started:
        service.client.close()
        server.should_exit = True
        thread.join(10)
        service.app.close()


@pytest.fixture
def service(serve_app: Callable[..., Service]) -> Service:
    return serve_app()
