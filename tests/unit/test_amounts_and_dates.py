"""The one amount rule and the one date rule, pure: every accepted text means exactly what it
says, and everything else is refused with the reason (hypothesis over both)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledgerflow.errors import BadInput
from ledgerflow.ledger.dates import parse_day
from ledgerflow.ledger.entries import check_built_entry
from ledgerflow.ledger.importers import parse_csv, parse_json, parse_json_lines
from ledgerflow.ledger.money import (
    MINOR_UNITS,
    format_amount,
    from_minor,
    largest_amount,
    minor_formatter,
    parse_amount,
    to_minor,
)

LIMIT = 10**15
#: The accepted form, written out independently of the code: ASCII digits, optional '-',
#: grouping commas only in threes after a non-zero first group, a point and decimals.
ACCEPTED = re.compile(r"-?(?:[1-9][0-9]{0,2}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")
currencies = st.sampled_from(sorted(MINOR_UNITS))


@st.composite
def amounts_in_range(draw: st.DrawFn) -> tuple[str, Decimal]:
    currency = draw(currencies)
    places = MINOR_UNITS[currency]
    minor = draw(st.integers(min_value=-(LIMIT * 10**places) + 1, max_value=LIMIT * 10**places - 1))
    return currency, Decimal(minor).scaleb(-places)


@given(amounts_in_range())
def test_every_amount_in_range_round_trips_through_its_text_exactly(case):
    currency, amount = case
    assert parse_amount(format_amount(amount, currency), currency) == amount
    grouped = f"{amount:,.{MINOR_UNITS[currency]}f}"  # 1,234,567.50
    assert parse_amount(grouped, currency) == amount
    if amount == amount.to_integral_value() and abs(amount) < LIMIT:
        assert parse_amount(int(amount), currency) == amount  # a JSON integer


@given(amounts_in_range())
def test_an_amount_in_minor_units_is_written_as_its_decimal_text(case):
    """The export writes amounts from integer minor units without a Decimal: the same text."""
    currency, amount = case
    minor = to_minor(amount, currency)
    assert minor_formatter(currency)(minor) == format_amount(from_minor(minor, currency), currency)


@pytest.mark.parametrize(
    ("currency", "minor", "text"),
    [("THB", 0, "0.00"), ("THB", 5, "0.05"), ("THB", -550, "-5.50"), ("JPY", -5, "-5"), ("JPY", 0, "0")],
)
def test_small_negative_and_zero_minor_amounts_keep_their_places(currency, minor, text):
    assert minor_formatter(currency)(minor) == text == format_amount(from_minor(minor, currency), currency)


@pytest.mark.parametrize(
    ("text", "currency", "value"),
    [
        ("1,234.50", "THB", "1234.50"),
        ("12,345", "JPY", "12345"),
        ("1,234,567", "JPY", "1234567"),
        ("-1,500.50", "THB", "-1500.50"),
        ("107", "THB", "107"),
        (" 107.00 ", "THB", "107.00"),
        ("0", "JPY", "0"),
        ("-0", "JPY", "0"),
        ("999999999999999.99", "THB", "999999999999999.99"),
    ],
)
def test_plain_and_validly_grouped_amounts_are_read_as_written(text, currency, value):
    assert parse_amount(text, currency) == Decimal(value)


@pytest.mark.parametrize(
    ("value", "currency", "reason"),
    [
        ("12,5", "JPY", "misplaced comma"),
        ("1,25", "JPY", "misplaced comma"),
        ("1,50", "THB", "misplaced comma"),
        ("1234,567", "JPY", "misplaced comma"),
        ("0,125", "JPY", "misplaced comma"),
        ("1,234,56", "JPY", "misplaced comma"),
        (",123", "JPY", "misplaced comma"),
        ("1,234.5,0", "THB", "misplaced comma"),
        (True, "THB", "got true"),
        (False, "THB", "got false"),
        (1.5, "THB", "a float"),
        (1.0, "THB", "a float"),
        ("1e3", "JPY", "exponent"),
        ("1E+2", "JPY", "exponent"),
        ("1_000", "JPY", "'_'"),
        ("٣", "JPY", "other than ASCII"),
        ("１００", "JPY", "other than ASCII"),
        ("१२", "JPY", "other than ASCII"),
        ("1.005", "THB", "THB has 2"),
        ("107.000", "THB", "THB has 2"),
        ("800.0", "JPY", "JPY has no decimals"),
        ("1" * 30, "JPY", "largest amount allowed is 999999999999999 JPY"),
        ("1000000000000000.00", "THB", "largest amount allowed is 999999999999999.99 THB"),
        (10**15, "JPY", "largest amount allowed"),
        pytest.param(10**5000, "JPY", "about 5001 digits", id="int-of-5001-digits"),
        ("1e400", "JPY", "exponent"),
        ("Infinity", "THB", "not a decimal number"),
        ("NaN", "THB", "not a decimal number"),
        ("+5", "THB", "not a decimal number"),
        (".5", "THB", "not a decimal number"),
        ("5.", "THB", "not a decimal number"),
        ("--5", "THB", "not a decimal number"),
        ("5 000", "THB", "not a decimal number"),
        ("\t5", "THB", "not a decimal number"),
        ([5], "THB", "got list"),
        (Decimal("1.005"), "THB", "THB has 2"),
        (Decimal("Infinity"), "THB", "not a finite number"),
        (Decimal("1E+15"), "JPY", "largest amount allowed"),
    ],
)
def test_malformed_amounts_are_refused_with_the_reason(value, currency, reason):
    with pytest.raises(BadInput, match=re.escape(reason)):
        parse_amount(value, currency, "debit")


def test_the_largest_amount_is_stated_per_currency():
    assert largest_amount("THB") == "999999999999999.99" and largest_amount("JPY") == "999999999999999"


@given(st.text(max_size=30), currencies)
def test_any_text_is_either_refused_or_read_exactly_as_written(text, currency):
    try:
        amount = parse_amount(text, currency)
    except BadInput:
        return
    written = text.strip(" ")
    if written == "":
        assert amount == 0
        return
    assert ACCEPTED.fullmatch(written), f"accepted {text!r}, which is not in the accepted form"
    assert amount == Decimal(written.replace(",", ""))


@st.composite
def malformed(draw: st.DrawFn) -> str:
    """Texts that look like amounts but are not in the accepted form."""
    digits = draw(st.text(alphabet="0123456789", min_size=1, max_size=8))
    kind = draw(st.sampled_from(["short_group", "long_group", "exponent", "underscore", "script", "spaces"]))
    if kind == "short_group":  # 12,5 / 1,25 / 1,2345
        return f"{digits},{draw(st.sampled_from(['5', '25', '2345', '50', '']))}"
    if kind == "long_group":
        return f"{digits}{draw(st.text(alphabet='0123456789', min_size=4, max_size=6))},000"
    if kind == "exponent":
        return f"{digits}{draw(st.sampled_from(['e', 'E']))}{draw(st.sampled_from(['', '+', '-']))}2"
    if kind == "underscore":
        return f"{digits}_000"
    if kind == "script":  # the same digits in another script (Arabic-Indic, full-width, Devanagari, Thai)
        base = draw(st.sampled_from([0x660, 0xFF10, 0x966, 0xE50]))
        return "".join(chr(base + int(d)) for d in digits)
    return f"{digits} {digits}"


@given(malformed(), currencies)
def test_every_generated_malformed_amount_is_refused(text, currency):
    with pytest.raises(BadInput):
        parse_amount(text, currency)


@pytest.mark.parametrize(
    ("number", "reason"),
    [("1.5", "a float"), ("1e400", "a float"), ("1" * 30, "largest amount allowed"), ("1" * 5000, "largest")],
)
def test_json_numbers_that_are_not_whole_or_too_long_are_refused_in_imports(number, reason):
    text = (
        '[{"date": "2026-11-26", "reference": "J-1", "currency": "JPY", "lines": ['
        f'{{"account": "a", "debit": {number}, "credit": "0"}},'
        f'{{"account": "b", "debit": "0", "credit": {number}}}]}}]'
    )
    with pytest.raises(BadInput, match=re.escape(reason)):
        parse_json(text, "entries.json")


def test_json_integers_and_strings_are_both_accepted():
    text = json.dumps(
        [
            {
                "date": "2026-11-26",
                "reference": "J-1",
                "currency": "JPY",
                "lines": [
                    {"account": "a", "debit": 1500, "credit": "0"},
                    {"account": "b", "debit": "0", "credit": "1,500"},
                ],
            }
        ]
    )
    [found] = parse_json(text, "entries.json")
    assert found.entry.debit_total == found.entry.credit_total == Decimal(1500)


@pytest.mark.parametrize(
    "text",
    [
        "20261129",
        "2026-W48-1",
        "2026-11-29T00:00",
        "2026-1-29",
        "29/11/2026",
        "２０２６-11-29",
        "2026-02-30",
        "",
    ],
)
def test_dates_are_yyyy_mm_dd_only(text):
    with pytest.raises(BadInput, match=re.escape(f"date {text!r} is not a date (expected YYYY-MM-DD)")):
        parse_day(text)


def test_a_date_object_is_taken_but_not_a_datetime():
    assert parse_day("2026-11-29") == parse_day(date(2026, 11, 29)) == date(2026, 11, 29)
    with pytest.raises(BadInput, match="not a date"):
        parse_day(datetime(2026, 11, 29, 12, 0))


@given(st.dates())
def test_every_date_round_trips_through_its_iso_text(day):
    assert parse_day(day.isoformat()) == day


def test_a_csv_row_spanning_lines_is_named_by_the_line_it_starts_on():
    """A quoted cell may hold line breaks: each row's place is where it starts, not where it ends."""
    text = (
        "reference,date,description,currency,account,account_name,debit,credit,tax_code,memo\r\n"
        'C-1,2026-11-27,"two\r\nlines\nand three",JPY,1000,Cash,100,0,,\r\n'
        "C-1,2026-11-27,x,JPY,4000,Sales,0,100,,\r\n"
        "\r\n"
        "D-1,2026-11-27,x,JPY,1000,Cash,1e3,0,,\r\n"
        "D-1,2026-11-27,x,JPY,4000,Sales,0,1000,,\r\n"
        "C-1,2026-11-28,x,JPY,4000,Sales,0,0,,\r\n"
    )
    with pytest.raises(BadInput) as refused:
        parse_csv(text, "e.csv")
    assert str(refused.value).splitlines()[1:] == [
        "  e.csv:9 (entry C-1): date '2026-11-28' differs from the entry's first row (e.csv:2)",
        "  e.csv:7 (entry D-1): debit '1e3' has an exponent; write the number out in full",
    ]


def one_entry(**changes: str) -> dict:
    line = {"account": "1000", "account_name": "Cash", "debit": "1", "credit": "0", "tax_code": "T"}
    line |= {k: v for k, v in changes.items() if k in line or k == "memo"}
    entry = {"reference": "R-1", "date": "2026-11-27", "currency": "JPY", "description": "d"}
    entry |= {k: v for k, v in changes.items() if k in entry}
    return entry | {"lines": [line, {"account": "4000", "debit": "0", "credit": "1"}]}


ONE_LINE_BREAKERS = ["A\nB", "A\r\nB", "A\tB", "A\x85B", "A\u2028B", "A\x07B"]


@pytest.mark.parametrize("field", ["reference", "account", "account_name", "tax_code"])
@pytest.mark.parametrize("bad", ONE_LINE_BREAKERS)
def test_references_and_account_names_are_one_line_of_printable_text(field, bad):
    """A reference or account is looked up and matched as written: a line break in it would be
    flattened in the file (never matching again) and would split every message naming it."""
    with pytest.raises(BadInput, match=f"{field} .* contains a line break, tab or control character"):
        parse_json(json.dumps([one_entry(**{field: bad})]), "e.json")
    built = parse_json(json.dumps([one_entry()]), "e.json")[0].entry
    if field == "reference":
        built = replace(built, reference=bad)
    else:
        built = replace(built, lines=(replace(built.lines[0], **{field: bad}), built.lines[1]))
    with pytest.raises(BadInput, match=f"{field} .* contains a line break, tab or control character"):
        check_built_entry(built)  # an Entry built in Python is held to the same rule


@pytest.mark.parametrize("bad", ONE_LINE_BREAKERS)
def test_descriptions_and_memos_keep_their_line_breaks_for_the_writer_to_flatten(bad):
    (located,) = parse_json(json.dumps([one_entry(description=bad, memo=bad)]), "e.json")
    assert located.entry.description == bad and located.entry.lines[0].memo == bad


def test_json_lines_are_split_at_line_feeds_only():
    """JSON allows U+2028, U+2029 and NEL raw inside a string, and JSON Lines separates records
    by '\\n' (optionally '\\r\\n'): such a memo is one record, and lines are counted by '\\n'."""
    memo = "a\u2028b\u2029c\x85d\x0ce"
    records = [json.dumps(one_entry(reference=ref, memo=memo), ensure_ascii=False) for ref in ("L-1", "L-2")]
    text = records[0] + "\r\n\n" + records[1] + "\n" + "{not json\n"
    with pytest.raises(BadInput) as refused:
        parse_json_lines(text, "e.jsonl")
    assert (
        str(refused.value)
        == "e.jsonl:4: invalid JSON at line 1 column 2: Expecting property name enclosed in double quotes"
    )
    (first, second) = parse_json_lines(text[: text.rindex("{not")], "e.jsonl")
    assert (first.place, second.place) == ("e.jsonl:1", "e.jsonl:3")
    assert first.entry.lines[0].memo == memo
