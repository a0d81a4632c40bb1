"""One rule for queue, task and schedule names: accepted exactly when plain; the Python API
(task registration, JobSpec, schedules, worker queues) applies it like the CLI and the HTTP API."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledgerflow import App
from ledgerflow.engine.jobs import JobSpec
from ledgerflow.errors import BadInput
from ledgerflow.names import check_name
from ledgerflow.scheduler.schedules import Schedule

ALLOWED = set(string.ascii_letters + string.digits + "_.:-<>")


@given(st.text(max_size=120), st.sampled_from(["queue", "task", "schedule"]))
def test_a_name_is_accepted_exactly_when_it_is_plain(name, kind):
    plain = (
        0 < len(name) <= {"queue": 100, "task": 200, "schedule": 100}[kind]
        and set(name) <= ALLOWED
        and name[0] not in ".:-<>"
    )
    if plain:
        assert check_name(name, kind) == name
    else:
        with pytest.raises(BadInput, match=f"{kind} name"):
            check_name(name, kind)


@pytest.mark.parametrize(
    "name", ["x%00y", "x\x00y", 'say"hi', "it's", "x\u200fy", "\u202eevil", "a b", "a,b", ""]
)
def test_the_python_api_refuses_the_same_names(name, tmp_path):
    app = App(database_url=f"sqlite:///{tmp_path / 'x.db'}", log_level="ERROR")
    with pytest.raises(BadInput, match="name"):
        JobSpec(task="t", queue=name)
    with pytest.raises(BadInput, match="name"):
        JobSpec(task=name or "\x00")
    with pytest.raises(BadInput, match="name"):
        app.task(name=name or " ")(lambda: None)
    with pytest.raises(BadInput, match="name"):
        app.task(name="ok", queue=name)(lambda: None)
    with pytest.raises(BadInput, match="name"):
        Schedule(name=name, cron_expression="0 1 * * *", job_type="t")
    if name and "," not in name:
        with pytest.raises(BadInput, match="queue name"):
            app.worker([name])
    assert app.registry.names() == []


def test_default_task_names_are_accepted():
    def outer():
        def inner():
            return None

        return inner

    app = App(database_url="sqlite:///:memory:", log_level="ERROR")
    task = app.task(outer())
    assert task.name.endswith("test_default_task_names_are_accepted.<locals>.outer.<locals>.inner")
    assert app.task(lambda: None).name.endswith("<lambda>")
