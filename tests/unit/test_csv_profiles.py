"""CSV safety and the importer layouts, pure: golden files, neutralising, amounts, encodings."""

from __future__ import annotations

import csv
import io
import os
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from ledgerflow import BadInput
from ledgerflow.export.profiles import (
    PROFILES,
    check_entry,
    format_date,
    get_profile,
    neutralise_text,
    rows_for,
)
from ledgerflow.export.writer import write_parts
from ledgerflow.ledger.entries import Entry, Line, parse_entry

GOLDEN = Path(__file__).parent.parent / "golden"


def thb_entry(**overrides) -> Entry:
    obj = {
        "date": "2026-11-26",
        "reference": "INV-0042",
        "description": 'ค่าเครื่องเขียน, "ด่วน"\nบรรทัดสอง',
        "currency": "THB",
        "lines": [
            {
                "account": "5100",
                "account_name": "วัสดุสำนักงาน",
                "debit": "100.00",
                "credit": "0",
                "tax_code": "VAT7",
                "memo": '=HYPERLINK("http://evil")',
            },
            {"account": "1150", "account_name": "ภาษีซื้อ", "debit": "7.00", "credit": "0", "tax_code": "VAT7"},
            {"account": "1000", "account_name": "@cash", "debit": "0", "credit": "107.00", "memo": "-1500"},
        ],
    }
    obj.update(overrides)
    return parse_entry(obj)


def jpy_entry() -> Entry:
    return parse_entry(
        {
            "date": "2026-11-26",
            "reference": "R-7",
            "description": "会議用お茶代 ＝特別",
            "currency": "JPY",
            "lines": [
                {
                    "account": "5400",
                    "account_name": "会議費",
                    "debit": "800",
                    "credit": "0",
                    "tax_code": "課税仕入8%",
                },
                {"account": "1190", "account_name": "仮払消費税", "debit": "64", "credit": "0"},
                {
                    "account": "1000",
                    "account_name": "現金",
                    "debit": "0",
                    "credit": "864",
                    "memo": "＋領収書",
                },
            ],
        }
    )


@pytest.mark.parametrize(
    "text",
    ["=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "\nx", "\x00x", "＝1", "＋1", "－1", "＠x", "  =1+2"],
)
def test_formula_cells_are_neutralised_with_a_leading_quote(text):
    assert neutralise_text(text) == "'" + text


@pytest.mark.parametrize("text", ["", "Office supplies", "ค่าเครื่องเขียน", "会議費", "1-2", "a=b", "'quoted"])
def test_ordinary_text_is_left_alone(text):
    assert neutralise_text(text) == text


def test_amount_cells_stay_plain_numbers_even_negative_and_decimal():
    entry = parse_entry(
        {
            "date": "2026-11-26",
            "reference": "NEG-1",
            "currency": "THB",
            "description": "contra",
            "lines": [
                {"account": "4000", "debit": "-1500.50", "credit": "0"},
                {"account": "1000", "debit": "0", "credit": "-1500.50"},
            ],
        }
    )
    rows = rows_for(entry, PROFILES["generic"], 1)
    assert rows[0][5] == "-1500.50" and rows[1][6] == "-1500.50"


def test_generic_csv_round_trips_quotes_commas_newlines_thai_and_japanese(tmp_path):
    entries = [(thb_entry(), False), (jpy_entry(), True)]
    generated = write_parts(iter(entries), PROFILES["generic"], tmp_path, "batch", timeout=30)
    data = (tmp_path / "batch.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and b"\r\n" in data
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    assert rows[0][0] == "entry_reference"
    assert rows[1][4] == 'ค่าเครื่องเขียน, "ด่วน"\nบรรทัดสอง'  # quoting kept it one cell
    assert rows[1][9] == '\'=HYPERLINK("http://evil")'
    assert rows[3][3] == "'@cash" and rows[3][9] == "'-1500"  # text that looks numeric is text
    assert rows[4][4] == "会議用お茶代 ＝特別" and rows[6][9] == "'＋領収書"
    assert generated.totals_text() == {
        "JPY": {"debit": "864", "credit": "864"},
        "THB": {"debit": "107.00", "credit": "107.00"},
    }
    assert generated.late == ["R-7"] and generated.entry_count == 2 and generated.line_count == 6


@pytest.mark.parametrize("profile", ["generic", "yayoi", "moneyforward", "freee"])
def test_profile_output_matches_its_golden_file(tmp_path, profile):
    entries = [jpy_entry()] if profile != "generic" else [thb_entry(), jpy_entry()]
    write_parts(((e, False) for e in entries), PROFILES[profile], tmp_path, "golden", timeout=30)
    produced = (tmp_path / "golden.csv").read_bytes()
    golden = GOLDEN / f"{profile}.csv"
    if os.environ.get("LEDGERFLOW_UPDATE_GOLDEN"):
        golden.write_bytes(produced)
    assert produced == golden.read_bytes()


def test_yayoi_rows_have_25_columns_flags_and_integer_yen_in_cp932():
    rows = rows_for(jpy_entry(), PROFILES["yayoi"], 12)
    assert all(len(r) == 25 for r in rows)
    assert [r[0] for r in rows] == ["2110", "2100", "2101"]
    assert rows[0][1] == "12" and rows[0][3] == "2026/11/26"
    assert rows[0][4] == "会議費" and rows[0][8] == "800" and rows[0][14] == "0"
    assert rows[2][10] == "現金" and rows[2][14] == "864" and rows[2][8] == "0"
    assert rows[0][24] == "no" and PROFILES["yayoi"].encoding == "cp932" and PROFILES["yayoi"].header is None


def test_moneyforward_has_the_27_column_header_and_one_transaction_number_per_entry():
    profile = PROFILES["moneyforward"]
    assert profile.header is not None and len(profile.header) == 27 and profile.header[0] == "取引No"
    rows = rows_for(jpy_entry(), profile, 3)
    assert (
        all(len(r) == 27 for r in rows)
        and {r[0] for r in rows} == {"3"}
        and {r[1] for r in rows} == {"2026/11/26"}
    )


def test_japanese_layouts_refuse_other_currencies_negatives_and_unencodable_text():
    with pytest.raises(BadInput, match="currency THB is not supported"):
        check_entry(thb_entry(), PROFILES["yayoi"])
    negative = parse_entry(
        {
            "date": "2026-11-26",
            "reference": "N-1",
            "currency": "JPY",
            "lines": [
                {"account": "a", "debit": "-5", "credit": "0"},
                {"account": "b", "debit": "0", "credit": "-5"},
            ],
        }
    )
    with pytest.raises(BadInput, match=r"N-1 .*negative amount"):
        check_entry(negative, PROFILES["freee"])
    thai = parse_entry(
        {
            "date": "2026-11-26",
            "reference": "TH-1",
            "currency": "JPY",
            "description": "ค่ากาแฟ",
            "lines": [
                {"account": "a", "debit": "5", "credit": "0"},
                {"account": "b", "debit": "0", "credit": "5"},
            ],
        }
    )
    with pytest.raises(BadInput, match=r"entry TH-1 .*'ค' cannot be written in cp932"):
        check_entry(thai, PROFILES["yayoi"])


def test_generic_options_buddhist_dates_and_cp874_without_bom():
    profile = get_profile("generic", bom=False, date_style="buddhist", encoding="cp874")
    assert format_date(date(2026, 11, 26), "buddhist") == "26/11/2569"
    assert format_date(date(2026, 11, 26), "dmy") == "26/11/2026"
    assert rows_for(thb_entry(), profile, 1)[0][1] == "26/11/2569"
    check_entry(thb_entry(description="ค่าเครื่องเขียน"), profile)
    with pytest.raises(BadInput, match="cannot be written in cp874"):
        check_entry(jpy_entry(), profile)
    with pytest.raises(BadInput, match="unknown encoding"):
        get_profile("generic", encoding="klingon")


def test_files_split_into_parts_only_between_entries(tmp_path):
    profile = PROFILES["generic"].with_options()
    small = type(profile)(**{**profile.__dict__, "max_rows": 8})  # header + 7 rows per file
    entries = [(thb_entry(reference=f"E-{i}"), False) for i in range(5)]  # 3 rows each
    generated = write_parts(iter(entries), small, tmp_path, "split", timeout=30)
    names = [p.name for p in generated.parts]
    assert names == ["split_part01.csv", "split_part02.csv", "split_part03.csv"]
    assert [p.rows for p in generated.parts] == [6, 6, 3] and [p.entries for p in generated.parts] == [
        2,
        2,
        1,
    ]
    for part in generated.parts:
        refs = {r[0] for r in csv.reader(io.StringIO(part.path.read_text("utf-8-sig"), newline=""))} - {
            "entry_reference"
        }
        assert all(
            sum(1 for p in generated.parts if ref in p.path.read_text("utf-8-sig")) == 1 for ref in refs
        )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"lines": []}, "at least one line"),
        ({"date": "2026-13-01"}, "bad date '2026-13-01'"),
        ({"currency": "XYZ"}, "unknown currency 'XYZ'"),
        (
            {
                "lines": [
                    {"account": "a", "debit": "107.00", "credit": "0"},
                    {"account": "b", "debit": "0", "credit": "100"},
                ]
            },
            "unbalanced: debits 107.00 != credits 100.00 THB",
        ),
        (
            {
                "lines": [
                    {"account": "a", "debit": "1.005", "credit": "0"},
                    {"account": "b", "debit": "0", "credit": "1.005"},
                ]
            },
            "more decimals than THB allows",
        ),
        (
            {
                "lines": [
                    {"account": "a", "debit": 1.5, "credit": "0"},
                    {"account": "b", "debit": "0", "credit": "1.5"},
                ]
            },
            "must be a decimal string",
        ),
        (
            {
                "lines": [
                    {"account": "a", "debit": "5", "credit": "5"},
                    {"account": "b", "debit": "0", "credit": "0"},
                ]
            },
            "either a debit or a credit",
        ),
    ],
)
def test_bad_entries_are_refused_with_one_clear_message(change, problem):
    obj = {
        "date": "2026-11-26",
        "reference": "INV-1",
        "currency": "THB",
        "lines": [
            {"account": "a", "debit": "1", "credit": "0"},
            {"account": "b", "debit": "0", "credit": "1"},
        ],
    }
    obj.update(change)
    with pytest.raises(BadInput, match=f"INV-1.*{_escape(problem)}"):
        parse_entry(obj)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_yen_amounts_are_whole_and_money_is_exact():
    with pytest.raises(BadInput, match="more decimals than JPY allows"):
        parse_entry(
            {
                "date": "2026-11-26",
                "reference": "J",
                "currency": "JPY",
                "lines": [
                    {"account": "a", "debit": "10.5", "credit": "0"},
                    {"account": "b", "debit": "0", "credit": "10.5"},
                ],
            }
        )
    entry = Entry(
        "X",
        date(2026, 1, 1),
        "",
        "THB",
        (
            Line("a", "", Decimal("0.10"), Decimal(0)),
            Line("b", "", Decimal("0.20"), Decimal(0)),
            Line("c", "", Decimal(0), Decimal("0.30")),
        ),
    )
    assert entry.debit_total == entry.credit_total
