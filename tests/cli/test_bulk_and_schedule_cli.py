"""The CLI's bulk actions, search, enqueue options and schedule editing, on both backends."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import run_cli

CLEANUP = "ledgerflow.cleanup"  # a built-in task (queue maintenance)


@pytest.fixture
def cli(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    monkeypatch.setenv("LEDGERFLOW_DATABASE_URL", db_url)
    monkeypatch.setenv("LEDGERFLOW_EXPORT_DESTINATION", f"file://{tmp_path / 'out'}")
    monkeypatch.setenv("LEDGERFLOW_EXPORT_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("LEDGERFLOW_LOG_LEVEL", "ERROR")
    monkeypatch.setenv("LEDGERFLOW_TIMEZONE", "Asia/Bangkok")
    monkeypatch.setenv("COLUMNS", "200")
    assert run_cli(capsys, "init")[0] == 0
    return lambda *args: run_cli(capsys, *args)


def _enqueue(cli, *args: str) -> dict:
    code, out, err = cli("jobs", "enqueue", CLEANUP, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def _states(cli) -> dict[int, str]:
    return {j["id"]: j["state"] for j in json.loads(cli("jobs", "list", "--json", "--limit", "1000")[1])}


def test_bulk_cancel_retry_delete_count_first_and_ask(cli):
    a = _enqueue(cli, "--args", "[30]", "--kwargs", '{"note": "Quarter close ACME"}')
    b = _enqueue(cli, "--args", "[31]")
    other = _enqueue(cli, "--args", "[32]", "--queue", "elsewhere")

    code, out, _ = cli("jobs", "cancel", "--queue", "maintenance", "--dry-run", "--json")
    assert code == 0 and json.loads(out) | {"filter": None} == {
        "action": "cancel",
        "dry_run": True,
        "matched": 2,
        "count": 2,
        "filter": None,
    }
    code, out, _ = cli("jobs", "cancel", "--queue", "maintenance")  # asks; no answer: nothing done
    assert code == 1 and "2 job(s) match; 2 can be cancelled" in out
    assert set(_states(cli).values()) == {"available"}

    code, out, _ = cli("jobs", "cancel", "--search", "acme", "--yes", "--reason", "wrong quarter")
    assert code == 0 and "cancelled 1 job(s)" in out
    assert _states(cli) == {a["id"]: "cancelled", b["id"]: "available", other["id"]: "available"}
    assert json.loads(cli("jobs", "show", str(a["id"]), "--json")[1])["state_reason"] == "wrong quarter"

    code, out, _ = cli("jobs", "delete", "--queue", "maintenance", "--yes", "--json")
    assert (
        code == 0 and json.loads(out)["matched"] == 2 and json.loads(out)["count"] == 1
    )  # only the final one
    code, out, _ = cli("jobs", "retry", "--state", "available,scheduled", "--yes")
    assert code == 0 and "retried 0 job(s)" in out  # available jobs are not moved by a retry
    assert cli("jobs", "cancel", str(b["id"]))[0] == 0
    code, out, _ = cli("jobs", "retry", "--task", CLEANUP, "--older-than", "0s", "--yes", "--json")
    assert json.loads(out)["count"] == 1 and _states(cli)[b["id"]] == "available"
    assert cli("jobs", "delete", str(b["id"]))[0] == 2  # a live job is not deleted (not allowed)
    assert cli("jobs", "cancel", str(b["id"]))[0] == 0
    assert cli("jobs", "delete", str(b["id"]), "--json")[0] == 0
    assert set(_states(cli)) == {other["id"]}


def test_search_and_time_filters_in_jobs_list(cli):
    acme = _enqueue(cli, "--args", "[30]", "--kwargs", '{"customer": "ACME 商事"}')
    _enqueue(cli, "--args", "[31]", "--kwargs", '{"customer": "Globex"}')
    code, out, _ = cli("jobs", "list", "--search", "acme 商", "--json")
    assert [j["id"] for j in json.loads(out)] == [acme["id"]]
    code, out, _ = cli("jobs", "list", "--enqueued-after", "2000-01-01", "--enqueued-before", "2000-01-02")
    assert code == 0 and CLEANUP not in out
    code, out, _ = cli(
        "jobs", "list", "--enqueued-after", acme["created_at"], "--state", "available", "--json"
    )
    assert acme["id"] in [j["id"] for j in json.loads(out)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("jobs", "cancel", "--yes"), "bulk cancel needs a filter"),
        (("jobs", "cancel", "--state", "sleeping", "--yes"), "unknown state 'sleeping'"),
        (("jobs", "list", "--search", "ab"), "text to search for must be 3..200 characters"),
        (("jobs", "delete", "--older-than", "soon", "--yes"), "--older-than 'soon' is not a duration"),
        (
            ("jobs", "list", "--enqueued-after", "yesterday"),
            "--enqueued-after 'yesterday' is not a time: give a date",
        ),
        (("jobs", "list", "--finished-before", "2026-11-30T09:00"), "'2026-11-30T09:00' has no UTC offset"),
        (("jobs", "list", "--finished-after", "2026-02-30"), "'2026-02-30' is not a calendar date"),
        (("jobs", "retry", "1", "--queue", "x"), "give a job id or filter options, not both"),
        (("jobs", "cancel", "--older-than", "1d", "--enqueued-before", "2026-01-01"), "not both"),
        (("jobs", "enqueue", CLEANUP, "--delay", "5", "--scheduled-at", "2030-01-01"), "not both"),
        (("jobs", "enqueue", CLEANUP, "--depends-on", "1,x"), "--depends-on: 'x' is not a job id"),
        (("jobs", "enqueue", CLEANUP, "--depends-on", "99999"), "unknown job id(s) 99999"),
        (("jobs", "enqueue", CLEANUP, "--timeout", "0"), "timeout must be > 0"),
        (("schedules", "edit", "nightly", "--cron", "0 25 * * *"), "hour"),
        (("schedules", "edit", "nightly", "--timezone", "Mars/Base"), "Mars/Base"),
        (("schedules", "edit", "nightly"), "nothing to change"),
        (("schedules", "edit", "nosuch", "--cron", "0 1 * * *"), "unknown schedule 'nosuch'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(cli, args, message):
    cli("schedules", "add", "nightly", "--cron", "0 1 * * *", "--task", CLEANUP)
    before = _states(cli)
    code, out, err = cli(*args)
    assert code == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1
    assert _states(cli) == before
    code, out, _ = cli("schedules", "next", "nightly", "-n", "1", "--after", "2026-01-01T00:00", "--json")
    assert json.loads(out) == ["2026-01-01T01:00:00+07:00"]  # the schedule is as it was


def test_enqueue_takes_every_option_of_the_python_api(cli):
    parent = _enqueue(cli, "--args", "[30]")
    job = _enqueue(
        cli,
        "--args",
        "[31]",
        "--scheduled-at",
        "2030-01-02T03:04:05",  # no offset: LEDGERFLOW_TIMEZONE
        "--timeout",
        "12.5",
        "--max-attempts",
        "7",
        "--priority",
        "1",
        "--unique-key",
        "close-2030",
        "--depends-on",
        str(parent["id"]),
    )
    assert job["scheduled_at"] == "2030-01-01T20:04:05+00:00"
    assert (job["timeout"], job["max_attempts"], job["priority"], job["unique_key"]) == (
        12.5,
        7,
        1,
        "close-2030",
    )
    assert job["state"] == "scheduled"
    again = _enqueue(cli, "--args", "[99]", "--unique-key", "close-2030")
    assert again["id"] == job["id"]  # the live unique job is returned


def test_schedules_edit_keeps_what_is_not_given_and_previews_five_fires(cli):
    code, out, _ = cli(
        "schedules", "add", "close", "--cron", "0 18 * * *", "--task", CLEANUP, "--args", "[7]"
    )
    assert code == 0 and "next 5 fires:" in out and out.count("+07:00") == 5
    code, out, _ = cli(
        "schedules", "edit", "close", "--cron", "30 9 * * 1", "--timezone", "Asia/Tokyo", "--json"
    )
    edited = json.loads(out)
    assert code == 0 and edited["cron_expression"] == "30 9 * * 1" and edited["timezone"] == "Asia/Tokyo"
    assert edited["args"] == [7] and edited["job_type"] == CLEANUP  # kept
    assert len(edited["next_fires"]) == 5
    assert all(f.endswith("09:30:00+09:00") for f in edited["next_fires"])
    code, out, _ = cli("schedules", "edit", "close", "--business-day", "next", "--holidays", "jp")
    assert code == 0 and "JP holidays" in out and out.count("+09:00") == 5
    code, out, _ = cli("schedules", "edit", "close", "--holidays", "", "--business-day", "", "--json")
    assert json.loads(out)["holiday_calendar"] is None and json.loads(out)["business_day"] is None
    assert cli("schedules", "remove", "close")[0] == 0
    assert cli("schedules", "edit", "close", "--cron", "0 1 * * *")[0] == 2


@pytest.mark.parametrize(
    "zone, local, message",
    [
        ("Europe/Berlin", "2027-03-28T02:30", "does not exist in Europe/Berlin (the clocks skip it)"),
        (
            "Europe/Berlin",
            "2026-10-25T02:30",
            "happens twice in Europe/Berlin (the clocks go back): give its UTC offset (+01:00 or +02:00)",
        ),
    ],
)
def test_enqueue_refuses_a_local_time_the_clocks_skip_or_repeat(cli, monkeypatch, zone, local, message):
    """`--scheduled-at` without an offset is in LEDGERFLOW_TIMEZONE: no guessing at DST edges."""
    monkeypatch.setenv("LEDGERFLOW_TIMEZONE", zone)
    before = _states(cli)
    code, _, err = cli("jobs", "enqueue", CLEANUP, "--scheduled-at", local)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert _states(cli) == before  # nothing written
    job = _enqueue(cli, "--scheduled-at", local.replace("T02:30", "T03:30"))
    assert job["scheduled_at"].startswith(local[:10])
