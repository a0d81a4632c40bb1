"""A person decides: corrections by the ledger's rules, filing under the booked values, approvals
racing in real processes, duplicates against what was approved and booked, and the account
chosen by rules or learned from earlier approvals. Receipts here are mailed as plain text
(no OCR needed), on both backends."""

from __future__ import annotations

import csv
import io
import unicodedata
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from sqlalchemy import select

from ledgerflow.builtin import build_app
from ledgerflow.config import load_settings
from ledgerflow.db.tables import journal_entries, journal_lines
from ledgerflow.errors import BadInput, Conflict
from ledgerflow.receipts.rules import parse_rules, same_vendor
from ledgerflow.receipts.store import ReceiptStore
from ledgerflow.receipts.tasks import process_and_file, slug
from tests import forkserver
from tests.conftest import run_cli
from tests.receipts.conftest import api_client, cli_env

JP = "株式会社サンプル商店\n2026年11月20日\n小計 ¥1,000\n外税10% ¥100\n合計 ¥1,100\n"


@pytest.fixture
def app(db_url, tmp_path):
    app = build_app(
        load_settings(
            database_url=db_url,
            receipts_dir=str(tmp_path / "store"),
            export_destination=f"file://{tmp_path / 'out'}",
            log_level="WARNING",
            receipt_rules=[
                {"text": "toner", "account": "5300:Supplies", "priority": 0},
                {"vendor": "Shop K", "max": "1000", "account": "5210:Meeting expenses", "priority": 1},
                {"keyword": "shop k", "account": "5400:Other shop"},
            ],
        )
    )
    yield app
    app.close()


def mailed(app, text: str, copy: int = 0) -> int:
    """A receipt mailed as plain text, read by the worker like any other; its id."""
    return mailed_many(app, [(text, copy)])[0]


def mailed_many(app, texts: list[tuple[str, int]]) -> list[int]:
    """Receipts mailed as plain text (text, copy number), then read by one worker run."""
    store = ReceiptStore(app)
    ids = []
    for text, copy in texts:
        data = text.encode() + (f"\n-- copy {copy}" if copy else "").encode()
        sha = store.keep_file(data, "txt")
        with app.db.begin() as tx:
            source = {"mailbox": "test", "uid_validity": 1, "uid": 1000 + copy, "part": 0}
            kind = {"content_type": "text/plain", "extension": "txt", "size": len(data), "name": "r.txt"}
            receipt_id, _ = store.ingest(tx, sha256=sha, source=source, **kind)
            process_and_file(app, tx, receipt_id)
        ids.append(receipt_id)
    app.run_worker(["receipts"], concurrency=2, burst=True)
    return ids


def entries(app) -> dict[str, list[tuple]]:
    with app.db.read() as conn:
        rows = conn.execute(
            select(journal_entries.c.reference, journal_lines.c.account, journal_lines.c.debit_minor)
            .add_columns(journal_lines.c.credit_minor, journal_lines.c.tax_code)
            .join(journal_lines, journal_lines.c.entry_id == journal_entries.c.id)
            .order_by(journal_lines.c.id)
        ).all()
    out: dict[str, list[tuple]] = {}
    for ref, *line in rows:
        out.setdefault(ref, []).append(tuple(line))
    return out


def use_cli(app, monkeypatch) -> None:
    for key, value in cli_env(app).items():
        if key.startswith("LEDGERFLOW_"):
            monkeypatch.setenv(key, value)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--total", "12,50", "--tax", "0,82"], "'12,50'"),
        (["--total", "1100", "--tax", "0,82"], "'0,82'"),
        (["--total", "1.100"], "'1.100'"),  # yen have no decimals
        (["--total", "1e3"], "'1e3'"),
        (["--total", "１１００"], "'１１００'"),
    ],
)
def test_corrections_are_refused_by_the_ledgers_strict_amount_rule(app, args, named, capsys, monkeypatch):
    receipt_id = mailed(app, JP)
    use_cli(app, monkeypatch)
    code, _, err = run_cli(capsys, "receipts", "approve", str(receipt_id), *args)
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1
    fixes = dict(zip([a.removeprefix("--") for a in args[::2]], args[1::2], strict=True))
    answer = api_client(app).post(f"/api/receipts/{receipt_id}/approve", json=fixes)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "bad_input"
    assert named in answer.json()["error"]["message"]
    receipt = ReceiptStore(app).get(receipt_id)
    assert receipt.status == "draft" and receipt.total == Decimal(1100) and entries(app) == {}


def test_a_corrected_receipt_sets_its_tax_rate_and_is_filed_under_the_booked_values(app, tmp_path):
    store = ReceiptStore(app)
    receipt_id = mailed(app, JP)
    read = store.get(receipt_id)
    assert (read.status, read.total, read.tax, read.tax_rate) == ("draft", Decimal(1100), Decimal(100), 10)
    out = tmp_path / "out"
    assert read.filed_name == "2026/11/2026-11-20_サンプル商店_1100.txt" and (out / read.filed_name).is_file()

    # the photo was misread: the reduced rate, 8 %
    approved, entry = store.approve(
        receipt_id, total="1,080", tax="80", tax_rate=8, vendor="サンプル商店 本店"
    )
    assert (approved.total, approved.tax, approved.tax_rate, approved.tax_code) == (
        Decimal(1080),
        Decimal(80),
        8,
        "JCT8",
    )
    assert entries(app)[entry.reference] == [
        ("5900", 1000, 0, "JCT8"),
        ("1500", 80, 0, "JCT8"),
        ("1000", 0, 1080, None),
    ]
    app.run_worker(["receipts"], concurrency=2, burst=True)  # the filing job moves it
    filed = store.get(receipt_id)
    assert filed.filed_name == "2026/11/2026-11-20_サンプル商店-本店_1080.txt"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt")) == [filed.filed_name]
    assert (out / filed.filed_name).read_bytes() == store.path(filed).read_bytes()


def test_a_tax_without_a_rate_is_refused_until_the_rate_is_given(app):
    store = ReceiptStore(app)
    receipt_id = mailed(app, "Shop Z\n2026-11-20\nTotal 1,070.00 THB\n")
    with pytest.raises(BadInput, match=r"give --tax-rate for the tax 70.00 \(no rate was read\)"):
        store.approve(receipt_id, tax="70.00")
    approved, _ = store.approve(receipt_id, tax="70.00", tax_rate=7)
    assert approved.tax_code == "VAT7"


def test_concurrent_approvals_book_once_and_the_others_are_told_why(app, tmp_path):
    """Four real `ledgerflow receipts approve` processes race for one receipt (forked from the
    fork server, tests/forkserver.py: they start together)."""
    receipt_id = mailed(app, JP)
    env = cli_env(app)
    procs = [
        forkserver.shared().spawn(
            "ledgerflow",
            ["receipts", "approve", str(receipt_id)],
            env=env,
            stdout=tmp_path / f"stdout{i}.txt",
            stderr=tmp_path / f"stderr{i}.txt",
        )
        for i in range(4)
    ]
    results = [(p.wait(120), p.communicate()[1].strip()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 1, 1, 1]
    for code, err in results:
        if code:
            assert err == f"error: receipt {receipt_id} is already approved"
    assert list(entries(app)) == [f"RCPT-{receipt_id}"]


def test_a_receipt_mailed_again_a_month_later_is_flagged_against_the_approved_one(app):
    store = ReceiptStore(app)
    first = mailed(app, JP)
    # a person corrected the vendor's name; the file mailed again reads as before
    store.approve(first, vendor="Sample Shop Ltd")
    again = mailed(app, JP, copy=1)
    flagged = store.get(again)
    assert flagged.status == "review" and flagged.duplicate_of == first
    assert flagged.reason.startswith(
        f"possible duplicate of receipt {first} (approved, booked as entry RCPT-{first}: "
        "same date, amount and vendor)"
    )


def test_a_receipt_already_booked_by_hand_is_flagged_against_the_entry(app):
    app.ledger.record(
        {
            "date": "2026-11-20",
            "reference": "INV-77",
            "description": "Coffee beans, サンプル商店",
            "currency": "JPY",
            "lines": [
                {"account": "5210", "account_name": "Meeting", "debit": "1100", "credit": "0"},
                {"account": "1000", "account_name": "Cash", "debit": "0", "credit": "1100"},
            ],
        }
    )
    flagged = ReceiptStore(app).get(mailed(app, JP))
    assert flagged.status == "review" and flagged.duplicate_of is None
    assert flagged.reason.startswith("possible duplicate of entry INV-77 (same date 2026-11-20, amount 1100")


def test_an_entry_whose_lines_sum_past_64_bits_does_not_stop_the_duplicate_check(app):
    """100 debit lines of the largest THB amount on the receipt's date: Σ is 10^19 satang."""
    top = "999999999999999.99"
    lines = [{"account": "5210", "account_name": "Meeting", "debit": top, "credit": "0"} for _ in range(100)]
    lines += [{"account": "1000", "account_name": "Cash", "debit": "0", "credit": top} for _ in range(100)]
    app.ledger.record(
        {
            "date": "2026-11-10",
            "reference": "BIG-1",
            "description": "Shop K",
            "currency": "THB",
            "lines": lines,
        }
    )
    receipt = ReceiptStore(app).get(mailed(app, "Shop K\n2026-11-10\nTotal 800.00 THB\n"))
    assert receipt.total == Decimal("800.00") and receipt.duplicate_of is None, receipt.reason
    assert not (receipt.reason or "").startswith("possible duplicate"), receipt.reason


def test_vendor_rules_apply_by_priority_amount_and_text_then_learned_accounts(app, capsys, monkeypatch):
    store = ReceiptStore(app)

    def account(text: str, copy: int) -> tuple[str, str]:
        r = store.get(mailed(app, text, copy))
        return r.expense_account, r.account_note

    shop = "Shop K\n2026-11-{day}\nTotal {total} THB\n{extra}"
    assert account(shop.format(day=10, total="800.00", extra=""), 1) == (
        "5210:Meeting expenses",
        "rule: vendor 'Shop K' (priority 1)",
    )
    assert account(shop.format(day=11, total="800.00", extra="toner x1"), 2)[0] == "5300:Supplies"
    assert account(shop.format(day=12, total="5,000.00", extra=""), 3) == (
        "5400:Other shop",
        "rule: keyword 'shop k' (priority 5)",
    )

    # no rule for Cafe Z: people chose 5220 twice and 5230 once
    cafe = "Cafe Z\n2026-11-{day}\nTotal {day}0.00 THB\n"
    for day, chosen in ((13, "5220:Coffee"), (14, "5230:Snacks"), (15, "5220:Coffee")):
        store.approve(mailed(app, cafe.format(day=day), day), account=chosen)
    new = mailed(app, cafe.format(day=16), 16)
    assert (store.get(new).expense_account, store.get(new).account_note) == (
        "5220:Coffee",
        "learned: chosen for this vendor in 2 of 3 approvals",
    )
    fresh = mailed(app, "Unknown Stall\n2026-11-17\nTotal 40.00 THB\n", 17)
    assert store.get(fresh).account_note == "default account (no rule, no earlier approval)"
    use_cli(app, monkeypatch)
    monkeypatch.setenv("COLUMNS", "300")
    code, out, _ = run_cli(capsys, "receipts", "list", "--status", "draft")
    assert code == 0 and "5220:Coffee (learned)" in out


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"vendor": "A"}], "receipt rule 1: account '' must look like 'CODE:Account name'"),
        ([{"account": "1:a", "vendr": "A"}], "receipt rule 1: unknown field 'vendr'"),
        ([{"account": "1:a"}], "receipt rule 1: give at least one of vendor, text, keyword, min, max"),
        ([{"account": "1:a", "max": "1.005"}], "receipt rule 1: max '1.005' has more decimals"),
        (
            [{"account": "1:a", "text": "x", "priority": 10}],
            "receipt rule 1: priority must be a whole number",
        ),
        ([{"account": "1:a", "text": " "}], "receipt rule 1: text must be a non-empty text"),
    ],
)
def test_a_wrong_rule_is_one_clear_error_naming_it(rules, message):
    from ledgerflow.errors import ConfigError

    with pytest.raises(ConfigError, match="^LEDGERFLOW_RECEIPT_RULES: " + message.replace("(", r"\(")):
        load_settings(receipt_rules=rules)


def test_the_older_keyword_map_is_a_list_of_keyword_rules():
    (rule,) = parse_rules({"コーヒー": "5210:Meeting expenses"})
    assert rule.keyword == "コーヒー" and rule.matches(None, "コーヒー豆 2,000円", Decimal(1), "JPY")


_THAI = st.text(st.characters(min_codepoint=0x0E01, max_codepoint=0x0E5B), min_size=1, max_size=40)


@given(name=_THAI)
def test_thai_vendor_names_are_intact_in_filed_names(name):
    """Every Thai letter, vowel, tone mark and digit stays, in canonical order (ํา is ำ, as OCR
    splits it); only the rest becomes '-'."""
    assume("บริษัท" not in name and "จำกัด" not in name)
    made = slug(name, limit=60)
    canonical = unicodedata.normalize("NFC", name).replace("\u0e4d\u0e32", "\u0e33")  # marks in order
    kept = "".join(ch for ch in canonical if unicodedata.category(ch)[0] in "LMN")
    assert made.replace("-", "") == kept or (made, kept) == ("unknown", "")
    assert made == "unknown" or (not made.startswith("-") and not made.endswith("-"))


def test_the_filed_name_keeps_thai_marks_and_japanese_whole():
    assert slug("บริษัท ตัวอย่าง จำกัด") == "ตัวอย่าง"
    assert slug("ร้านกาแฟ สุขใจ") == "ร้านกาแฟ-สุขใจ"
    assert slug("株式会社サンプル商店") == "サンプル商店"
    assert slug("ก" + "ั" * 3, limit=1) == "กััั"  # a cut never strands a mark


def test_vendor_names_match_across_company_forms_and_spacing():
    assert same_vendor("株式会社サンプル商店", "サンプル商店")
    assert same_vendor("บริษัท ตัวอย่าง จำกัด", "ตัวอย่าง")
    assert not same_vendor("Cafe A", "Cafe B") and not same_vendor(None, "x")


def test_a_correction_converges_on_one_filed_copy_after_a_fault_at_any_statement(app, tmp_path):
    """Approve with corrections, then the filing job moves the copy: a transient error after each
    statement in turn (a COMMIT included: the ambiguous case), then a retry, leaves exactly one
    entry and exactly one file, under the booked values."""
    from sqlalchemy.exc import OperationalError

    from ledgerflow.errors import DatabaseUnavailable
    from ledgerflow.receipts.tasks import file_receipt
    from tests.faults import StatementFaults

    store = ReceiptStore(app)
    out = tmp_path / "out"
    fixes = {"total": "1,000.00", "vendor": "Shop R Ltd"}

    def correct(receipt_id: int) -> None:
        store.approve(receipt_id, **fixes)
        file_receipt(app, receipt_id)

    def text(day: int) -> tuple[str, int]:  # a day of its own: one filed name per receipt
        return f"Shop R\n{date(2026, 1, 1) + timedelta(days=day)}\nTotal 1,100.00 THB\n", day

    counting = StatementFaults().install(app.db.engine)
    correct(mailed(app, *text(1)))
    counting.uninstall()
    assert counting.count > 10
    receipt_ids = mailed_many(app, [text(1 + k) for k in range(1, counting.count + 1)])
    for k, receipt_id in enumerate(receipt_ids, 1):
        day = 1 + k
        faults = StatementFaults("error_after", k).install(app.db.engine)
        try:
            correct(receipt_id)
        except (OperationalError, DatabaseUnavailable):
            pass
        finally:
            faults.uninstall()
        if store.get(receipt_id).status != "approved":  # else the COMMIT went through
            store.approve(receipt_id, **fixes)
        file_receipt(app, receipt_id)  # the job's retry
        done = store.get(receipt_id)
        on = date(2026, 1, 1) + timedelta(days=day)
        booked = f"{on:%Y/%m}/{on}_Shop-R-Ltd_1000.00.txt"
        assert done.filed_name == booked, (k, faults.fired)
        assert sorted(p.name for p in out.rglob(f"{on}_*")) == [Path(booked).name], (k, faults.fired)
        assert f"RCPT-{receipt_id}" in entries(app)
    assert len(entries(app)) == counting.count + 1


def test_a_copy_whose_date_was_misread_is_refused_as_a_duplicate_when_the_reviewer_supplies_it(
    app, capsys, monkeypatch
):
    """The copy mailed again was photographed badly: no date read, so nothing to compare when it
    was read. The reviewer types the date in, which makes it the approved receipt again: the
    approval is refused (naming the original) unless the person says it is not a duplicate."""
    store = ReceiptStore(app)
    first = mailed(app, JP)
    store.approve(first)
    undated = JP.replace("2026年11月20日\n", "")
    again = mailed(app, undated, copy=1)
    assert store.get(again).status == "review" and store.get(again).duplicate_of is None

    with pytest.raises(Conflict, match=rf"receipt {again} looks like a duplicate of receipt {first} "):
        store.approve(again, on=date(2026, 11, 20))
    assert store.get(again).status == "review" and set(entries(app)) == {f"RCPT-{first}"}, "nothing booked"

    use_cli(app, monkeypatch)
    code, _, err = run_cli(capsys, "receipts", "approve", str(again), "--date", "2026-11-20")
    assert code == 2 and f"duplicate of receipt {first}" in err and "--not-a-duplicate" in err
    with api_client(app) as api:
        r = api.post(f"/api/receipts/{again}/approve", json={"date": "2026-11-20"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "likely_duplicate"
    code, _, err = run_cli(
        capsys, "receipts", "approve", str(again), "--date", "2026-11-20", "--not-a-duplicate"
    )
    assert code == 0, err
    assert set(entries(app)) == {f"RCPT-{first}", f"RCPT-{again}"}, "booked once the person said so"


def test_a_receipt_flagged_as_a_duplicate_is_booked_only_when_the_person_says_it_is_not_one(app):
    store = ReceiptStore(app)
    first = mailed(app, JP)
    store.approve(first)
    again = mailed(app, JP, copy=1)
    with pytest.raises(Conflict, match="looks like a duplicate"):
        store.approve(again)
    receipt, entry = store.approve(again, not_duplicate=True)
    assert receipt.status == "approved" and entry.reference == f"RCPT-{again}"


@pytest.mark.parametrize(
    "vendor", ['＝HYPERLINK("http://evil.example")', " =1+1", "－1+2", "＠SUM(A1)", "+1"]
)
def test_the_monthly_report_csv_guards_vendor_cells_like_the_export(app, vendor):
    """The vendor comes from mail anyone can send: the report's CSV neutralises it by the export's
    rule (full-width forms and leading spaces included), not a weaker one of its own."""
    from ledgerflow.export.profiles import neutralise_text
    from ledgerflow.receipts.report import build_report, to_csv

    ReceiptStore(app).approve(mailed(app, JP), vendor=vendor)
    rows = list(csv.reader(io.StringIO(to_csv(build_report(app, "2026-11")))))
    (cell,) = [key for section, key, *_ in rows if section == "vendor"]
    assert cell == neutralise_text(vendor.strip()) and cell.startswith("'"), cell
