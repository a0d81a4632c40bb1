"""Limits and `unique_for` from the CLI and the JSON API: set, list, clear, and bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ledgerflow import JobState
from tests.apps import limited
from tests.conftest import run_cli, wait_until
from tests.limits.test_global_limits import max_overlap, runs


@pytest.fixture
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("LEDGERFLOW_DATABASE_URL", db_url)
    monkeypatch.setenv("LEDGERFLOW_EXPORT_DESTINATION", f"file://{tmp_path / 'out'}")
    monkeypatch.setenv("LEDGERFLOW_EXPORT_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("LEDGERFLOW_LOG_LEVEL", "ERROR")
    monkeypatch.setenv("COLUMNS", "200")
    return lambda *args: run_cli(capsys, *args)


def test_queue_and_task_limits_through_the_cli(cli):
    code, out, _ = cli("queues", "limit", "mail", "3")
    assert code == 0 and "queue mail: at most 3 running, across all workers" in out
    code, out, _ = cli("queues", "limit", "mail", "3", "--rate", "60/minute", "--json")
    assert code == 0 and json.loads(out)["rate"] == "60/minute" and json.loads(out)["concurrency"] == 3
    assert cli("tasks", "limit", "ledgerflow.cleanup", "--rate", "10/30s")[0] == 0
    _, out, _ = cli("queues", "list", "--json")
    mail = next(q for q in json.loads(out) if q["queue"] == "mail")
    assert (mail["limit"], mail["rate"], mail["depth"]) == (3, "60/minute", 0), "a limited queue is listed"
    _, out, _ = cli("queues", "limits", "--json")
    listed = {(r["kind"], r["name"]): r for r in json.loads(out)}
    assert listed[("queue", "mail")]["running"] == 0
    assert listed[("task", "ledgerflow.cleanup")]["rate"] == "10/30s"
    assert listed[("task", "ledgerflow.cleanup")]["concurrency"] is None
    code, out, _ = cli("queues", "limits")
    assert code == 0 and "60/minute" in out
    assert "limits cleared" in cli("queues", "limit", "mail", "--clear")[1]
    assert "had no limit" in cli("queues", "limit", "mail", "--clear")[1]
    assert "limits cleared" in cli("tasks", "limit", "ledgerflow.cleanup", "--clear")[1]
    assert json.loads(cli("queues", "limits", "--json")[1]) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("queues", "limit", "mail"), "give queue mail a concurrency limit, a rate limit or both"),
        (("queues", "limit", "mail", "0"), "Invalid value"),
        (
            ("queues", "limit", "mail", "--rate", "60 per minute"),
            "rate limit '60 per minute' is not N/period",
        ),
        (("queues", "limit", "mail", "--rate", "0/minute"), "rate limit must allow 1..100000 starts"),
        (("queues", "limit", "mail", "--rate", "5/fortnight"), "is not N/period"),
        (("queues", "limit", "mail", "2", "--clear"), "--clear removes every limit"),
        (("queues", "limit", "bad name", "2"), "invalid queue name"),
        (("tasks", "limit", "x,y", "2"), "invalid task name"),
        (("jobs", "enqueue", "ledgerflow.cleanup", "--unique-for", "60"), "unique_for needs a unique_key"),
        (
            ("jobs", "enqueue", "ledgerflow.cleanup", "--unique-key", "k", "--unique-for", "-1"),
            "unique_for must be",
        ),
    ],
)
def test_bad_limits_exit_2_and_store_nothing(cli, args, message):
    code, _, err = cli(*args)
    assert code == 2 and message in err, err
    assert json.loads(cli("queues", "limits", "--json")[1]) == []
    assert json.loads(cli("jobs", "list", "--json")[1]) == []


def test_enqueue_with_unique_for_through_the_cli(cli):
    args = (
        "jobs",
        "enqueue",
        "ledgerflow.cleanup",
        "--unique-key",
        "nightly",
        "--unique-for",
        "3600",
        "--json",
    )
    first = json.loads(cli(*args)[1])
    assert json.loads(cli("jobs", "cancel", str(first["id"]), "--json")[1])["state"] == "cancelled"
    second = json.loads(cli(*args)[1])
    assert second["id"] != first["id"], "a cancelled job does not hold the window"
    assert json.loads(cli(*args)[1])["id"] == second["id"]


def test_limits_and_unique_for_through_the_api(service):
    r = service.client.put("/api/queues/mail/limit", json={"concurrency": 2, "rate": "100/hour"})
    assert r.status_code == 200 and r.json()["concurrency"] == 2 and r.json()["rate"] == "100/hour"
    r = service.client.put("/api/tasks/ledgerflow.cleanup/limit", json={"concurrency": 1})
    assert r.status_code == 200 and r.json()["set_by"] == "user"
    listed = {(x["kind"], x["name"]): x for x in service.get("/api/limits").json()["limits"]}
    assert (
        listed[("queue", "mail")]["running"] == 0
        and listed[("task", "ledgerflow.cleanup")]["concurrency"] == 1
    )
    queues = {q["queue"]: q for q in service.get("/api/queues").json()["queues"]}
    assert queues["mail"]["limit"] == 2 and queues["mail"]["rate"] == "100/hour"
    for path, body, status, text in [
        ("/api/queues/mail/limit", {}, 400, "give queue mail a concurrency limit"),
        ("/api/queues/mail/limit", {"concurrency": 0}, 422, "concurrency"),
        ("/api/queues/mail/limit", {"rate": "often"}, 400, "is not N/period"),
        ("/api/queues/bad%20name/limit", {"concurrency": 1}, 400, "invalid queue name"),
    ]:
        r = service.client.put(path, json=body)
        assert r.status_code == status and text in r.text, r.text
    assert service.get("/api/limits").json()["limits"][0]["concurrency"] == 2, (
        "refused requests changed nothing"
    )
    assert service.client.delete("/api/queues/mail/limit").json() == {"queue": "mail", "changed": True}
    assert service.client.delete("/api/queues/mail/limit").json()["changed"] is False
    assert service.client.delete("/api/tasks/ledgerflow.cleanup/limit").json()["changed"] is True
    assert service.get("/api/limits").json()["limits"] == []

    body = {"task": "ledgerflow.cleanup", "unique_key": "k", "unique_for": 600}
    first = service.post("/api/jobs", json=body).json()
    assert service.post("/api/jobs", json=body).json()["id"] == first["id"]
    r = service.post("/api/jobs", json={"task": "ledgerflow.cleanup", "unique_for": 600})
    assert r.status_code == 400 and "unique_for needs a unique_key" in r.text
    r = service.post("/api/jobs", json={**body, "unique_for": 0})
    assert r.status_code == 422 and "unique_for" in r.text


def test_a_lowered_limit_lets_running_jobs_finish_and_the_cli_says_how_many_run_above_it(
    cli, make_app, workers
):
    """A limit stops new claims only: the jobs already running above it run to their end (one
    attempt each), the CLI says how many there are, and the next ones start one at a time."""
    app = make_app()
    limited.metadata.create_all(app.db.engine)
    slow = app.enqueue_many([limited.send.prepare(sleep=6.0) for _ in range(3)])
    proc = workers(app="tests.apps.limited:app", queues="mail", concurrency=3)
    wait_until(lambda: len(runs(app, "mail.send", slow)) == 3, 60, message="three slow jobs running")
    code, out, _ = cli("queues", "limit", "mail", "1")
    assert code == 0 and "at most 1 running" in out
    assert "3 jobs of queue mail are running now, above the new limit of 1" in " ".join(out.split())
    shown = json.loads(cli("queues", "limit", "mail", "1", "--json")[1])
    assert (shown["running"], shown["running_above_limit"]) == (3, True)
    quick = app.enqueue_many([limited.send.prepare(sleep=0.2) for _ in range(3)])
    wait_until(lambda: all(app.get_job(i).state == JobState.COMPLETED for i in slow + quick), 120)
    assert {app.get_job(i).attempt for i in slow} == {1}, "a running job was stopped or retried"
    assert max_overlap(runs(app, "mail.send", quick)) == 1
    first_quick = min(s for s, _, _ in runs(app, "mail.send", quick))
    assert first_quick >= max(e for _, e, _ in runs(app, "mail.send", slow)) - 0.05
    shown = json.loads(cli("queues", "limit", "mail", "1", "--json")[1])
    assert (shown["running"], shown["running_above_limit"]) == (0, False)
    proc.stop()
