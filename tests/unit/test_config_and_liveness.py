"""Settings (env and ledgerflow.toml) and the same-host liveness check, pure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ledgerflow import ConfigError
from ledgerflow.config import load_settings
from ledgerflow.engine.liveness import HOSTNAME, local_owner_running, owner_of, process_running


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LEDGERFLOW_DATABASE_URL", "mysql://x", "LEDGERFLOW_DATABASE_URL: unsupported database URL"),
        ("LEDGERFLOW_DATABASE_URL", "sqlite:/relative", "malformed SQLite URL"),
        (
            "LEDGERFLOW_EXPORT_DESTINATION",
            "ftp://host/x",
            "LEDGERFLOW_EXPORT_DESTINATION: malformed destination",
        ),
        ("LEDGERFLOW_EXPORT_PROFILE", "sage", "LEDGERFLOW_EXPORT_PROFILE: unknown profile 'sage'"),
        ("LEDGERFLOW_ALERT_WEBHOOK_URL", "not a url", "LEDGERFLOW_ALERT_WEBHOOK_URL: malformed URL"),
        ("LEDGERFLOW_LEASE_SECONDS", "0", "LEDGERFLOW_LEASE_SECONDS"),
        ("LEDGERFLOW_SQLITE_SYNCHRONOUS", "OFF", "LEDGERFLOW_SQLITE_SYNCHRONOUS"),
    ],
)
def test_a_bad_setting_is_one_error_naming_the_variable(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_toml_file_is_read_and_the_environment_wins(tmp_path, monkeypatch):
    (tmp_path / "ledgerflow.toml").write_text('timezone = "Asia/Tokyo"\nexport_profile = "yayoi"\n')
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.timezone == "Asia/Tokyo" and settings.export_profile == "yayoi"
    monkeypatch.setenv("LEDGERFLOW_TIMEZONE", "Asia/Bangkok")
    assert load_settings().timezone == "Asia/Bangkok"
    assert load_settings(database_url="postgresql://u@h/db").database_url == "postgresql+psycopg://u@h/db"
    (tmp_path / "ledgerflow.toml").write_text("timezone = \n")
    with pytest.raises(ConfigError, match=r"ledgerflow\.toml"):
        load_settings()


def test_worker_ids_name_their_host_and_process():
    assert owner_of("vm:1234:abcdef") == ("vm", 1234)
    assert owner_of("host:with:colons:99:abc") == ("host:with:colons", 99)
    assert owner_of(None) is None and owner_of("garbage") is None


def test_a_stopped_or_finished_process_is_not_running_but_a_live_one_is():
    assert process_running(os.getpid())
    assert local_owner_running(f"{HOSTNAME}:{os.getpid()}:x")
    assert not local_owner_running(f"another-host:{os.getpid()}:x")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        assert process_running(child.pid)
        child.send_signal(signal.SIGSTOP)
        time.sleep(0.2)
        assert not process_running(child.pid), "a frozen worker counts as gone"
        child.send_signal(signal.SIGCONT)
    finally:
        child.kill()
        child.wait()
    assert not process_running(child.pid)
