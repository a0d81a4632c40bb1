"""The JSON a job carries: limits and storability, for any shape (hypothesis)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledgerflow.db.backends import dumps
from ledgerflow.db.types import storable_text
from ledgerflow.errors import BadInput
from ledgerflow.payload import (
    PayloadError,
    PayloadLimits,
    _problem,
    check_json,
    compact_json,
    storable_result,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


#: Values shaped to trip a check read from the encoded text: brackets, braces and `\\u0000`
#: inside strings, keys that are not text, tuples, NUL and lone surrogates, NaN, depth.
tricky_text = st.sampled_from(["[", "{", "[[{", "\\u0000", "\x00", "\udc80", "ไ", "a\\", '"']) | st.text()
tricky_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | tricky_text,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(tricky_text | st.integers() | st.none(), inner, max_size=3)
    ),
    max_leaves=40,
)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_depth_is_counted_from_the_outer_container() -> None:
    limits = PayloadLimits(max_depth=32)
    check_json(nested(32), "args", limits)
    with pytest.raises(PayloadError, match="args: nested more than 32 levels deep"):
        check_json(nested(33), "args", limits)


def test_a_hundred_thousand_levels_are_refused_without_recursion() -> None:
    with pytest.raises(PayloadError, match="nested more than"):
        check_json(nested(100_000), "kwargs")


def test_size_is_measured_in_encoded_bytes() -> None:
    limits = PayloadLimits(max_bytes=1024)
    check_json(["x" * 1000], "args", limits)
    with pytest.raises(PayloadError, match="over the limit of 1024"):
        check_json(["ไ" * 400], "args", limits)  # 3 bytes per character


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ([float("nan")], "not a JSON number"),
        ([float("inf")], "not a JSON number"),
        (["a\x00b"], "NUL"),
        (["\udc80"], "lone surrogate"),
        ([{1: "x"}], "not a string"),
        ([object()], "is not JSON"),
        ([b"bytes"], "is not JSON"),
    ],
)
def test_unstorable_values_are_refused_with_the_reason(value: object, why: str) -> None:
    with pytest.raises(BadInput, match=why):
        check_json(value, "args")
    stored, problem = storable_result(value)
    assert stored is None and why in (problem or "")


@given(json_values)
def test_whatever_check_json_accepts_round_trips_through_storage(value: object) -> None:
    try:
        text = check_json(value, "args")
    except PayloadError:
        return
    assert json.loads(dumps(value)) == json.loads(text) == value


@given(json_values)
def test_storage_encoding_never_holds_nul_or_surrogates(value: object) -> None:
    try:
        text = dumps(value)
    except ValueError:  # NaN / infinity: refused before the database sees it
        return
    assert "\\u0000" not in text.replace("\\\\", "")
    text.encode("utf-8")  # no lone surrogate left


@given(st.text())
def test_storable_text_only_replaces_what_cannot_be_stored(value: str) -> None:
    out = storable_text(value)
    assert len(out) == len(value)
    out.encode("utf-8")
    assert "\x00" not in out
    assert all(a == b or b == "\ufffd" for a, b in zip(value, out, strict=True))


@given(tricky_values, st.integers(min_value=0, max_value=6))
def test_check_json_accepts_and_refuses_exactly_what_the_full_walk_does(value: object, depth: int) -> None:
    limits = PayloadLimits(max_depth=depth, max_bytes=64)
    why = _problem(value, depth)
    if why is None:
        text = compact_json(value)
        if len(text.encode()) > limits.max_bytes:
            why = f"{len(text.encode())} bytes encoded, over the limit of 64"
    if why is None:
        assert check_json(value, "args", limits) == text
    else:
        with pytest.raises(PayloadError) as refused:
            check_json(value, "args", limits)
        assert str(refused.value) == f"args: {why}"


def test_the_compact_encoder_writes_what_json_dumps_writes() -> None:
    value = {"a": [1, 2.5, None, True, 'ไ\n"x"'], "b": (3,), "c": {"d": -0.0}}
    assert compact_json(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    with pytest.raises(ValueError):
        compact_json([float("nan")])
    with pytest.raises(TypeError, match="bytes is not JSON serializable"):
        compact_json([b"x"])
