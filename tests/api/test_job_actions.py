"""User actions on jobs follow the state machine on every entry point (API, CLI, dashboard),
on both backends: retry refuses a running, available or completed job (409 / exit 2 / a
message), and a bulk retry of the dead-letter queue retries what it can and names each job
whose unique key a live job now holds."""

from __future__ import annotations

import html
import itertools
import json
from collections.abc import Callable

import pytest

from ledgerflow import App, Conflict, JobSpec, JobState, NotAllowed
from ledgerflow.engine.leases import LeaseSQL, Outcome, error_record
from ledgerflow.engine.states import RETRY
from tests.conftest import run_cli
from tests.web.test_sign_in import csrf_of, signed_in

TASK = "test.action"
_queues = (f"q{n}" for n in itertools.count())


def _claim(app: App, job_id: int):
    sql = LeaseSQL(app.db, 300)
    queue = app.get_job(job_id).queue
    with app.db.begin() as conn:
        (claim,) = sql.claim(conn, worker_id="test-worker", queues=[queue], tasks=[TASK], limit=1)
    assert claim.job.id == job_id
    return sql, claim


def job_in(app: App, state: JobState, unique_key: str | None = None) -> int:
    """A job brought to `state` by the engine's own moves (claim, outcomes, cancel)."""
    delay = 3600 if state == JobState.SCHEDULED else None
    job_id = app.enqueue(
        JobSpec(task=TASK, queue=next(_queues), delay=delay, unique_key=unique_key, max_attempts=1)
    ).id
    if state in (JobState.SCHEDULED, JobState.AVAILABLE):
        return job_id
    if state == JobState.CANCELLED:
        app.store.cancel(job_id)
        return job_id
    sql, claim = _claim(app, job_id)
    outcome = {
        JobState.RUNNING: None,
        JobState.COMPLETED: Outcome(claim, "completed", 0.0),
        JobState.RETRYABLE: Outcome(
            claim, "failed", 0.0, error=error_record(1, RuntimeError("m")), retry_in=3600
        ),
        JobState.DEAD: Outcome(claim, "failed", 0.0, error=error_record(1, RuntimeError("m"))),
    }[state]
    if outcome is not None:
        with app.db.begin() as conn:
            assert sql.apply_outcomes(conn, [outcome]) == []
    assert app.get_job(job_id).state == state
    return job_id


@pytest.fixture
def cli(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple]:
    monkeypatch.setenv("LEDGERFLOW_DATABASE_URL", db_url)
    monkeypatch.setenv("LEDGERFLOW_LOG_LEVEL", "ERROR")
    monkeypatch.setenv("COLUMNS", "200")
    return lambda *args: run_cli(capsys, *args)


def _flash(response) -> str:
    start = response.text.index('class="flash" role="status">') + len('class="flash" role="status">')
    return html.unescape(response.text[start : response.text.index("</div>", start)])


def test_retry_refuses_running_available_and_completed_jobs_everywhere(service, cli):
    app = service.app
    dashboard = signed_in(service.url)
    for state in (JobState.RUNNING, JobState.AVAILABLE, JobState.COMPLETED):
        job_id = job_in(app, state)
        before = app.get_job(job_id)
        expected = (
            f"job {job_id} is {state}; only dead, cancelled, retryable or scheduled jobs can be retried"
        )
        with pytest.raises(NotAllowed, match=expected):
            app.store.retry(job_id)
        r = service.post(f"/api/jobs/{job_id}/retry")
        assert r.status_code == 409 and r.json()["error"] == {"code": "conflict", "message": expected}
        code, _, err = cli("jobs", "retry", str(job_id))
        assert code == 2 and expected in err
        page = dashboard.post(
            f"/jobs/{job_id}/retry",
            data={"csrf": csrf_of(dashboard, f"/jobs/{job_id}")},
            follow_redirects=True,
        )
        assert page.status_code == 200 and _flash(page) == expected
        assert "Retry now" not in page.text, "the job page offers no retry for this state"
        after = app.get_job(job_id)
        assert (after.state, after.attempt, after.scheduled_at) == (
            state,
            before.attempt,
            before.scheduled_at,
        )
        if state == JobState.RUNNING:  # the worker still holds its lease: nothing runs twice
            assert after.worker_id == "test-worker"
    for state in RETRY.sources:
        job_id = job_in(app, state)
        assert "Retry now" in dashboard.get(f"/jobs/{job_id}").text, state
        r = service.post(f"/api/jobs/{job_id}/retry")
        assert r.status_code == 200 and r.json()["state"] == "available", state
    job_id = job_in(app, JobState.DEAD)
    page = dashboard.post(
        f"/jobs/{job_id}/retry", data={"csrf": csrf_of(dashboard, f"/jobs/{job_id}")}, follow_redirects=True
    )
    assert _flash(page) == f"job {job_id} is available"
    code, out, _ = cli("jobs", "retry", str(job_in(app, JobState.CANCELLED)), "--json")
    assert code == 0 and json.loads(out)["state"] == "available"


def _dead_pair_and_holder(app: App, key: str) -> tuple[int, int, int]:
    """Two dead jobs with `key`, then a live one that holds it: (first dead, second dead, holder)."""
    first = job_in(app, JobState.DEAD, unique_key=key)
    second = job_in(app, JobState.DEAD, unique_key=key)
    holder = job_in(app, JobState.AVAILABLE, unique_key=key)
    return first, second, holder


def test_dlq_retry_all_retries_what_it_can_and_names_each_unique_key_conflict(service, cli):
    app = service.app
    plain = [job_in(app, JobState.DEAD) for _ in range(3)]
    a1, a2, a_holder = _dead_pair_and_holder(app, "invoice-a")
    twins = [job_in(app, JobState.DEAD, unique_key="invoice-b") for _ in range(2)]  # no live holder

    report = app.store.retry_dead()
    assert report.retried == sorted([*plain, twins[0]])
    assert report.refused == {
        a1: f"unique key 'invoice-a' is held by live job {a_holder}",
        a2: f"unique key 'invoice-a' is held by live job {a_holder}",
        twins[1]: f"unique key 'invoice-b' is held by live job {twins[0]}",
    }
    states = {i: app.get_job(i).state for i in [*plain, a1, a2, *twins]}
    assert states == {
        **dict.fromkeys([*plain, twins[0]], JobState.AVAILABLE),
        a1: "dead",
        a2: "dead",
        twins[1]: "dead",
    }
    with pytest.raises(
        Conflict, match=f"job {a1} not retried: unique key 'invoice-a' is held by live job {a_holder}"
    ):
        app.store.retry(a1)

    # the JSON API: 200 with the refused jobs, never a 500
    c1, c2, c_holder = _dead_pair_and_holder(app, "invoice-c")
    ok = job_in(app, JobState.DEAD)
    r = service.post("/api/dlq/retry", json={"ids": [c1, c2, ok]})
    reason = f"unique key 'invoice-c' is held by live job {c_holder}"
    assert r.status_code == 200
    assert r.json() == {
        "retried": 1,
        "refused": [{"job_id": c1, "reason": reason}, {"job_id": c2, "reason": reason}],
    }
    r = service.post(f"/api/jobs/{c1}/retry")
    assert r.status_code == 409 and r.json()["error"]["message"] == f"job {c1} not retried: {reason}"

    # the CLI: exit 1, each refused job named; --json gives the same report as the API
    d1, d2, d_holder = _dead_pair_and_holder(app, "invoice-d")
    code, out, _ = cli("dlq", "retry", "--all")
    lines = out.splitlines()
    assert code == 1 and lines[0] == "retried 0 dead job(s)"
    for job_id in sorted([a1, a2, twins[1], c1, c2, d1, d2]):
        assert any(line.startswith(f"job {job_id} not retried: unique key") for line in lines), job_id
    assert f"job {d1} not retried: unique key 'invoice-d' is held by live job {d_holder}" in lines
    code, out, _ = cli("dlq", "retry", "--all", "--json")
    assert code == 1 and json.loads(out)["retried"] == 0 and len(json.loads(out)["refused"]) == 7

    # the dashboard: the flash message says what was retried and names each refused job
    app.store.cancel(d_holder)
    dashboard = signed_in(service.url)
    page = dashboard.post(
        "/dlq/retry", data={"csrf": csrf_of(dashboard, "/dlq"), "confirmed": "yes"}, follow_redirects=True
    )
    message = _flash(page)
    assert message.startswith("retried 1 dead job(s); job ")
    assert f"job {a1} not retried: unique key 'invoice-a' is held by live job {a_holder}" in message
    assert app.get_job(d1).state == JobState.AVAILABLE and app.get_job(d2).state == JobState.DEAD
