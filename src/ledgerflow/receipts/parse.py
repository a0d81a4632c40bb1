"""Reading a receipt's text: date, vendor, total, tax and currency, with a confidence score.

Pure functions over the extracted text (a PDF's text layer or Tesseract's output), tolerant of
what OCR does to Japanese and Thai receipts: full-width digits, `\\` read for `¥`, spaces inside
numbers, Thai tone marks dropped or split (`ํา` for `ำ`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from ledgerflow.ledger.money import MINOR_UNITS

#: Words that introduce the amount paid, best first (小計/subtotal are never totals).
TOTAL_WORDS = [
    "総合計",
    "合計",
    "お買上計",
    "お買上げ計",
    "ご請求額",
    "領収金額",
    "お支払",
    "総額",
    "รวมทั้งสิ้น",
    "ยอดรวมสุทธิ",
    "ยอดสุทธิ",
    "จำนวนเงินรวม",
    "รวมเงิน",
    "ยอดรวม",
    "grand total",
    "total amount",
    "amount due",
    "total",
]
NOT_TOTAL = ["小計", "subtotal", "sub total", "税抜", "ก่อนภาษี", "รวมก่อน"]
TAX_WORDS = ["内消費税", "消費税", "税額", "ภาษีมูลค่าเพิ่ม", "vat", "tax"]
COMPANY_MARKS = ["株式会社", "有限会社", "合同会社", "(株)", "บริษัท", "ห้างหุ้นส่วน", "ร้าน", "co.,", "ltd", "inc"]
#: Standard rates: Japanese consumption tax 10 % (8 % reduced), Thai VAT 7 %.
RATES = {"JPY": (10, 8), "THB": (7,)}

_THAI_MARKS = re.compile("[\u0e31\u0e34-\u0e3a\u0e47-\u0e4e]")
_AMOUNT = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?(?![\d%])(?!\s*%)")
_PERCENT = re.compile(r"(\d{1,2})\s*%")
_YMD = re.compile(r"(\d{4})\s*[年/.\-]\s*(\d{1,2})\s*[月/.\-]\s*(\d{1,2})")
_DMY = re.compile(r"(?<!\d)(\d{1,2})\s*[/.\-]\s*(\d{1,2})\s*[/.\-]\s*(\d{4})(?!\d)")
_REIWA = re.compile(r"令和\s*(\d{1,2}|元)\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*日")


@dataclass
class Reading:
    """What could be read from one receipt."""

    vendor: str | None = None
    date: date | None = None
    currency: str | None = None
    currency_seen: bool = False
    total: Decimal | None = None
    tax: Decimal | None = None
    tax_rate: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def confidence(self) -> float:
        """0…1: a total, a date, a vendor, a currency seen in the text, and a tax that adds up
        (a tax that does not add up costs more than a missing one)."""
        score = 0.0
        score += 0.35 if self.total is not None else 0.0
        score += 0.2 if self.date is not None else 0.0
        score += 0.15 if self.vendor else 0.0
        score += 0.1 if self.currency_seen else 0.0
        if self.tax_consistent():
            score += 0.2
        elif self.tax is not None:  # a tax that does not add up: a person must look
            score -= 0.3
        return round(max(score, 0.0), 2)

    def tax_consistent(self) -> bool:
        """The tax equals rate/(100+rate) of a tax-inclusive total, to within one minor unit."""
        if self.total is None or self.tax is None or self.tax_rate is None or self.currency is None:
            return False
        expected = self.total * self.tax_rate / (100 + self.tax_rate)
        unit = Decimal(1).scaleb(-MINOR_UNITS[self.currency])
        return abs(expected - self.tax) <= unit


def normalise(text: str) -> str:
    """NFKC (full-width digits and ￥), OCR's `\\` for `¥`, no spaces inside numbers."""
    text = unicodedata.normalize("NFKC", text).replace("\u0e4d\u0e32", "\u0e33")
    text = re.sub(r"\\(?=\s*\d)", "¥", text)
    text = re.sub(r"(?<=\d)\s*,\s*(?=\d{3}(?!\d))", ",", text)
    return text


def _key(text: str) -> str:
    """For matching keywords: lower case, Thai marks removed (OCR drops or splits them)."""
    return _THAI_MARKS.sub("", text.lower()).replace(" ", "")


def _contains(line: str, words: list[str]) -> str | None:
    k = _key(line)
    return next((w for w in words if _key(w) in k), None)


def amounts(line: str) -> list[Decimal]:
    """The money amounts on a line (percentages and dates excluded)."""
    line = _YMD.sub(" ", _DMY.sub(" ", line))
    found = _AMOUNT.findall(line)
    return [Decimal(whole.replace(",", "") + (f".{cents}" if cents else "")) for whole, cents in found]


def read_receipt(text: str, default_currency: str = "THB") -> Reading:
    """Parse the receipt's text. Never raises: what is missing is listed in `problems`."""
    text = normalise(text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reading = Reading()
    reading.currency, reading.currency_seen = _currency(text, default_currency)
    reading.date = _date(text)
    reading.vendor = _vendor(lines)
    reading.total = _total(lines)
    reading.tax, reading.tax_rate = _tax(lines, reading.currency, reading.total)
    places = MINOR_UNITS[reading.currency]
    for name in ("total", "tax"):
        value = getattr(reading, name)
        if value is not None and value != value.quantize(Decimal(1).scaleb(-places)):
            reading.problems.append(f"{name} {value} has more decimals than {reading.currency} allows")
            setattr(reading, name, None)
    if reading.total is None:
        reading.problems.append("no total found")
    if reading.date is None:
        reading.problems.append("no date found")
    if not reading.vendor:
        reading.problems.append("no vendor found")
    if reading.tax is not None and not reading.tax_consistent():
        reading.problems.append(f"tax {reading.tax} does not match {reading.tax_rate} % of the total")
    return reading


def _currency(text: str, default: str) -> tuple[str, bool]:
    if re.search(r"[¥円]|JPY", text):
        return "JPY", True
    if re.search(r"฿|บาท|THB", text):
        return "THB", True
    if re.search(r"[\u3040-\u30ff]", text):  # kana: a Japanese receipt
        return "JPY", False
    if re.search(r"[\u0e00-\u0e7f]", text):
        return "THB", False
    return default, False


def _date(text: str) -> date | None:
    candidates: list[tuple[int, int, int]] = []
    for era, month, day in _REIWA.findall(text):
        candidates.append((2018 + (1 if era == "元" else int(era)), int(month), int(day)))
    candidates += [(int(y), int(m), int(d)) for y, m, d in _YMD.findall(text)]
    candidates += [(int(y), int(m), int(d)) for d, m, y in _DMY.findall(text)]
    for year, month, day in candidates:
        if year > 2400:  # the Thai Buddhist era
            year -= 543
        try:
            found = date(year, month, day)
        except ValueError:
            continue
        if 2000 <= found.year <= 2100:
            return found
    return None


def _vendor(lines: list[str]) -> str | None:
    for line in lines[:8]:
        if _contains(line, COMPANY_MARKS):
            return line[:120]
    for line in lines[:5]:
        if _YMD.search(line) or _DMY.search(line) or _REIWA.search(line):
            continue
        letters = sum(ch.isalpha() for ch in line)
        if letters >= 2 and letters >= sum(ch.isdigit() for ch in line) and not _contains(line, TOTAL_WORDS):
            return line[:120]
    return None


def _total(lines: list[str]) -> Decimal | None:
    best: tuple[int, Decimal] | None = None
    for line in lines:
        word = _contains(line, TOTAL_WORDS)
        if word is None or _contains(line, NOT_TOTAL) or _contains(line, TAX_WORDS[:3]):
            continue
        found = amounts(line)
        if not found:
            continue
        rank = TOTAL_WORDS.index(word)
        if best is None or rank < best[0] or (rank == best[0] and found[-1] > best[1]):
            best = (rank, found[-1])
    return best[1] if best else None


def _tax(lines: list[str], currency: str, total: Decimal | None) -> tuple[Decimal | None, int | None]:
    rates = RATES.get(currency, ())
    for line in lines:
        if not _contains(line, TAX_WORDS):
            continue
        rate_match = _PERCENT.search(line)
        rate = int(rate_match.group(1)) if rate_match else None
        found = amounts(line)
        if rate is None and rates and found and total is not None:
            # no rate printed: the standard rate the amount matches
            rate = next((r for r in rates if abs(total * r / (100 + r) - found[-1]) < 1), None)
        if found:
            return found[-1], rate
    return None, None
