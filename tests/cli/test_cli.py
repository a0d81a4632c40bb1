"""The command line, in-process: exit codes 0/1/2, one-line errors, --json everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli


@pytest.fixture
def cli(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    monkeypatch.setenv("LEDGERFLOW_DATABASE_URL", db_url)
    monkeypatch.setenv("LEDGERFLOW_EXPORT_DESTINATION", f"file://{tmp_path / 'out'}")
    monkeypatch.setenv("LEDGERFLOW_EXPORT_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("LEDGERFLOW_LOG_LEVEL", "ERROR")
    monkeypatch.setenv("COLUMNS", "200")

    return lambda *args: run_cli(capsys, *args)


def test_jobs_lifecycle_through_the_cli(cli):
    assert cli("init")[0] == 0
    code, out, _ = cli("jobs", "enqueue", "ledgerflow.cleanup", "--args", "[30]", "--priority", "2", "--json")
    job = json.loads(out)
    assert code == 0 and job["priority"] == 2 and job["args"] == [30]
    code, out, _ = cli("jobs", "list", "--state", "available", "--json")
    assert [j["id"] for j in json.loads(out)] == [job["id"]]
    assert "ledgerflow.cleanup" in cli("jobs", "list")[1]
    assert cli("jobs", "cancel", str(job["id"]))[0] == 0
    code, out, _ = cli("jobs", "show", str(job["id"]), "--json")
    assert json.loads(out)["state"] == "cancelled"
    assert cli("jobs", "retry", str(job["id"]), "--json")[0] == 0
    assert "state" in cli("jobs", "show", str(job["id"]))[1]
    assert cli("worker", "--burst", "--queues", "maintenance", "-c", "2")[0] == 0
    code, out, _ = cli("jobs", "show", str(job["id"]), "--json")
    assert (
        json.loads(out)["state"] == "completed" and json.loads(out)["executions"][0]["status"] == "completed"
    )
    code, out, _ = cli("prune", "--days", "1", "--json")
    assert code == 0 and json.loads(out) == {
        "executions": 0,
        "jobs": 0,
        "schedule_fires": 0,
        "alerts": 0,
        "workers": 0,
        "export_work_folders": 0,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("jobs", "enqueue", "nope"), "error: unknown task 'nope'"),
        (("jobs", "enqueue", "ledgerflow.cleanup", "--args", "[1"), "--args is not valid JSON"),
        (("jobs", "enqueue", "ledgerflow.cleanup", "--kwargs", "[]"), "--kwargs must be a JSON object"),
        (("jobs", "enqueue", "ledgerflow.cleanup", "--priority", "12"), "priority must be 0..9"),
        (("jobs", "show", "424242"), "unknown job id 424242"),
        (("worker", "-c", "0"), "--concurrency must be >= 1"),
        (("prune", "--days", "0"), "--days must be >= 1"),
        (("schedules", "next", "missing"), "unknown schedule 'missing'"),
        (("export", "run", "--date", "2026-02-30"), "--date '2026-02-30' is not a date"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_it(cli, args, message):
    code, _, err = cli(*args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_configuration_exits_2_naming_the_variable(cli, monkeypatch):
    monkeypatch.setenv("LEDGERFLOW_TIMEZONE", "Mars/Base")
    code, _, err = cli("jobs", "list")
    assert code == 2 and err.strip() == "error: LEDGERFLOW_TIMEZONE: unknown time zone 'Mars/Base'"
    monkeypatch.setenv("LEDGERFLOW_TIMEZONE", "Asia/Bangkok")
    monkeypatch.setenv("LEDGERFLOW_DAILY_EXPORT_CRON", "0 25 * * *")
    code, _, err = cli("jobs", "list")
    assert code == 2 and "LEDGERFLOW_DAILY_EXPORT_CRON: invalid cron expression '0 25 * * *'" in err


def test_dead_letter_queue_and_queue_controls(cli):
    from ledgerflow.cli.context import state as st

    cli("init")
    app = st.app()

    @app.task(name="always_fails", max_attempts=1)
    def always_fails() -> None:
        raise RuntimeError("boom")

    job = always_fails.enqueue()
    app.run_worker(burst=True)
    app.close()
    st._app = None
    code, out, _ = cli("dlq", "list", "--json")
    assert [j["id"] for j in json.loads(out)] == [job.id]
    assert cli("dlq", "list")[0] == 0
    assert cli("dlq", "retry")[0] == 2
    code, out, _ = cli("dlq", "retry", "--all", "--json")
    assert json.loads(out) == {"retried": 1, "refused": []}
    assert cli("dlq", "retry", str(job.id))[0] == 2  # no longer dead
    _, out, _ = cli("dlq", "purge", "--yes", "--json")
    assert json.loads(out) == {"purged": 0}
    assert "paused" in cli("queues", "pause", "default")[1]
    assert "already" in cli("queues", "pause", "default")[1]
    _, out, _ = cli("queues", "list", "--json")
    assert {q["queue"]: q["paused"] for q in json.loads(out)}["default"] is True
    assert "resumed" in cli("queues", "resume", "default")[1]
    assert "paused" in cli("tasks", "pause", "ledgerflow.cleanup", "--reason", "maintenance window")[1]
    _code, out, _ = cli("tasks", "list", "--json")
    row = next(t for t in json.loads(out) if t["task"] == "ledgerflow.cleanup")
    assert row["paused"] and row["reason"] == "maintenance window"
    assert cli("tasks", "list")[0] == 0 and cli("queues", "list")[0] == 0
    assert "resumed" in cli("tasks", "resume", "ledgerflow.cleanup")[1]
    assert "was not paused" in cli("tasks", "resume", "ledgerflow.cleanup")[1]


def test_entries_and_export_through_the_cli(cli, tmp_path):
    entries = tmp_path / "entries.json"
    entries.write_text(
        json.dumps(
            [
                {
                    "date": "2026-11-26",
                    "reference": "CLI-1",
                    "description": "ค่ากาแฟ",
                    "currency": "THB",
                    "lines": [
                        {"account": "5100", "debit": "50.00", "credit": "0"},
                        {"account": "1000", "debit": "0", "credit": "50.00"},
                    ],
                }
            ]
        )
    )
    cli("init")
    code, out, _ = cli("entries", "import", str(entries), "--json")
    assert code == 0 and json.loads(out) == {"imported": 1, "references": ["CLI-1"]}
    assert cli("entries", "import", str(entries))[0] == 2  # duplicate reference
    assert "CLI-1" in cli("entries", "list")[1]
    code, out, _ = cli("entries", "show", "CLI-1", "--json")
    assert json.loads(out)["lines"][0]["debit"] == "50.00" and json.loads(out)["export"]["status"] == "queued"
    assert "ค่ากาแฟ" in cli("entries", "show", "CLI-1")[1]
    code, out, _ = cli("export", "run", "--date", "2026-11-26")
    assert code == 0 and "1 entries" in out
    assert "already delivered" in cli("export", "run", "--date", "2026-11-26")[1]
    code, out, _ = cli("export", "status", "--json")
    assert json.loads(out)[0]["state"] == "completed"
    assert "daily:2026-11-26" in cli("export", "status")[1]
    code, out, _ = cli("export", "verify")
    assert code == 0 and "intact" in out
    code, out, _ = cli("entries", "reverse", "CLI-1", "--date", "2026-11-27", "--json")
    assert json.loads(out)["reference"] == "REV-CLI-1"
    assert cli("entries", "list", "--status", "queued", "--json")[0] == 0
    code, out, _ = cli("export", "run", "--date", "2026-11-27", "--dry-run", "--out", str(tmp_path / "dry"))
    assert code == 0 and "nothing marked" in out


def test_schedules_through_the_cli(cli):
    cli("init")
    code, out, _ = cli(
        "schedules",
        "add",
        "close",
        "--cron",
        "0 18 L * *",
        "--task",
        "ledgerflow.cleanup",
        "--holidays",
        "th",
        "--business-day",
        "previous",
        "--extra-holidays",
        "2026-12-30",
        "--json",
    )
    assert code == 0 and json.loads(out)["holiday_calendar"] == "TH"
    code, out, _ = cli("schedules", "next", "close", "-n", "1", "--after", "2026-12-01T00:00:00", "--json")
    assert json.loads(out) == ["2026-12-29T18:00:00+07:00"]
    assert (
        cli(
            "schedules",
            "add",
            "x",
            "--cron",
            "0 1 * * *",
            "--task",
            "ledgerflow.cleanup",
            "--extra-holidays",
            "soon",
        )[0]
        == 2
    )
    assert "close" in cli("schedules", "list")[1]
    assert cli("schedules", "list", "--json")[0] == 0
    assert "disabled" in cli("schedules", "disable", "close")[1]
    code, out, _ = cli("schedules", "run", "close", "--run-id", "dec-close", "--json")
    assert json.loads(out)["run_key"] == "dec-close"
    assert cli("schedules", "run", "close", "--run-id", "dec-close")[0] == 1
    code, out, _ = cli("schedules", "fires", "close", "--json")
    assert json.loads(out)[0]["trigger"] == "manual"
    assert cli("schedules", "fires", "close")[0] == 0
    assert cli("worker", "--burst", "--queues", "maintenance")[0] == 0
    code, out, _ = cli("schedules", "history", "close", "--json")
    assert json.loads(out)[0]["status"] == "completed"
    assert cli("schedules", "history", "close")[0] == 0
    assert "enabled" in cli("schedules", "enable", "close")[1]
    assert "removed" in cli("schedules", "remove", "close")[1]
    assert cli("schedules", "remove", "close")[0] == 2


def test_demo_loads_a_ledger_exports_it_and_runs_jobs(cli, tmp_path):
    code, out, _ = cli("demo", "--jobs", "30", "--json")
    report = json.loads(out)
    assert code == 0 and report["entries_added"] == 25 and report["export"]["state"] == "completed"
    assert report["jobs"]["completed"] == 30
    csv_files = list((tmp_path / "out").glob("*.csv"))
    assert len(csv_files) == 1 and "ภาษีซื้อ" in csv_files[0].read_text("utf-8-sig")
    code, out, _ = cli("demo", "--jobs", "0")
    assert code == 0 and "0 new journal entries" in out


def test_debug_shows_the_traceback(cli):
    code, _, err = cli("--debug", "jobs", "show", "999")
    assert code == 2 and "Traceback" in err


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("jobs", "show", "99999999999999999999999"), "Invalid value for 'job_id'"),
        (("jobs", "retry", "0"), "Invalid value for 'job_id'"),
        (("jobs", "list", "--before-id", "99999999999999999999999"), "Invalid value for '--before-id'"),
        (("--no-such-option",), "No such option: --no-such-option"),
        (("jobs", "list", "--no-such-option"), "No such option: --no-such-option"),
        (("no-such-command",), "No such command 'no-such-command'"),
        (("jobs", "enqueue", "ledgerflow.cleanup", "--args", "@{deep}"), "--args: JSON nested too deeply"),
        (
            ("jobs", "enqueue", "ledgerflow.cleanup", "--kwargs", "@{deep}"),
            "--kwargs: JSON nested too deeply",
        ),
        (("jobs", "enqueue", "ledgerflow.cleanup", "--args", "@{missing}"), "cannot read it (No such file"),
        (("jobs", "enqueue", "ledgerflow.cleanup", "--args", "[" * 300 + "]" * 300), "nested more than 32"),
        (
            (
                "schedules",
                "add",
                "deep",
                "--cron",
                "0 1 * * *",
                "--task",
                "ledgerflow.cleanup",
                "--args",
                "@{deep}",
            ),
            "--args: JSON nested too deeply",
        ),
        (
            (
                "schedules",
                "add",
                "deep",
                "--cron",
                "0 1 * * *",
                "--task",
                "ledgerflow.cleanup",
                "--args",
                "[" * 40 + "]" * 40,
            ),
            "args of schedule 'deep': nested more than 32 levels deep",
        ),
        (("entries", "import", "{folder}"), "no such file"),
        (("entries", "import", "{deep}"), "JSON nested too deeply to be a journal entry"),
    ],
)
def test_bad_ids_options_deep_json_and_folders_exit_2(cli, tmp_path, args, message):
    (tmp_path / "deep.json").write_text(DEEP)
    (tmp_path / "folder").mkdir()
    paths = {
        "deep": tmp_path / "deep.json",
        "missing": tmp_path / "missing.json",
        "folder": tmp_path / "folder",
    }
    cli("init")
    code, out, err = cli(*(a.format(**paths) for a in args))
    assert code == 2, (out, err)
    assert message in err and "Traceback" not in err and "unexpected" not in err
    code, out, _ = cli("jobs", "list", "--json")
    assert json.loads(out) == [], "nothing stored"


@pytest.mark.parametrize(
    "name", ["x%00y", "x\x00y", 'say"hi', "it's", "x\u200fy", "\u202eevil", "a b", "a,b", "q=2", ""]
)
def test_queue_and_task_names_follow_one_rule_everywhere(cli, name):
    cli("init")
    for args in (
        ("jobs", "enqueue", "ledgerflow.cleanup", "--queue", name),
        ("queues", "pause", name),
        ("queues", "resume", name),
        ("tasks", "pause", name),
        ("schedules", "add", "s1", "--cron", "0 1 * * *", "--task", "ledgerflow.cleanup", "--queue", name),
        ("worker", "--burst", "--queues", f"default,{name}"),
    ):
        code, _, err = cli(*args)
        if name in ("a,b", "q=2", "") and args[0] == "worker":
            continue  # the worker's --queues syntax reads these as two queues, a limit, or nothing
        assert code == 2, (args, err)
        assert "name" in err and len(err.strip().splitlines()) == 1, (args, err)
    code, out, _ = cli("queues", "list", "--json")
    assert all(q["queue"] != name for q in json.loads(out))


def test_deep_json_args_from_a_file_within_the_limits_are_accepted(cli, tmp_path):
    args = tmp_path / "args.json"
    args.write_text("[30]")
    cli("init")
    code, out, _ = cli("jobs", "enqueue", "ledgerflow.cleanup", "--args", f"@{args}", "--json")
    assert code == 0 and json.loads(out)["args"] == [30]


def test_demo_prints_a_short_summary_not_a_log_line_per_job(db_url, tmp_path):
    env = {**os.environ, "LEDGERFLOW_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
    env.update(LEDGERFLOW_LOG_JSON="true")
    env.pop("LEDGERFLOW_API_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "ledgerflow", "demo", "--jobs", "200"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 6 and "job_completed" not in done.stderr, (lines, done.stderr[-2000:])
    assert "25 new journal entries" in lines[1]
    csv = next(tmp_path.glob("exports/*.csv"))
    assert lines[2].startswith("daily export  ") and "completed, 25 entries" in lines[2]
    assert csv.as_uri() in lines[2]
    assert lines[3].startswith("demo jobs     200/200 completed")
    assert lines[4] == "dashboard     http://127.0.0.1:8000/ while `ledgerflow serve` runs"
    sqlite = db_url.startswith("sqlite")
    token = Path(db_url.removeprefix("sqlite:///") + ".token") if sqlite else tmp_path / "ledgerflow.token"
    later = "(made when `ledgerflow serve` first starts)"
    assert lines[5] == f"sign in with  the API token in {token.resolve()} {later}"
    assert not token.exists(), "the demo only says where the token will be"
