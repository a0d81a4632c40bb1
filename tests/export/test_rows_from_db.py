"""The export's rows as streamed from the database are the rows of the recorded entries.

Entries are recorded once, then exported by every layout (parts of a few rows, so entries
meet part boundaries): the dry run's files are the real run's, byte for byte; both are the
files `write_parts` makes from the recorded `Entry` values; the manifest's counts and totals
are the files' own; entries a layout cannot hold are held back by reference, none of their
rows written.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ledgerflow.export.profiles import Profile, entry_rows
from ledgerflow.export.saga import ExportSaga
from ledgerflow.export.writer import file_totals, write_parts
from ledgerflow.ledger.entries import parse_entry
from tests.export.conftest import D, entry

#: Texts a spreadsheet reads as formulas, or that a layout's encoding or line rule changes.
#: Texts a spreadsheet reads as formulas or whose control characters a layout flattens.
TEXTS = ["=SUM(A1)", "+1", "-2", "@x", "\tx", "\rx", "'q", 'q"u,', "ok"]
#: Texts only some layouts' encodings hold (cp932, TIS-620).
FOREIGN = ["ก้อน", "売上 ①", "ｘ＝", "€", "plain"]
NAMES = ["消耗品費", "Office", "ค่าใช้จ่าย", "Cash", "Bank", "ค่าเช่า", "仮払金"]
JPY = ["999999999999999", "1", "1000000000", "999999999", "1080", "500", "999999999", "80", "110", "10"]


def _line(account: str, name: str, debit: str, credit: str, **extra: Any) -> dict[str, Any]:
    return {"account": account, "account_name": name, "debit": debit, "credit": credit, **extra}


def _entries() -> list[dict[str, Any]]:
    """Entries over 0- and 2-place currencies, negative and near-maximum amounts, tax lines and
    hostile texts, several on one date (ordered by reference) and some on the day before."""
    out: list[dict[str, Any]] = []
    amounts = {
        "JPY": [*JPY, "2200", "200", "330", "30", "44", "4"],
        "THB": ["999999999999999.99", "0.01", "-5.50", "107.00", "0.05", "7.49"],
        "USD": ["-999999999999999.99", "12.30", "0.10", "1.00"],
        "KRW": ["999999999999999", "-1", "5000", "7"],
    }
    n = 0
    for currency, values in amounts.items():
        yen = currency == "JPY"
        for i, amount in enumerate(values):
            first = _line(
                TEXTS[n % len(TEXTS)],
                NAMES[n % len(NAMES)],
                amount,
                "0",
                tax_code="課税仕入10%" if yen else "VAT7",
                memo=FOREIGN[n % len(FOREIGN)] + TEXTS[(n + 3) % len(TEXTS)],
            )
            cash = _line("2000", "Cash", "0", amount, memo=TEXTS[(n + 5) % len(TEXTS)])
            if i % 2:  # a tax line on the debit side, taxed on the first line in the Japanese layouts
                tax = _line("1000", "仮払消費税" if yen else "Input VAT", amount, "0")
                lines = [first, tax, {**cash, "credit": _double(amount, currency)}]
            else:
                lines = [first, cash]
            out.append(
                {
                    "date": (D if n % 3 else D.replace(day=D.day - 1)).isoformat(),
                    "reference": f"{TEXTS[(n + 1) % len(TEXTS)][:2].strip()}R{n:02d}",
                    "description": TEXTS[(n + 7) % len(TEXTS)] + " stationery",
                    "currency": currency,
                    "lines": lines,
                }
            )
            n += 1
    return out


def _double(amount: str, currency: str) -> str:
    whole, _, frac = amount.partition(".")
    minor = int(whole + frac) * 2
    places = len(frac)
    sign, digits = ("-", str(-minor)) if minor < 0 else ("", str(minor))
    if not places:
        return sign + digits
    digits = digits.rjust(places + 1, "0")
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def _csv_bytes(folder: Path, prefix: str = "") -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.glob(f"{prefix}journal_*.csv"))]


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"export_encoding": "tis-620", "export_bom": "false", "export_date_style": "buddhist"},
        {"export_profile": "yayoi"},
        {"export_profile": "moneyforward"},
        {"export_profile": "freee"},
    ],
    ids=["generic", "generic-tis620", "yayoi", "moneyforward", "freee"],
)
def test_every_layout_writes_the_recorded_entries_dry_and_real_alike(
    make_export_app, tmp_path: Path, settings: dict[str, str]
) -> None:
    recorded = _entries()
    make_export_app().ledger.record_many(recorded)  # generic: takes every currency and sign
    app = make_export_app(**settings)
    profile: Profile = replace(app.export_profile, max_rows=5)  # parts of a few entries

    dry = ExportSaga(app, profile=profile).dry_run(D, tmp_path / "dry")
    real = ExportSaga(app, profile=profile).run_daily(D)
    assert real.state == "completed", real.error
    held = {h["reference"]: h["reason"] for h in real.held_back}
    assert {h["reference"]: h["reason"] for h in dry.held_back} == held
    assert all(ref in reason for ref, reason in held.items()), held

    files = _csv_bytes(tmp_path / "out")
    assert len(files) > 1, "the entries span parts"
    assert _csv_bytes(tmp_path / "dry", "DRYRUN-") == files, "the dry run writes the real run's bytes"

    kept = sorted(
        (parse_entry(e) for e in recorded if e["reference"] not in held),
        key=lambda e: (e.date, e.reference),
    )
    assert len(kept) + len(held) == len(recorded)
    assert (real.entry_count, real.line_count) == (len(kept), sum(len(e.lines) for e in kept))
    expected = write_parts(
        iter([entry_rows(e) for e in kept]), profile, tmp_path / "expected", "journal_x", timeout=60
    )
    assert [p.path.read_bytes() for p in expected.parts] == files, "rows streamed = rows of the entries"

    text = [b.decode(profile.encoding).removeprefix("\ufeff") for b in files]
    for ref in held:
        assert not any(ref in t for t in text), f"nothing of held-back entry {ref} written"

    manifest = json.loads(next((tmp_path / "out").glob("*.manifest.json")).read_text())
    read_back = file_totals(expected.parts, profile)
    assert manifest["entry_count"] == real.entry_count and manifest["line_count"] == real.line_count
    assert manifest["totals"] == real.totals == expected.totals_text()
    assert manifest["text_cells_changed"] == expected.cells_changed()
    assert {cur: {"debit": str(t["debit"]), "credit": str(t["credit"])} for cur, t in read_back.items()} == (
        real.totals
    )
    assert sum(int(t["lines"]) for t in read_back.values()) == real.line_count
    rows = [row for t in text for row in csv.reader(io.StringIO(t, newline=""))]
    assert len(rows) == real.line_count + (len(files) if profile.header else 0)
    assert sum(t.count("\n") for t in text) == sum(t.count("\r\n") for t in text) == len(rows), (
        "one record per line: no line break inside a cell"
    )
    formulas = [c for row in rows for c in row if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert all(re.fullmatch(r"-\d+(\.\d+)?", c) for c in formulas), f"only negative amounts: {formulas}"


def test_a_day_of_maximum_amounts_reconciles_beyond_the_64_bit_sum(make_export_app, tmp_path: Path) -> None:
    """100 entries of the largest THB amount: Σ minor units is 10^19, past a 64-bit integer."""
    top = "999999999999999.99"
    app = make_export_app()
    app.ledger.record_many([entry(f"MAX-{i:03d}", amount=top) for i in range(100)])
    result = ExportSaga(app).run_daily(D)
    assert result.state == "completed", result.error
    total = str(Decimal(top) * 100)
    assert result.totals == {"THB": {"debit": total, "credit": total}}
    (written,) = _csv_bytes(tmp_path / "out")
    rows = list(csv.reader(io.StringIO(written.decode("utf-8-sig"), newline="")))[1:]
    assert sum(Decimal(r[5]) for r in rows) == sum(Decimal(r[6]) for r in rows) == Decimal(total)


def test_an_entry_whose_lines_sum_past_64_bits_is_listed_and_exported(
    make_export_app, tmp_path: Path
) -> None:
    """One entry of 100 debit lines of the largest THB amount (MAX_LINES is 1,000)."""
    top = "999999999999999.99"
    app = make_export_app()
    lines = [{"account": "5100", "account_name": "Stock", "debit": top, "credit": "0"} for _ in range(100)]
    lines += [{"account": "1000", "account_name": "Cash", "debit": "0", "credit": top} for _ in range(100)]
    app.ledger.record({**entry("BIG"), "lines": lines})
    total = str(Decimal(top) * 100)
    (listed,) = app.ledger.list()
    assert listed["reference"] == "BIG" and listed["debit_total"] == total
    result = ExportSaga(app).run_daily(D)
    assert result.state == "completed" and result.totals == {"THB": {"debit": total, "credit": total}}
