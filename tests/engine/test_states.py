"""The state machine is one table (`engine/states.MOVES`): every user action follows it on both
backends, and no guarded UPDATE or DELETE of jobs hand-writes its own list of states."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ledgerflow import Conflict, JobState
from ledgerflow.db.tables import CLAIMABLE_SQL
from ledgerflow.engine.states import CANCEL, CLAIM, MOVES, PURGE, RETRY, TRANSITIONS
from tests.api.test_job_actions import job_in

SRC = Path(__file__).resolve().parents[2] / "src" / "ledgerflow"
#: Every module that writes jobs.state (checked below to do it only through the table's moves).
WRITERS = [SRC / "engine" / "leases.py", SRC / "engine" / "store.py", SRC / "cleanup.py"]


def test_user_moves_are_apart_from_internal_ones_and_never_take_a_running_job_back():
    users = {m.name for m in MOVES.values() if m.user}
    assert users == {"retry", "cancel", "purge"}
    assert JobState.RUNNING not in RETRY.sources and JobState.AVAILABLE not in RETRY.sources
    assert set(RETRY.sources) == {JobState.DEAD, JobState.CANCELLED, JobState.RETRYABLE, JobState.SCHEDULED}
    back = {
        m.name for m in MOVES.values() if JobState.RUNNING in m.sources and m.target == JobState.AVAILABLE
    }
    assert back == {"release", "return", "rescue"} and not any(MOVES[n].user for n in back)
    assert TRANSITIONS[JobState.COMPLETED] == frozenset()
    assert TRANSITIONS[JobState.RUNNING] == {
        JobState.COMPLETED,
        JobState.RETRYABLE,
        JobState.DEAD,
        JobState.SCHEDULED,
        JobState.AVAILABLE,
        JobState.CANCELLED,
    }
    states = re.findall(r"'(\w+)'", str(CLAIMABLE_SQL))  # the partial index's literal predicate
    assert set(states) == set(CLAIM.sources)


@pytest.mark.parametrize("state", list(JobState))
def test_each_user_action_is_allowed_exactly_from_its_moves_sources(make_app, state):
    app = make_app()
    purged = job_in(app, state)
    assert app.store.purge_dead() == (1 if state in PURGE.sources else 0)
    assert [j.id for j in app.store.list()] == ([] if state in PURGE.sources else [purged])

    retried = job_in(app, state)
    if state in RETRY.sources:
        assert app.store.retry(retried).state == RETRY.target
    else:
        with pytest.raises(Conflict, match=f"job {retried} is {state}"):
            app.store.retry(retried)
        assert app.get_job(retried).state == state

    cancelled = job_in(app, state)
    if state in CANCEL.sources:
        assert app.store.cancel(cancelled).state == CANCEL.target
    else:
        with pytest.raises(Conflict, match=f"job {cancelled} is {state} and cannot be cancelled"):
            app.store.cancel(cancelled)
        assert app.get_job(cancelled).state == state


def _is_jobs_write(node: ast.AST) -> bool:
    """`update(jobs)` or `delete(jobs)` at the root of a method chain."""
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        node = node.func.value
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("update", "delete")
        and bool(node.args)
        and isinstance(node.args[0], ast.Name)
        and node.args[0].id == "jobs"
    )


def _hand_written_states(node: ast.AST) -> list[str]:
    names = {s.value for s in JobState}
    found = []
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in ("S", "JobState"):
            found.append(f"{n.value.id}.{n.attr}")
        elif isinstance(n, ast.Constant) and n.value in names:
            found.append(repr(n.value))
    return found


def test_no_guarded_write_of_jobs_lists_its_own_states():
    problems = []
    guards = 0
    for path in WRITERS:
        text = path.read_text()
        writes = len(re.findall(r"\b(?:update|delete)\(jobs\)", text))
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            if isinstance(node.func, ast.Name) and node.func.id == "_delete":  # cleanup's chunked delete
                if isinstance(node.args[1], ast.Name) and node.args[1].id == "jobs":
                    writes += 1
                    guards += 1
                    checked: list[ast.AST] = node.args[3:]
                else:
                    continue
            elif (
                isinstance(node.func, ast.Attribute)
                and node.func.attr in ("where", "values")
                and _is_jobs_write(node.func.value)
            ):
                if node.func.attr == "where":
                    guards += 1
                    checked = list(node.args)
                else:
                    checked = [k.value for k in node.keywords if k.arg == "state"]
            else:
                continue
            problems += [f"{path.name}:{node.lineno}: {s}" for c in checked for s in _hand_written_states(c)]
        assert guards == writes, f"{path.name}: every write of jobs has one WHERE, and the check saw each"
        guards = 0
    assert problems == []
