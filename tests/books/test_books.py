"""Books an accountant can trust (issue 12), through the real CLI and HTTP API on SQLite and
PostgreSQL: strict amounts and dates, importer-clean files, corrections that work, and every
bad entry of an import named with its place."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import timedelta

import pytest

from tests.books.conftest import D, future_day, jpy_entry
from tests.conftest import ROOT

THB = {
    "date": "2026-11-26",
    "reference": "T-1",
    "description": "ค่ากาแฟ",
    "currency": "THB",
    "lines": [
        {"account": "5100", "account_name": "Meals", "debit": "1,234.50", "credit": "0"},
        {"account": "1000", "account_name": "Cash", "debit": "0", "credit": "1234.50"},
    ],
}

#: (currency, amount as sent in JSON, what the refusal says)
BAD_AMOUNTS = [
    ("JPY", "12,5", "misplaced comma"),
    ("JPY", "1,25", "misplaced comma"),
    ("THB", "1,50", "misplaced comma"),
    ("THB", True, "got true"),
    ("THB", 1.5, "a float"),
    ("JPY", "1_000", "'_'"),
    ("JPY", "٣", "other than ASCII"),
    ("JPY", "１００", "other than ASCII"),
    ("THB", "1.005", "THB has 2"),
    ("JPY", "1" * 30, "largest amount allowed is 999999999999999 JPY"),
    ("JPY", 10**29, "largest amount allowed is 999999999999999 JPY"),
    ("JPY", "1e400", "exponent"),
]


def with_amount(ref: str, currency: str, amount: object) -> dict[str, object]:
    return {
        **THB,
        "reference": ref,
        "currency": currency,
        "lines": [
            {"account": "5100", "debit": amount, "credit": "0"},
            {"account": "1000", "debit": "0", "credit": amount},
        ],
    }


def csv_rows(path, encoding: str = "utf-8-sig") -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_bytes().decode(encoding), newline="")))


# ------------------------------------------------------------------ amounts
def test_an_import_refuses_every_malformed_amount_naming_each_and_stores_nothing(cli, write_json):
    entries = [with_amount(f"A-{n}", cur, amount) for n, (cur, amount, _) in enumerate(BAD_AMOUNTS)]
    path = write_json("amounts.json", [THB, *entries])
    code, _, err = cli("entries", "import", str(path))
    assert code == 2 and "Traceback" not in err and "unexpected" not in err
    assert f"{len(BAD_AMOUNTS)} problems, nothing stored" in err
    for n, (_, _, reason) in enumerate(BAD_AMOUNTS):
        line = next(ln for ln in err.splitlines() if f"(entry A-{n})" in ln)
        assert f"item {n + 2} (line 1)" in line and reason in line, line
    assert json.loads(cli("entries", "list", "--json")[1]) == []


def test_valid_grouping_is_read_as_written_and_a_json_integer_is_accepted(cli, write_json):
    whole = {**with_amount("J-1", "JPY", 12345), "lines": [*with_amount("J-1", "JPY", 12345)["lines"]]}
    whole["lines"][1]["credit"] = "12,345"
    assert cli("entries", "import", str(write_json("ok.json", [THB, whole])))[0] == 0
    shown = json.loads(cli("entries", "show", "T-1", "--json")[1])
    assert [ln["debit"] for ln in shown["lines"]] == ["1234.50", "0.00"]
    assert json.loads(cli("entries", "show", "J-1", "--json")[1])["lines"][1]["credit"] == "12345"


@pytest.mark.parametrize(("currency", "amount", "reason"), BAD_AMOUNTS)
def test_the_api_refuses_each_malformed_amount_with_a_400_naming_it(make_service, currency, amount, reason):
    service = make_service()
    if amount == "1e400":  # as a JSON number, not a string: the body is sent as written
        body = json.dumps(with_amount("A-1", currency, 0)).replace('"debit": 0', '"debit": 1e400')
        r = service.post("/api/entries", content=body, headers={"Content-Type": "application/json"})
        reason = "a float"
    else:
        r = service.post("/api/entries", json=with_amount("A-1", currency, amount))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "bad_input" and "A-1" in error["message"] and reason in error["message"]
    assert service.get("/api/entries").json()["entries"] == []


# ------------------------------------------------------------------ dates
@pytest.mark.parametrize("day", ["20261129", "2026-W48-1", "2026-11-29T10:00"])
def test_dates_other_than_yyyy_mm_dd_are_refused_everywhere(cli, write_json, make_service, day):
    code, _, err = cli("entries", "import", str(write_json("d.json", [{**THB, "date": day}])))
    assert code == 2 and f"date {day!r} is not a date (expected YYYY-MM-DD)" in err
    for args in (("export", "run", "--date", day), ("entries", "reverse", "T-1", "--date", day)):
        code, _, err = cli(*args)
        assert code == 2 and f"--date {day!r} is not a date (expected YYYY-MM-DD)" in err
    service = make_service()
    for path, body in (
        ("/api/entries", {**THB, "date": day}),
        ("/api/exports/run", {"date": day}),
        ("/api/entries/T-1/reverse", {"date": day}),
    ):
        r = service.post(path, json=body)
        assert r.status_code == 400 and "is not a date (expected YYYY-MM-DD)" in r.json()["error"]["message"]


def test_a_batch_date_after_today_in_the_export_zone_is_refused(cli, write_json, make_service):
    day = future_day()
    cli("entries", "import", str(write_json("e.json", [{**THB, "date": day.isoformat()}])))
    for args in (("export", "run", "--date", day.isoformat()), ("export", "run", "--date", "9999-12-31")):
        code, _, err = cli(*args)
        assert code == 2 and "is after today" in err and "Asia/Bangkok" in err
    code, _, err = cli("export", "run", "--date", day.isoformat(), "--dry-run")
    assert code == 2 and "is after today" in err
    service = make_service()
    r = service.post("/api/exports/run", json={"date": "9999-12-31"})
    assert r.status_code == 400 and "9999-12-31 is after today" in r.json()["error"]["message"]
    assert service.get("/api/exports").json()["batches"] == []
    assert json.loads(cli("entries", "list", "--json")[1])[0]["export_status"] == "queued"
    assert cli("export", "run", "--date", (day - timedelta(days=2)).isoformat())[0] == 0  # today is fine


# ------------------------------------------------------------------ importer-clean files
NASTY_TEXT = "一行目\r\n#二行目\tタブ\x0b縦\u2028段落\n=SUM(A1)"


@pytest.mark.parametrize("profile", ["generic", "yayoi", "moneyforward", "freee"])
def test_an_exported_file_has_one_physical_line_per_journal_line(cli, env, write_json, tmp_path, profile):
    env(EXPORT_PROFILE=profile)
    entries = [
        jpy_entry("N-1", description=NASTY_TEXT),
        {**jpy_entry("N-2"), "lines": [{**ln, "memo": NASTY_TEXT} for ln in jpy_entry("N-2")["lines"]]},
    ]
    assert cli("entries", "import", str(write_json("n.json", entries)))[0] == 0
    assert cli("export", "run", "--date", D.isoformat())[0] == 0
    data = (tmp_path / "out" / f"journal_{profile}_{D.isoformat()}.csv").read_bytes()
    text = data.decode("cp932" if profile == "yayoi" else "utf-8-sig")
    header = 0 if profile == "yayoi" else 1
    assert len(text.splitlines()) == 6 + header and text.count("\r\n") == 6 + header
    assert not any(line.startswith("#") for line in text.splitlines())
    manifest = json.loads((tmp_path / "out" / f"journal_{profile}_{D.isoformat()}.manifest.json").read_text())
    assert manifest["text_cells_changed"]["line_breaks_and_controls"] > 0


def test_yayoi_field_limits_are_checked_when_entries_are_recorded(cli, env, write_json, make_service):
    env(EXPORT_PROFILE="yayoi")
    big = jpy_entry("Y-1", amount="100000000000")  # 12 digits
    long_name = jpy_entry("Y-2")
    long_name["lines"][0]["account_name"] = "長" * 21
    code, _, err = cli("entries", "import", str(write_json("y.json", [big, long_name])))
    assert code == 2 and "2 problems, nothing stored" in err
    assert "entry Y-1 (yayoi profile): line 1 amount 100000000000 is too large" in err
    assert f"entry Y-2 (yayoi profile): line 1 account '{'長' * 21}' has 21 characters" in err
    r = make_service(export_profile="yayoi").post("/api/entries", json=big)
    assert r.status_code == 400 and "at most 9 digits (999999999)" in r.json()["error"]["message"]
    assert json.loads(cli("entries", "list", "--json")[1]) == []


def test_an_encoding_that_cannot_hold_the_bom_stops_start_up_naming_both_variables(db_url, tmp_path):
    env = {
        "LEDGERFLOW_DATABASE_URL": db_url,
        "LEDGERFLOW_EXPORT_ENCODING": "cp874",
        "LEDGERFLOW_EXPORT_DESTINATION": f"file://{tmp_path / 'out'}",
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
    }
    for command in (["worker", "--burst"], ["export", "run"]):
        done = subprocess.run(
            [sys.executable, "-m", "ledgerflow", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == (
            "error: LEDGERFLOW_EXPORT_ENCODING=cp874 with LEDGERFLOW_EXPORT_BOM=true (the default): "
            "encoding cp874 cannot hold a byte-order mark; set LEDGERFLOW_EXPORT_BOM=false"
        )
    env["LEDGERFLOW_EXPORT_BOM"] = "false"
    ok = subprocess.run(
        [sys.executable, "-m", "ledgerflow", "init"], env=env, capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(("guard", "memo", "changed"), [(None, "'-5% 値引き", 1), ("false", "-5% 値引き", 0)])
def test_the_formula_guard_is_a_setting_and_the_manifest_counts_its_changes(
    cli, env, write_json, tmp_path, guard, memo, changed
):
    env(EXPORT_PROFILE="moneyforward", EXPORT_FORMULA_GUARD=guard)
    entry = jpy_entry("F-1")
    entry["lines"][2]["memo"] = "-5% 値引き"
    cli("entries", "import", str(write_json("f.json", [entry])))
    assert cli("export", "run", "--date", D.isoformat())[0] == 0
    rows = csv_rows(tmp_path / "out" / f"journal_moneyforward_{D.isoformat()}.csv")
    assert rows[3][19] == memo
    manifest = json.loads(
        (tmp_path / "out" / f"journal_moneyforward_{D.isoformat()}.manifest.json").read_text()
    )
    assert manifest["formula_guard"] is (guard is None)
    assert manifest["text_cells_changed"]["formula_guard"] == changed


@pytest.mark.parametrize(("profile", "column"), [("yayoi", 9), ("moneyforward", 9), ("freee", 6)])
def test_a_tax_line_fills_the_importers_tax_amount_column(cli, env, write_json, tmp_path, profile, column):
    env(EXPORT_PROFILE=profile)
    cli("entries", "import", str(write_json("t.json", [jpy_entry("TAX-1", amount="1000")])))
    assert cli("export", "run", "--date", D.isoformat())[0] == 0
    path = tmp_path / "out" / f"journal_{profile}_{D.isoformat()}.csv"
    rows = csv_rows(path, "cp932" if profile == "yayoi" else "utf-8-sig")[0 if profile == "yayoi" else 1 :]
    assert [r[column] for r in rows] == ["80", "", ""]


# ------------------------------------------------------------------ corrections
def test_a_reversal_is_never_dated_before_its_original(cli, write_json, make_service):
    late = {**THB, "date": "2026-11-28"}
    cli("entries", "import", str(write_json("r.json", [late])))
    assert cli("export", "run", "--date", "2026-11-28")[0] == 0
    code, _, err = cli("entries", "reverse", "T-1", "--date", "2026-11-27")
    assert code == 2 and "cannot be dated 2026-11-27, before the entry itself (2026-11-28)" in err
    service = make_service()
    r = service.post("/api/entries/T-1/reverse", json={"date": "2026-11-01"})
    assert r.status_code == 400 and "before the entry itself" in r.json()["error"]["message"]
    r = service.post("/api/entries/T-1/reverse", json={"date": "2026-11-28"})
    assert r.status_code == 201 and r.json()["date"] == "2026-11-28" and r.json()["reference"] == "REV-T-1"


def test_only_entries_in_the_books_are_reversed_and_a_held_back_one_is_corrected_by_upsert(
    cli, env, write_json, tmp_path
):
    thai = jpy_entry("H-1", description="ค่ากาแฟ")  # recorded while the profile was generic
    cli("entries", "import", str(write_json("h.json", [thai, jpy_entry("OK-1")])))
    code, _, err = cli("entries", "reverse", "OK-1", "--date", D.isoformat())
    assert code == 1 and "has not been exported yet, so it is not in the books" in err and "--upsert" in err
    env(EXPORT_PROFILE="yayoi")  # cp932 cannot hold Thai: H-1 is held back at export
    cli("export", "run", "--date", D.isoformat())
    assert json.loads(cli("entries", "show", "H-1", "--json")[1])["export"]["status"] == "failed"
    code, _, err = cli("entries", "reverse", "H-1", "--date", D.isoformat())
    assert code == 1 and "held back from the export and never reached the books" in err and "cp932" in err
    fixed = write_json("fixed.json", [jpy_entry("H-1", description="コーヒー代")])
    code, out, err = cli("entries", "import", str(fixed), "--upsert")
    assert code == 0, err
    assert json.loads(cli("entries", "show", "H-1", "--json")[1])["export"]["status"] == "queued"
    assert cli("export", "run", "--date", (D + timedelta(days=1)).isoformat())[0] == 0
    assert json.loads(cli("entries", "show", "H-1", "--json")[1])["export"]["status"] == "completed"
    code, _, err = cli("entries", "import", str(fixed), "--upsert")
    assert code == 1 and "already exported; record a reversal instead" in err
    assert cli("entries", "reverse", "OK-1", "--date", D.isoformat())[0] == 0


# ------------------------------------------------------------------ import errors
def test_a_csv_import_names_every_bad_entry_with_its_line_and_stores_nothing(cli, write_json):
    path = write_json(
        "bad.csv",
        "reference,date,description,currency,account,account_name,debit,credit,tax_code,memo\n"
        "A-1,2026-11-26,ok,THB,5100,Supplies,10.00,0,,\n"
        "A-1,2026-11-26,ok,THB,1000,Cash,0,10.00,,\n"
        "B-1,2026-11-26,bad,THB,5100,Supplies,10.00,0,,\n"
        "B-1,2026-11-26,bad,THB,1000,Cash,0,9.00,,\n"
        "C-1,20261126,bad date,THB,5100,Supplies,1.00,0,,\n"
        "C-1,20261126,bad date,THB,1000,Cash,0,1.00,,\n"
        'D-1,2026-11-26,bad amount,THB,5100,Supplies,"1,50",0,,\n'
        "D-1,2026-11-26,bad amount,THB,1000,Cash,0,1.50,,\n"
        "E-1,2026-11-26,short row,THB\n",
    )
    code, _, err = cli("entries", "import", str(path))
    lines = err.strip().splitlines()
    assert code == 2 and lines[0] == "error: 4 problems, nothing stored:"
    assert any(f"{path}:4 (entry B-1): unbalanced" in ln for ln in lines)
    assert any(f"{path}:6 (entry C-1): date '20261126' is not a date" in ln for ln in lines)
    assert any(f"{path}:8 (entry D-1): debit '1,50' has a misplaced comma" in ln for ln in lines)
    assert any(f"{path}:10: wrong number of fields" in ln for ln in lines)
    assert json.loads(cli("entries", "list", "--json")[1]) == []


def test_json_lines_and_lists_name_the_line_or_item_and_the_report_is_capped(cli, write_json):
    good, bad = jpy_entry("G-1"), {**jpy_entry("B-1"), "date": "2026-11-31"}
    jsonl = write_json("e.jsonl", "\n".join(json.dumps(e) for e in (good, bad, {"reference": "X"})) + "\n")
    code, _, err = cli("entries", "import", str(jsonl))
    assert code == 2 and f"{jsonl}:2 (entry B-1): date '2026-11-31' is not a date" in err
    assert f"{jsonl}:3 (entry X): date None is not a date" in err
    listing = write_json("e.json", "[\n" + ",\n".join(json.dumps(e) for e in (good, good, bad)) + "\n]")
    code, _, err = cli("entries", "import", str(listing))
    assert (
        f"{listing} item 2 (line 3): reference G-1 appears twice in the file (first at {listing} item 1"
        in err
    )
    assert f"{listing} item 3 (line 4) (entry B-1): date '2026-11-31'" in err
    many = write_json("many.json", [{**jpy_entry(f"M-{n}"), "currency": "XYZ"} for n in range(60)])
    code, _, err = cli("entries", "import", str(many))
    lines = err.strip().splitlines()
    assert code == 2 and lines[0] == "error: 60 problems, nothing stored:"
    assert len(lines) == 1 + 50 + 1 and lines[-1].strip() == "… and 10 more"
    assert json.loads(cli("entries", "list", "--json")[1]) == []
