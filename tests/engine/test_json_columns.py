"""JSON columns read through the engines' one reused decoder (`backends.loads`) decode as
`json.loads` decodes the stored text, on both backends: payloads, results, errors, metadata.
SQLite stores a document as its text (TEXT affinity, migration 0017), bare numbers included."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Text, cast, select

from ledgerflow import current_job
from ledgerflow.db.backends import loads
from ledgerflow.db.database import Database
from ledgerflow.db.tables import jobs, metadata
from ledgerflow.db.types import Json
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


#: Documents a bare number, a string that looks like one, a boolean or null: NUMERIC affinity
#: (a SQLite column declared JSON) stored the numbers as numbers, changing some of them.
bare = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([-0.0, 0.0, 1.0, 3.0e5, 1e300, -1e22, 2.0**63, 0.30000000000000004, 2**63, -(2**70)])
    | st.from_regex(r"-?[0-9]{1,25}(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?", fullmatch=True)
    | st.booleans()
    | st.none()
)


def assert_kept(backend: str, got: Any, value: Any) -> None:
    """The document as the backend's contract keeps it.

    SQLite keeps the JSON text as encoded: the same text again (type, sign of zero, every digit).
    PostgreSQL's jsonb keeps a number as `numeric` (https://www.postgresql.org/docs/current/
    datatype-json.html): its exact decimal value, written out in full (1e300 comes back as the
    integer 10**300), and no negative zero (-0.0 comes back as 0.0)."""
    if backend == "sqlite" or not isinstance(value, float) or isinstance(value, bool):
        assert json.dumps(got) == json.dumps(value), (got, value)
        assert type(got) is type(value)
        return
    assert isinstance(got, float | int) and not isinstance(got, bool)
    assert Decimal(json.dumps(got)) == Decimal(json.dumps(value)), (got, value)
    if "e" not in json.dumps(value):
        assert type(got) is float  # written with a fraction: it keeps it (1.0 stays 1.0)
    if value == 0:
        assert math.copysign(1, got) == 1.0  # numeric has no negative zero


@pytest.mark.parametrize(
    "value",
    [42, -7, 0.5, 2**63, 2**70, -(2**70), 1.0, -0.0, 3.0e5, 1e300, 2.0**63, "12", "1.0", True, False, {}, []],
)
def test_a_bare_document_is_stored_as_the_backend_keeps_json(make_app, backend, value):
    """A bare number above all: SQLite's NUMERIC affinity (a column declared JSON) stored 2**63 as
    a REAL, 1.0 as 1 and -0.0 as 0 (a NULL result: `test_a_null_result_...`)."""
    app = make_app()
    _, _, result, _ = _round_trip(app, LeaseSQL(app.db, 60), value)
    assert_kept(backend, result, value)


def test_payload_result_and_metadata_that_are_bare_numbers_strings_booleans_or_null_pass_a_worker(
    make_app, backend
):
    """Through the public path: enqueue, a worker runs the task (which sees its arguments as
    stored), returns the value and sets it as metadata; the job and its execution are read back."""
    app = make_app()
    seen: list[Any] = []

    @app.task(name="echo")
    def echo(value: Any, *, again: Any) -> Any:
        seen.append((value, again))
        current_job().set_metadata({"v": value})
        return value

    @settings(max_examples=40, deadline=None)
    @given(value=bare)
    def check(value: Any) -> None:
        seen.clear()
        job = echo.enqueue(value, again=value)
        app.run_worker(burst=True)
        stored = app.get_job(job.id)
        assert stored.state == "completed", stored.errors
        ((got, again),) = seen
        assert_kept(backend, got, value)
        assert_kept(backend, again, value)
        assert_kept(backend, stored.result, value)
        assert_kept(backend, app.store.executions(job.id)[-1]["execution_metadata"]["metadata"]["v"], value)

    check()


def test_an_error_whose_message_looks_like_a_number_keeps_it(make_app):
    app = make_app()

    @app.task(name="fails", max_attempts=1)
    def fails() -> None:
        raise RuntimeError("1.0")

    job = fails.enqueue()
    app.run_worker(burst=True)
    assert [e.message for e in app.get_job(job.id).errors] == ["1.0"]


def test_every_json_column_is_declared_text_on_sqlite(db_url):
    """TEXT affinity stores text as given (https://www.sqlite.org/datatype3.html); a column
    declared JSON has NUMERIC affinity. Every JSON column of the schema, as the database has it."""
    db = Database(db_url)
    try:
        columns = [(t.name, c.name) for t in metadata.sorted_tables for c in t.columns if c.type is Json]
        assert len(columns) == 18
        with db.read() as conn:
            if db.is_sqlite:
                declared = {
                    (t, row[1]): row[2]
                    for t in {t for t, _ in columns}
                    for row in conn.exec_driver_sql(f"PRAGMA table_xinfo({t})")
                }
                assert {declared[c] for c in columns} == {"TEXT"}
            else:
                query = "SELECT table_name, column_name, data_type FROM information_schema.columns"
                declared = {(t, c): kind for t, c, kind in conn.exec_driver_sql(query)}
                assert {declared[c] for c in columns} == {"jsonb"}
    finally:
        db.dispose()


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
