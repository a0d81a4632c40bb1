"""A task's return value is stored when it fits; one that cannot be stored is a clear failure of
the attempt (dead at once, never retried: the work is done), on both backends."""

from __future__ import annotations

import json

from ledgerflow import JobState


def test_results_over_the_limit_or_not_json_fail_the_attempt_clearly_and_are_not_retried(make_app, capsys):
    app = make_app(result_max_bytes=4096)
    small = {"rows": list(range(100))}
    big = {"blob": "x" * 5000}
    calls: list[str] = []

    @app.task(name="returns", max_attempts=3)
    def returns(kind: str) -> object:
        calls.append(kind)
        return {"small": small, "big": big, "set": {1, 2}, "none": None, "nan": float("nan")}[kind]

    ids = {kind: returns.enqueue(kind).id for kind in ("small", "big", "set", "none", "nan")}
    app.run_worker(burst=True)
    done = {kind: app.get_job(job_id) for kind, job_id in ids.items()}
    assert done["small"].state == JobState.COMPLETED and done["small"].result == small
    assert done["none"].state == JobState.COMPLETED and done["none"].result is None
    too_big = len(json.dumps(big, separators=(",", ":")))
    reasons = {
        "big": f"result: {too_big} bytes encoded, over the limit of 4096",
        "set": "result: a set is not JSON",
        "nan": "nan",
    }
    for kind, reason in reasons.items():
        job = done[kind]
        assert job.state == JobState.DEAD, kind
        assert job.result is None
        assert [e.type for e in job.errors] == ["result_not_stored"], kind
        assert reason in job.errors[0].message, (kind, job.errors[0].message)
    assert sorted(calls) == sorted(ids)  # each ran once: a result that cannot be stored is not retried
    logged = capsys.readouterr()
    warnings = [line for line in (logged.out + logged.err).splitlines() if "result_not_stored" in line]
    assert any(str(ids["big"]) in w for w in warnings)


def test_the_default_limit_is_256_kib(make_app):
    app = make_app()
    assert app.settings.result_max_bytes == 256 * 1024

    @app.task(name="sized")
    def sized(n: int) -> str:
        return "y" * n

    fits = sized.enqueue(256 * 1024 - 2)  # the two quotes make it exactly 256 KiB
    over = sized.enqueue(256 * 1024 - 1)
    app.run_worker(burst=True)
    assert app.get_job(fits.id).result == "y" * (256 * 1024 - 2)
    assert app.get_job(over.id).state == JobState.DEAD
    assert app.get_job(over.id).errors[0].type == "result_not_stored"
