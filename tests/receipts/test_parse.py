"""Reading receipt text (pure): Japanese and Thai, as PDFs give it and as OCR garbles it."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from ledgerflow.receipts.parse import amounts, normalise, read_receipt

JP_OCR = (
    "株式会社サンプル商店\n2026年11月20日\n\nコーヒー豆 2, 006円\n"
    "小計 \\2, 000\n消費税(8%) ¥ 160\n合計 \\2,160"
)
TH_OCR = (
    "บริษัท ตัวอย่าง จํากัด\n\nวันที่ 20/11/2569\n\nค่ากาแฟ 500.00\n\nภาษีมูลค่าเพิ่ม 7% 35.00\n\n"
    "a\nvw\noo\n\nรวมทังสิน 535.00 บาท"
)


def test_japanese_receipt_read_through_ocr_noise():
    r = read_receipt(JP_OCR)
    assert (r.vendor, r.date, r.currency) == ("株式会社サンプル商店", date(2026, 11, 20), "JPY")
    assert (r.total, r.tax, r.tax_rate) == (Decimal(2160), Decimal(160), 8)
    assert r.problems == [] and r.confidence == 1.0


def test_thai_receipt_with_buddhist_year_and_dropped_tone_marks():
    r = read_receipt(TH_OCR)
    assert r.vendor == "บริษัท ตัวอย่าง จำกัด" and r.date == date(2026, 11, 20)
    assert (r.currency, r.total, r.tax, r.tax_rate) == ("THB", Decimal("535.00"), Decimal("35.00"), 7)
    assert r.confidence == 1.0


def test_reiwa_dates_standard_rate_inferred_and_subtotal_never_the_total():
    r = read_receipt("カフェ東京\n令和8年11月3日\n小計 1,000円\n合計 1,100円\n内消費税 100")
    assert r.date == date(2026, 11, 3) and r.vendor == "カフェ東京"
    assert (r.total, r.tax, r.tax_rate) == (Decimal(1100), Decimal(100), 10)


def test_what_is_missing_is_named_and_lowers_confidence():
    r = read_receipt("thank you for shopping")
    assert r.total is None and "no total found" in r.problems and "no date found" in r.problems
    assert r.confidence < 0.5
    wrong_tax = read_receipt("Shop A\n2026-11-20\nTotal 1,100 JPY\nTax 10% 500")
    assert any("does not match" in p for p in wrong_tax.problems)
    assert wrong_tax.confidence < 0.7  # below the default bar: it goes to review


def test_normalising_numbers_and_amounts():
    assert normalise("合計 ＼２，１６０") == "合計 ¥2,160"
    assert amounts("2026/11/20 税 8% 1,234.50 and 99") == [Decimal("1234.50"), Decimal(99)]
