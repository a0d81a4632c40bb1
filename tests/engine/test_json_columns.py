"""JSON columns read through the engines' one reused decoder (`backends.loads`) decode as
`json.loads` decodes the stored text, on both backends: payloads, results, errors, metadata."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Text, cast, select

from ledgerflow.db.backends import loads
from ledgerflow.db.tables import jobs
from ledgerflow.engine.jobs import JobSpec
from ledgerflow.engine.leases import LeaseSQL, Outcome, error_record

#: Text a payload may hold (a NUL character is refused, see tests/unit/test_payload.py).
text = st.text(st.characters(blacklist_characters="\x00"))
#: JSON documents without floats: they come back equal on both backends.
exact = st.recursive(
    st.none() | st.booleans() | st.integers() | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
#: Any JSON document, floats included (PostgreSQL's jsonb keeps a number's decimal digits only).
documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


def _same_numbers(a: Any, b: Any) -> bool:
    """Equal, numbers compared by value (jsonb gives 1e300 back as its digits, -0.0 as 0.0)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b or math.isclose(a, b, rel_tol=1e-15)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_numbers(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_numbers(a[k], b[k]) for k in a)
    return a == b


def _round_trip(app, sql: LeaseSQL, value: Any) -> tuple[list[Any], dict[str, Any], Any, dict[str, Any]]:
    """Enqueue `value` as payload, claim it, complete it with `value` as result; what is read back."""
    job = app.enqueue(JobSpec("anything", args=[value], kwargs={"v": value}))
    with app.db.begin() as conn:
        (claim,) = sql.claim(conn, worker_id="w", queues=["default"], tasks=["anything"], limit=1)
        assert sql.apply_outcomes(conn, [Outcome(claim, "completed", 0.01, result=value)]) == []
    stored = app.get_job(job.id)
    with app.db.read() as conn:
        text = conn.execute(select(cast(jobs.c.result, Text)).where(jobs.c.id == job.id)).scalar_one()
    assert stored.result == json.loads(text), "decoded as json.loads decodes the stored text"
    return claim.job.args, claim.job.kwargs, stored.result, json.loads(text)


def test_json_documents_without_floats_come_back_equal(make_app):
    app = make_app()
    sql = LeaseSQL(app.db, 60)

    @settings(max_examples=60, deadline=None)
    @given(value=exact)
    def check(value: Any) -> None:
        args, kwargs, result, _ = _round_trip(app, sql, [value])
        assert args == [[value]] and kwargs == {"v": [value]} and result == [value]

    check()


def test_json_documents_with_floats_come_back_with_the_same_numbers(make_app):
    app = make_app()
    sql = LeaseSQL(app.db, 60)

    @settings(max_examples=60, deadline=None)
    @given(value=documents)
    def check(value: Any) -> None:
        args, kwargs, result, _ = _round_trip(app, sql, [value])
        assert _same_numbers(args, [[value]]) and _same_numbers(kwargs, {"v": [value]})
        assert _same_numbers(result, [value])

    check()


@pytest.mark.parametrize("value", [42, -7, 0.5, 1e300, "42", "é\u2028\U0001f600", True, False, {}, []])
def test_a_scalar_result_comes_back(make_app, value):
    """A result that is a bare number is stored by SQLite's NUMERIC affinity as a number, which
    the decoder refuses with a TypeError so that SQLAlchemy returns the number itself."""
    app = make_app()
    _, _, result, _ = _round_trip(app, LeaseSQL(app.db, 60), value)
    assert _same_numbers(result, value) and (type(result) is type(value) or isinstance(value, float))


@pytest.mark.parametrize("value", [2**63, 2**70, 1.0, 3.0e5])
def test_a_bare_number_result_keeps_its_value_and_type(make_app, request, value):
    """Pre-existing on SQLite (not from the shared decoder: 638b33e gives the same): the JSON
    column has NUMERIC affinity, so a result that is a bare number is stored as a number, an
    integer past 64 bits as a REAL (its digits lost) and an integral float as an INTEGER."""
    app = make_app()
    if app.db.is_sqlite:
        request.applymarker(pytest.mark.xfail(strict=True, reason="SQLite NUMERIC affinity of JSON columns"))
    _, _, result, _ = _round_trip(app, LeaseSQL(app.db, 60), value)
    assert result == value and type(result) is type(value)


def test_a_null_result_and_the_errors_and_metadata_documents_come_back(make_app):
    app = make_app()
    sql = LeaseSQL(app.db, 60)
    job = app.enqueue(JobSpec("anything", max_attempts=3))
    message = "ünïcode \u2028 \U0001f600"
    with app.db.begin() as conn:
        (claim,) = sql.claim(conn, worker_id="w", queues=["default"], tasks=["anything"], limit=1)
        failed = Outcome(claim, "failed", 0.01, error=error_record(1, RuntimeError(message)), retry_in=0.0)
        assert sql.apply_outcomes(conn, [failed]) == []
    with app.db.begin() as conn:
        (claim,) = sql.claim(conn, worker_id="w", queues=["default"], tasks=["anything"], limit=1)
        done = Outcome(claim, "completed", 0.01, metadata={"m": [message, 2**70]})
        assert sql.apply_outcomes(conn, [done]) == []
    stored = app.get_job(job.id)
    assert stored.result is None and [e.message for e in stored.errors] == [message]
    first, second = app.store.executions(job.id)
    assert first["error_type"] == "RuntimeError"
    assert second["execution_metadata"] == {"m": [message, 2**70]}


def test_the_decoder_takes_text_and_bytes_and_refuses_other_values_as_json_loads_does():
    for data in ("[]", b'{"a": [1, 2.5, null]}', bytearray(b'"\xc3\xa9"'), "NaN"):
        got, want = loads(data), json.loads(data)
        assert got == want or (isinstance(got, float) and math.isnan(got) and math.isnan(want))
    for value in (42, 4.2, None):
        with pytest.raises(TypeError):
            json.loads(value)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            loads(value)  # type: ignore[arg-type]
