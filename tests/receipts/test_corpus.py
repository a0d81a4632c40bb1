"""A hand-written corpus of Japanese and Thai receipt lines, each with what it must read as.

Every line is one way a real receipt prints a date, a total, a tax or a number that is not money.
`None` means "must not be read"; a problem names why a person has to look.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledgerflow.receipts.parse import amounts, read_receipt

TODAY = date(2026, 11, 30)  # the day the receipts arrived: places two-digit years
D = date(2026, 11, 29)

#: (script, text, field, expected): `text` is read after a vendor line in that script.
CORPUS = [
    # ---- Japanese dates
    ("ja", "2026年11月29日(日) 12:34", "date", D),
    ("ja", "2026/11/29 12:34", "date", D),
    ("ja", "2026-11-29", "date", D),
    ("ja", "令和8年11月29日", "date", D),
    ("ja", "令和 8 年 11 月 29 日", "date", D),
    ("ja", "令和元年5月1日", "date", date(2019, 5, 1)),
    ("ja", "R8.11.29", "date", D),
    ("ja", "R08/11/29 18:02", "date", D),
    ("ja", "H30.11.29", "date", date(2018, 11, 29)),
    ("ja", "平成30年11月29日", "date", date(2018, 11, 29)),
    ("ja", "平成31年4月30日", "date", date(2019, 4, 30)),
    ("ja", "26/11/29 10:32", "date", D),
    ("ja", "26.11.29", "date", D),
    ("ja", "２０２６年１１月２９日", "date", D),
    # ---- Japanese totals
    ("ja", "合計 ¥1,100", "total", Decimal(1100)),
    ("ja", "合計　￥１，１００", "total", Decimal(1100)),
    ("ja", "合計 \\1, 100", "total", Decimal(1100)),
    ("ja", "お会計 1,100円", "total", Decimal(1100)),
    ("ja", "合計(税込) ¥1,100", "total", Decimal(1100)),
    ("ja", "税込合計 ¥1,100", "total", Decimal(1100)),
    ("ja", "合計 3点 ¥1,100", "total", Decimal(1100)),
    ("ja", "小計 ¥1,000", "total", None),
    ("ja", "10%対象 ¥1,100", "total", None),
    ("ja", "税抜合計 ¥1,000", "total", None),
    # ---- Japanese tax
    ("ja", "外税10% ¥100", "tax", Decimal(100)),
    ("ja", "外税10% ¥100", "tax_rate", 10),
    ("ja", "(内税 ¥100)", "tax", Decimal(100)),
    ("ja", "(内消費税等 ¥100)", "tax", Decimal(100)),
    ("ja", "消費税(8%) ¥160", "tax_rate", 8),
    ("ja", "消費税等 10% 100円", "tax", Decimal(100)),
    ("ja", "内税額 ¥100", "tax", Decimal(100)),
    ("ja", "(10%対象 ¥1,100 内税 ¥100)", "tax", Decimal(100)),
    ("ja", "(10%対象 ¥1,100 内税 ¥100)", "tax_rate", 10),
    ("ja", "合計 ¥1,100 (内消費税 ¥100)", "tax", Decimal(100)),
    ("ja", "合計 ¥1,100 (内消費税 ¥100)", "total", Decimal(1100)),
    # ---- Japanese numbers that are not money
    ("ja", "登録番号 T1234567890123", "total", None),
    ("ja", "TEL 03-1234-5678", "total", None),
    ("ja", "レシートNo.0042", "total", None),
    # ---- Thai dates
    ("th", "วันที่ 29/11/2569", "date", D),
    ("th", "29/11/69", "date", D),
    ("th", "29-11-2569 14:05", "date", D),
    ("th", "29 พฤศจิกายน 2569", "date", D),
    ("th", "29 พ.ย. 2569", "date", D),
    ("th", "29 พ.ย. 69", "date", D),
    ("th", "29 พย 2569", "date", D),
    ("th", "วันที่ 29 พ.ย. พ.ศ. 2569", "date", D),
    ("th", "1 มกราคม 2569", "date", date(2026, 1, 1)),
    ("th", "15 มี.ค. 2569", "date", date(2026, 3, 15)),
    ("th", "29 พฤศจกายน 2569", "date", D),  # OCR dropped a vowel mark
    ("th", "29/11/2026", "date", D),
    # ---- Thai totals
    ("th", "รวมทั้งสิ้น 535.00 บาท", "total", Decimal("535.00")),
    ("th", "รวมทังสิน 535.00", "total", Decimal("535.00")),  # OCR dropped the marks
    ("th", "ยอดสุทธิ 1,070.00", "total", Decimal("1070.00")),
    ("th", "รวม 535.00", "total", Decimal("535.00")),
    ("th", "Total (VAT Included) 535.00", "total", Decimal("535.00")),
    ("th", "มูลค่าสินค้า 500.00", "total", None),
    ("th", "ราคาก่อนภาษี 500.00", "total", None),
    ("th", "Amount before VAT 500.00", "tax", None),
    # ---- Thai tax
    ("th", "ภาษีมูลค่าเพิ่ม 7% 35.00", "tax", Decimal("35.00")),
    ("th", "VAT 7% 35.00", "tax_rate", 7),
    ("th", "VAT 7 % 35.00", "tax", Decimal("35.00")),
    # ---- Thai numbers that are not money
    ("th", "TAX ID 0107542000011 (VAT Included)", "tax", None),
    ("th", "TAX ID 0107542000011 (VAT Included)", "total", None),
    ("th", "TAX INV 000345", "tax", None),
    ("th", "TAX INVOICE (ABB) No. 000345", "tax", None),
    ("th", "เลขประจำตัวผู้เสียภาษี 0105556000011", "tax", None),
    ("th", "ใบกำกับภาษีอย่างย่อ เลขที่ 000123", "tax", None),
    ("th", "โทร 02-123-4567", "total", None),
    ("th", "POS ID E051234567890", "total", None),
]


VENDOR = {"ja": "株式会社サンプル", "th": "ร้านตัวอย่าง"}


def test_the_corpus_has_at_least_fifty_lines():
    assert len({text for _, text, _, _ in CORPUS}) >= 50
    assert {script for script, *_ in CORPUS} == {"ja", "th"}


@pytest.mark.parametrize(
    ("script", "text", "what", "expected"), CORPUS, ids=[f"{s}-{w}:{t}" for s, t, w, _ in CORPUS]
)
def test_corpus_line_reads_as_written(script, text, what, expected):
    reading = read_receipt(f"{VENDOR[script]}\n{text}", today=TODAY)
    assert getattr(reading, what) == expected, reading


UNREADABLE = [
    ("26/11/25", "date '26/11/25' is ambiguous (2025-11-26 or 2026-11-25)"),
    ("01/02/03", "date '01/02/03' is not a plausible date"),
    ("31/02/2569", "date '31/02/2569' is not a plausible date"),
    ("消費税 ¥", "a tax is mentioned (消費税) but its amount could not be read"),
    ("VAT 7%", "a tax is mentioned (vat) but its amount could not be read"),
    ("(8%) 内税 ¥80\n(10%) 消費税 ¥100", "taxes at several rates (8 %, 10 %)"),
]


@pytest.mark.parametrize(("text", "reason"), UNREADABLE, ids=[t for t, _ in UNREADABLE])
def test_what_cannot_be_read_is_named(text, reason):
    reading = read_receipt(f"cafe\n{text}", today=TODAY)
    assert any(p.startswith(reason) for p in reading.problems), reading.problems


def test_identifiers_are_never_amounts():
    assert amounts("TAX ID 0107542000011") == []
    assert amounts("No. 000345 JAN 4901234567894") == []
    assert amounts("¥0 0.50 10") == [Decimal(0), Decimal("0.50"), Decimal(10)]


JP_VENDORS = ["株式会社サンプル商店", "カフェ東京", "有限会社やまだ書店", "ローソン 新宿店"]
TH_VENDORS = ["บริษัท ตัวอย่าง จำกัด", "ร้านกาแฟสุขใจ", "ห้างหุ้นส่วน ดีดี", "บริษัท ซีพี ออลล์ จำกัด (มหาชน)"]
THAI_MONTH_NAMES = ["มกราคม", "กุมภาพันธ์", "มีนาคม", "เมษายน", "พฤษภาคม", "มิถุนายน", "กรกฎาคม"]
THAI_MONTH_NAMES += ["สิงหาคม", "กันยายน", "ตุลาคม", "พฤศจิกายน", "ธันวาคม"]
THAI_ABBR = ["ม.ค.", "ก.พ.", "มี.ค.", "เม.ย.", "พ.ค.", "มิ.ย.", "ก.ค.", "ส.ค.", "ก.ย.", "ต.ค.", "พ.ย.", "ธ.ค."]
RECENT = st.dates(min_value=TODAY - timedelta(days=3 * 365), max_value=TODAY)


def _jp_date(day: date, style: int) -> str:
    return [
        f"{day.year}年{day.month}月{day.day}日",
        f"{day:%Y/%m/%d} 12:34",
        f"令和{day.year - 2018}年{day.month}月{day.day}日" if day.year > 2019 else f"{day:%Y-%m-%d}",
        f"R{day.year - 2018}.{day:%m.%d}",
        f"{day:%y/%m/%d}",
    ][style]


def _th_date(day: date, style: int) -> str:
    be = day.year + 543
    return [
        f"{day:%d/%m}/{be}",
        f"{day:%d/%m}/{be % 100:02d}",
        f"{day.day} {THAI_MONTH_NAMES[day.month - 1]} {be}",
        f"{day.day} {THAI_ABBR[day.month - 1]} {be % 100:02d}",
        f"{day:%d-%m-%Y}",
    ][style]


@given(
    vendor=st.sampled_from(JP_VENDORS),
    day=RECENT,
    style=st.integers(0, 4),
    net=st.integers(100, 999_999),
    rate=st.sampled_from([8, 10]),
    tax_style=st.integers(0, 2),
    registration=st.integers(10**12, 10**13 - 1),
)
def test_generated_japanese_receipts_read_back_exactly(
    vendor, day, style, net, rate, tax_style, registration
):
    tax = net * rate // 100
    total = net + tax
    tax_lines = [
        f"外税{rate}% ¥{tax:,}",
        f"({rate}%対象 ¥{total:,} 内税 ¥{tax:,})",
        f"消費税({rate}%) ¥{tax:,}",
    ]
    head = [vendor, f"登録番号 T{registration}", _jp_date(day, style), f"小計 ¥{net:,}"]
    text = "\n".join([*head, tax_lines[tax_style], f"合計 ¥{total:,}", "レシートNo.0042 TEL 03-1234-5678"])
    r = read_receipt(text, today=TODAY)
    assert (r.vendor, r.date, r.currency) == (vendor, day, "JPY")
    assert (r.total, r.tax, r.tax_rate) == (Decimal(total), Decimal(tax), rate)
    assert r.problems == [] and r.confidence == 1.0


@given(
    vendor=st.sampled_from(TH_VENDORS),
    day=RECENT,
    style=st.integers(0, 4),
    net_satang=st.integers(1_000, 99_999_999),
    tax_id=st.integers(0, 10**12 - 1),
    invoice=st.integers(1, 99_999),
)
def test_generated_thai_receipts_read_back_exactly(vendor, day, style, net_satang, tax_id, invoice):
    net = Decimal(net_satang).scaleb(-2)
    vat = (net * 7 / 100).quantize(Decimal("0.01"))
    total = net + vat
    head = [vendor, f"TAX ID 0{tax_id:012d} (VAT Included)", f"TAX INV {invoice:06d}"]
    money = [f"มูลค่าสินค้า {net:,.2f}", f"ภาษีมูลค่าเพิ่ม 7% {vat:,.2f}", f"รวมทั้งสิ้น {total:,.2f} บาท"]
    text = "\n".join([*head, f"วันที่ {_th_date(day, style)}", *money])
    r = read_receipt(text, today=TODAY)
    assert (r.vendor, r.date, r.currency) == (vendor, day, "THB")
    assert (r.total, r.tax, r.tax_rate) == (total, vat, 7)
    assert r.problems == [] and r.confidence == 1.0


#: Lines that print another date than the purchase's, before the purchase date.
NOT_THE_PURCHASE_DATE = [
    "Returns accepted until 2026-12-20",
    "Valid until 2026-12-31",
    "Coupon expires 2026/12/05",
    "有効期限 2026年12月31日",
    "返品期限 2026年12月10日",
    "ใช้ได้ถึง 31/12/2569",
    "วันหมดอายุ 31/12/2569",
    "Tel 02-11-2026",
    "電話 03-11-2026",
]


@pytest.mark.parametrize("line", NOT_THE_PURCHASE_DATE)
def test_an_expiry_return_or_phone_line_is_not_the_purchase_date(line):
    reading = read_receipt(f"Corner Cafe\n{line}\n2026-11-29\nTotal 10.70", today=TODAY)
    assert reading.date == D, reading


@pytest.mark.parametrize("written", ["2027-11-29", "2026/12/25", "令和9年11月29日"])
def test_a_date_after_the_receipt_arrived_goes_to_review_with_the_reason(written):
    reading = read_receipt(f"Corner Cafe\n{written}\nTotal 10.70", today=TODAY)
    assert reading.date is None
    assert any(p.startswith(f"date {written!r} is after the receipt arrived") for p in reading.problems), (
        reading.problems
    )
