"""A task's return value is stored when it fits, and replaced by a visible marker when it does not."""

from __future__ import annotations

import json

from ledgerflow import JobState
from ledgerflow.payload import NOT_STORED


def test_results_over_the_limit_or_not_json_complete_with_a_marker_and_a_warning(make_app, capsys):
    app = make_app(result_max_bytes=4096)
    small = {"rows": list(range(100))}
    big = {"blob": "x" * 5000}

    @app.task(name="returns")
    def returns(kind: str) -> object:
        return {"small": small, "big": big, "set": {1, 2}, "none": None}[kind]

    ids = {kind: returns.enqueue(kind).id for kind in ("small", "big", "set", "none")}
    app.run_worker(burst=True)
    done = {kind: app.get_job(job_id) for kind, job_id in ids.items()}
    assert {kind: j.state for kind, j in done.items()} == dict.fromkeys(ids, JobState.COMPLETED)
    assert done["small"].result == small
    assert done["none"].result is None
    too_big = len(json.dumps(big, separators=(",", ":")))
    assert done["big"].result == {
        NOT_STORED: True,
        "reason": f"result: {too_big} bytes encoded, over the limit of 4096",
        "limit_bytes": 4096,
        "bytes": too_big,
    }
    assert done["set"].result == {
        NOT_STORED: True,
        "reason": "result: a set is not JSON",
        "limit_bytes": 4096,
    }
    logged = capsys.readouterr()
    warnings = [line for line in (logged.out + logged.err).splitlines() if "result_not_stored" in line]
    assert len(warnings) == 2
    assert any(f"job_id={ids['big']}" in w or f'"job_id": {ids["big"]}' in w for w in warnings)


def test_the_default_limit_is_64_kib(make_app):
    app = make_app()
    assert app.settings.result_max_bytes == 64 * 1024

    @app.task(name="sized")
    def sized(n: int) -> str:
        return "y" * n

    fits = sized.enqueue(64 * 1024 - 2)  # the two quotes make it exactly 64 KiB
    over = sized.enqueue(64 * 1024 - 1)
    app.run_worker(burst=True)
    assert app.get_job(fits.id).result == "y" * (64 * 1024 - 2)
    assert app.get_job(over.id).result[NOT_STORED] is True
    assert app.get_job(over.id).result["bytes"] == 64 * 1024 + 1
