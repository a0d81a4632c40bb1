"""Fixtures for the receipt chain: a real Dovecot on loopback, Tesseract and the fonts receipts use."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledgerflow.builtin import build_app
from ledgerflow.config import load_settings
from tests.conftest import ON_CI
from tests.fakes import receipts as samples
from tests.fakes.dovecot import Dovecot, dovecot_binary


def _need(ok: bool, what: str) -> None:
    if not ok:
        if ON_CI:
            pytest.fail(f"{what} (.ci/run installs it)")
        pytest.skip(what)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    _need(dovecot_binary() is not None, "Dovecot is not installed (apt-get install dovecot-imapd)")
    # not under pytest's 0700 temp root: Dovecot's auth and mail processes run as other users
    root = Path(tempfile.mkdtemp(prefix="lf-dovecot-"))
    root.chmod(0o755)
    server = Dovecot(root)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def ocr_ready() -> None:
    from ledgerflow.receipts.extract import ocr_languages

    _need(
        ocr_languages() == ["jpn", "tha", "eng"],
        "Tesseract with Japanese and Thai "
        "(apt-get install tesseract-ocr tesseract-ocr-jpn tesseract-ocr-tha)",
    )
    fonts = all(Path(f).exists() for f in (samples.JP_FONT, samples.TH_FONT))
    _need(fonts, f"fonts to draw test receipts (apt-get install {samples.FONT_PACKAGES})")
    _need(shutil.which("tesseract") is not None, "tesseract")


@pytest.fixture
def mailbox(dovecot):
    user, password = dovecot.add_user()
    return dovecot, user, password


def mail_app(db_url, tmp_path, mailbox, **settings):
    """The built-in app reading `mailbox` (a Dovecot user), files kept under `tmp_path`."""
    dovecot, user, password = mailbox
    return build_app(
        load_settings(
            database_url=db_url,
            imap_host="127.0.0.1",
            imap_port=dovecot.port,
            imap_ssl=False,
            imap_user=user,
            imap_password=password,
            receipts_dir=str(tmp_path / "store"),
            log_level="WARNING",
            **settings,
        )
    )


@pytest.fixture
def receipt_app(db_url, tmp_path, mailbox):
    app = mail_app(
        db_url,
        tmp_path,
        mailbox,
        export_destination=f"file://{tmp_path / 'out'}",
        export_work_dir=str(tmp_path / "work"),
        receipt_rules={"コーヒー": "5210:Meeting expenses"},
    )
    yield app
    app.close()


def run_task(app, task: str, *args) -> dict:
    job = app.enqueue(app.registry.get(task).prepare(*args))
    app.run_worker(["receipts", "reports"], concurrency=4, burst=True)
    done = app.store.get(job.id)
    assert done.state == "completed", done.errors
    return done.result


def cli_env(app) -> dict[str, str]:
    """The environment that makes a `ledgerflow` subprocess use `app`'s database, mailbox and files."""
    import json
    import os

    from tests.conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT), "LEDGERFLOW_LOG_LEVEL": "ERROR"}
    for key, value in app.settings.model_dump().items():
        if value is not None and key.startswith(("imap", "receipt", "database_url", "export")):
            raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
            env[f"LEDGERFLOW_{key.upper()}"] = json.dumps(raw) if isinstance(raw, dict | list) else str(raw)
    return env


def api_client(app):
    """The HTTP API of `app`, signed in, as a local client (an allowed Host)."""
    from fastapi.testclient import TestClient

    from ledgerflow.api.app import create_api

    token = "receipts-test-token-0123"
    return TestClient(
        create_api(app, token=token),
        base_url="http://localhost",
        headers={"Authorization": f"Bearer {token}"},
    )


# the export's S3 (moto) and Google Drive (fake server) fixtures, for filing receipts there
from tests.export.conftest import fake_drive, moto_s3  # noqa: E402, F401
