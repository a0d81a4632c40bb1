"""Reading a receipt's text: date, vendor, total, tax and currency, with a confidence score.

Pure functions over the extracted text (a PDF's text layer or Tesseract's output), tolerant of
what OCR does to Japanese and Thai receipts: full-width digits, `\\` read for `¥`, spaces inside
numbers, Thai tone marks dropped or split (`ํา` for `ำ`).

A line is read as segments: each keyword (合計, 内税, TAX ID, …) owns the amounts that follow
it up to the next keyword, so `合計 ¥1,100 (内消費税 ¥100)` gives a total and a tax, and the
number after `TAX ID` or `TAX INV` is never money. What cannot be read is named in `problems`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date, timedelta
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
    "お会計",
    "ご利用額",
    "総額",
    "รวมทั้งสิ้น",
    "ยอดรวมสุทธิ",
    "ยอดสุทธิ",
    "จำนวนเงินรวม",
    "รวมเงิน",
    "ยอดรวม",
    "รวม",
    "grand total",
    "total amount",
    "amount due",
    "total",
]
#: Amounts that are neither the total nor the tax (the taxable base, the amount before tax).
NOT_TOTAL = [
    "小計",
    "税抜合計",
    "税抜き合計",
    "subtotal",
    "sub total",
    "税抜",
    "対象",
    "taxable",
    "vatable",
    "before tax",
    "before vat",
    "excl. vat",
    "excluding vat",
    "ก่อนภาษี",
    "รวมก่อน",
    "มูลค่าสินค้า",
]
#: Words that introduce the tax amount (外税: added on top, 内税: included in the prices).
TAX_WORDS = [
    "内消費税等",
    "内消費税",
    "消費税等",
    "消費税",
    "税額",
    "外税",
    "内税",
    "ภาษีมูลค่าเพิ่ม",
    "vat",
    "tax",
]
#: Numbers that follow these are identifiers, never money (tax ids, invoice and phone numbers).
IDENTIFIERS = [
    "tax id",
    "tax inv",
    "tax invoice",
    "invoice no",
    "receipt no",
    "pos id",
    "pos no",
    "tel",
    "fax",
    "เลขประจำตัวผู้เสียภาษี",
    "เลขที่",
    "โทร",
    "ใบกำกับภาษี",
    "登録番号",
    "電話",
    "レシート",
    "no.",
]
#: Remarks that say where the tax is, with no amount of their own (removed before reading).
REMARKS = re.compile(
    r"\(?\s*(?:vat\s*incl(?:uded|\.)?|incl(?:uding|\.)?\s*vat|税込み?|รวมภาษี(?:มูลค่าเพิ่ม)?แล้ว)\s*\)?",
    re.IGNORECASE,
)
COMPANY_MARKS = ["株式会社", "有限会社", "合同会社", "(株)", "บริษัท", "ห้างหุ้นส่วน", "ร้าน", "co.,", "ltd", "inc"]
#: Standard rates: Japanese consumption tax 10 % (8 % reduced), Thai VAT 7 %.
RATES = {"JPY": (10, 8), "THB": (7,)}
#: A two-digit year is read only if the date falls in this window around the day it arrived.
PLAUSIBLE_BEFORE, PLAUSIBLE_AFTER = timedelta(days=3 * 366), timedelta(days=7)
#: A purchase is dated at the latest the day after the receipt arrived (time zones).
ARRIVAL_SLACK = timedelta(days=1)
#: Words before a date on its line that make it another date than the purchase's: an expiry,
#: a return deadline, a phone or fax number that reads like a date.
OTHER_DATE = re.compile(
    r"\b(?:valid|until|expir\w*|exp|returns?|refunds?|due|best\s+before|use\s+by|tel|phone|fax)\b",
    re.IGNORECASE,
)
OTHER_DATE_WORDS = ["期限", "返品", "電話", "หมดอายุ", "ใช้ได้ถึง", "ภายในวันที่", "โทร"]

_THAI_MARKS = re.compile("[\u0e31\u0e34-\u0e3a\u0e47-\u0e4e]")
_AMOUNT = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?(?![\d%])(?!\s*%)")
_PERCENT = re.compile(r"(\d{1,2})\s*%")
_TIME = re.compile(r"(?<!\d)\d{1,2}:\d{2}(?::\d{2})?(?!\d)")
_YMD = re.compile(r"(?<!\d)(\d{4})\s*[年/.\-]\s*(\d{1,2})\s*[月/.\-]\s*(\d{1,2})(?!\d)")
_DMY = re.compile(r"(?<!\d)(\d{1,2})\s*[/.\-]\s*(\d{1,2})\s*[/.\-]\s*(\d{4})(?!\d)")
_SHORT = re.compile(r"(?<![\d/.\-])(\d{1,2})([/.\-])(\d{1,2})\2(\d{2})(?![\d/.\-])")
_ERA = re.compile(
    r"(令和|平成|(?<![A-Za-z])[RH])\s*(\d{1,2}|元)\s*[年/.\-]\s*(\d{1,2})\s*[月/.\-]\s*(\d{1,2})\s*日?"
)
_ERA_START = {"令和": 2018, "R": 2018, "平成": 1988, "H": 1988}  # year 1 of the era, minus one
THAI_MONTHS = {
    "มกราคม": 1, "กุมภาพันธ์": 2, "มีนาคม": 3, "เมษายน": 4, "พฤษภาคม": 5, "มิถุนายน": 6,
    "กรกฎาคม": 7, "สิงหาคม": 8, "กันยายน": 9, "ตุลาคม": 10, "พฤศจิกายน": 11, "ธันวาคม": 12,
    "ม.ค.": 1, "ก.พ.": 2, "มี.ค.": 3, "เม.ย.": 4, "พ.ค.": 5, "มิ.ย.": 6,
    "ก.ค.": 7, "ส.ค.": 8, "ก.ย.": 9, "ต.ค.": 10, "พ.ย.": 11, "ธ.ค.": 12,
}  # fmt: skip
ENGLISH_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]


def _month_pattern(name: str) -> str:
    """A Thai month name with its marks and dots optional (OCR drops them)."""
    parts = []
    for ch in name.removesuffix("."):
        if _THAI_MARKS.match(ch):
            parts.append(re.escape(ch) + "?")
        elif ch == ".":
            parts.append(r"\s*\.?\s*")
        else:
            parts.append(re.escape(ch))
    return "".join(parts) + (r"(?:\s*\.)?" if name.endswith(".") else "")


_MONTH_NAMES = sorted(THAI_MONTHS, key=len, reverse=True)
_THAI_DATE = re.compile(
    r"(?<!\d)(\d{1,2})\s*(" + "|".join(f"(?:{_month_pattern(n)})" for n in _MONTH_NAMES) + r")\s*"
    r"(?:พ\.?\s*ศ\.?\s*)?(\d{4}|\d{2})(?!\d)"
)
_ENGLISH_DATE = re.compile(
    r"(?<!\d)(\d{1,2})\s*(" + "|".join(ENGLISH_MONTHS) + r")[a-z]*\.?,?\s*(\d{4})(?!\d)"
    r"|(?<![a-z])(" + "|".join(ENGLISH_MONTHS) + r")[a-z]*\.?\s*(\d{1,2}),?\s*(\d{4})(?!\d)",
    re.IGNORECASE,
)
_DATE_PATTERNS = (_ERA, _YMD, _DMY, _THAI_DATE, _ENGLISH_DATE, _SHORT)


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
    """The money amounts on a line: not percentages, dates, times or identifiers (`000345`,
    13-digit tax ids and barcodes)."""
    for pattern in (*_DATE_PATTERNS, _TIME):
        line = pattern.sub(" ", line)
    found = []
    for whole, cents in _AMOUNT.findall(line):
        digits = whole.replace(",", "")
        if (len(digits) > 1 and digits.startswith("0")) or len(digits) > 10:
            continue  # an identifier: money has no leading zero and fewer than 11 digits
        found.append(Decimal(digits + (f".{cents}" if cents else "")))
    return found


@dataclass(frozen=True)
class Segment:
    """A keyword on a line and the text it owns (up to the next keyword)."""

    kind: str  # total | not_total | tax | identifier
    word: str
    text: str


_KINDS = (("identifier", IDENTIFIERS), ("not_total", NOT_TOTAL), ("tax", TAX_WORDS), ("total", TOTAL_WORDS))


def segments(line: str) -> list[Segment]:
    """Split a line at its keywords (the longest wins where they overlap); text before the first
    keyword belongs to none and is left out."""
    line = REMARKS.sub(" ", line)
    key_chars: list[str] = []
    where: list[int] = []  # index in `line` of each character of the key
    for i, ch in enumerate(line.lower()):
        if ch != " " and not _THAI_MARKS.match(ch):
            key_chars.append(ch)
            where.append(i)
    key = "".join(key_chars)
    hits: list[tuple[int, int, str, str]] = []  # start, end in `line`, kind, word
    for kind, words in _KINDS:
        for word in words:
            wkey = _key(word)
            for m in re.finditer(re.escape(wkey), key):
                before = key[m.start() - 1] if m.start() else ""
                if word.isascii() and before.isascii() and before.isalpha():
                    continue  # "tax" inside "syntax", "tel" inside "hotel"
                hits.append((where[m.start()], where[m.end() - 1] + 1, kind, word))
    chosen: list[tuple[int, int, str, str]] = []
    for hit in sorted(hits, key=lambda h: (-(h[1] - h[0]), h[0])):
        if all(hit[1] <= c[0] or hit[0] >= c[1] for c in chosen):
            chosen.append(hit)
    chosen.sort()
    return [
        Segment(kind, word, line[end : chosen[i + 1][0] if i + 1 < len(chosen) else len(line)])
        for i, (_, end, kind, word) in enumerate(chosen)
    ]


def read_receipt(text: str, default_currency: str = "THB", today: date | None = None) -> Reading:
    """Parse the receipt's text (`today`: the day it arrived, to place two-digit years).

    Never raises: what is missing or cannot be read is listed in `problems`.
    """
    text = normalise(text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reading = Reading()
    reading.currency, reading.currency_seen = _currency(text, default_currency)
    reading.date, date_problem = _date(text, today or date.today())
    reading.vendor = _vendor(lines)
    parts = [s for line in lines for s in segments(line)]
    reading.total = _total(parts)
    reading.tax, reading.tax_rate, tax_seen, several = _tax(parts, lines, reading.currency, reading.total)
    places = MINOR_UNITS[reading.currency]
    for name in ("total", "tax"):
        value = getattr(reading, name)
        if value is not None and value != value.quantize(Decimal(1).scaleb(-places)):
            reading.problems.append(f"{name} {value} has more decimals than {reading.currency} allows")
            setattr(reading, name, None)
    if reading.total is None:
        reading.problems.append("no total found")
    if reading.date is None:
        reading.problems.append(date_problem or "no date found")
    if not reading.vendor:
        reading.problems.append("no vendor found")
    if reading.tax is None and tax_seen:
        reading.problems.append(f"a tax is mentioned ({tax_seen}) but its amount could not be read")
    elif several:
        listed = ", ".join(f"{r} %" for r in several)
        reading.problems.append(f"taxes at several rates ({listed}): one entry has one tax rate")
    if reading.tax is not None and not several and not reading.tax_consistent():
        rate = f"{reading.tax_rate} %" if reading.tax_rate else "any standard rate"
        reading.problems.append(f"tax {reading.tax} does not match {rate} of the total")
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


def _year(value: str) -> int:
    """A four-digit year; the Thai Buddhist era (2400 and later) is moved back 543 years."""
    year = int(value)
    return year - 543 if year > 2400 else year


def _thai_month(written: str) -> int:
    """The month of a Thai month name as written: the exact spelling first (ม.ค. is January,
    มี.ค. March), else the name it matches with marks or dots dropped by OCR."""
    bare = re.sub(r"[\s.]", "", written)
    exact = next((n for n in _MONTH_NAMES if n.replace(".", "") == bare), None)
    return THAI_MONTHS[exact or next(n for n in _MONTH_NAMES if re.fullmatch(_month_pattern(n), written))]


def _candidates(m: re.Match[str], script: str | None) -> list[tuple[int, int, int]]:
    """The (year, month, day) readings of one date-like match; two-digit years give several
    (Japanese receipts write YY/MM/DD, Thai ones DD/MM/YY in either era)."""
    pattern = m.re
    if pattern is _ERA:
        era, year, month, day = m.groups()
        return [(_ERA_START[era] + (1 if year == "元" else int(year)), int(month), int(day))]
    if pattern is _YMD:
        return [(_year(m[1]), int(m[2]), int(m[3]))]
    if pattern is _DMY:
        return [(_year(m[3]), int(m[2]), int(m[1]))]
    if pattern is _THAI_DATE:
        month = _thai_month(m[2])
        if len(m[3]) == 4:
            return [(_year(m[3]), month, int(m[1]))]
        return [(2500 + int(m[3]) - 543, month, int(m[1])), (2000 + int(m[3]), month, int(m[1]))]
    if pattern is _ENGLISH_DATE:
        day, name, year = (m[1], m[2], m[3]) if m[1] else (m[5], m[4], m[6])
        return [(_year(year), ENGLISH_MONTHS.index(name[:3].lower()) + 1, int(day))]
    a, b, c = int(m[1]), int(m[3]), int(m[4])  # _SHORT: a/b/c with a two-digit year
    japanese = [(2000 + a, b, c)]  # YY/MM/DD (26/11/29)
    thai = [(2500 + c - 543, b, a), (2000 + c, b, a)]  # DD/MM/YY, Buddhist (29/11/69) or not
    return japanese if script == "ja" else thai if script == "th" else japanese + thai


def _script(text: str) -> str | None:
    """ "ja" for kana or kanji, "th" for Thai letters, else None."""
    if re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", text):
        return "ja"
    return "th" if re.search(r"[\u0e00-\u0e7f]", text) else None


def _date(text: str, today: date) -> tuple[date | None, str | None]:
    """The first date in the text that reads one way only; else why none could be taken."""
    script = _script(text)
    matches = sorted((m for p in _DATE_PATTERNS for m in p.finditer(text)), key=lambda m: m.start())
    problem = None
    for m in matches:
        before = text[text.rfind("\n", 0, m.start()) + 1 : m.start()]  # on its line
        if OTHER_DATE.search(before) or _contains(before, OTHER_DATE_WORDS):
            continue
        readings = _candidates(m, script)
        found = set()
        for year, month, day in readings:
            try:
                found.add(date(year, month, day))
            except ValueError:
                continue
        if len(readings) > 1:  # a two-digit year: only dates near the day the receipt arrived
            found = {d for d in found if today - PLAUSIBLE_BEFORE <= d <= today + PLAUSIBLE_AFTER}
        else:
            found = {d for d in found if 2000 <= d.year <= 2100}
        later = {d for d in found if d > today + ARRIVAL_SLACK}
        found -= later
        if len(found) == 1:
            return found.pop(), None
        if problem is None:
            raw = m[0].strip()
            problem = (
                f"date {raw!r} is ambiguous ({' or '.join(sorted(d.isoformat() for d in found))})"
                if found
                else f"date {raw!r} is after the receipt arrived ({today.isoformat()})"
                if later
                else f"date {raw!r} is not a plausible date"
            )
    return None, problem


def _vendor(lines: list[str]) -> str | None:
    for line in lines[:8]:
        if _contains(line, COMPANY_MARKS):
            return line[:120]
    for line in lines[:5]:
        if any(p.search(line) for p in _DATE_PATTERNS):
            continue
        letters = sum(ch.isalpha() for ch in line)
        if letters >= 2 and letters >= sum(ch.isdigit() for ch in line) and not _contains(line, TOTAL_WORDS):
            return line[:120]
    return None


def _total(parts: list[Segment]) -> Decimal | None:
    best: tuple[int, Decimal] | None = None
    for part in parts:
        if part.kind != "total":
            continue
        found = amounts(part.text)
        if not found:
            continue
        rank = TOTAL_WORDS.index(part.word)
        if best is None or rank < best[0] or (rank == best[0] and found[-1] > best[1]):
            best = (rank, found[-1])
    return best[1] if best else None


def _tax(
    parts: list[Segment], lines: list[str], currency: str, total: Decimal | None
) -> tuple[Decimal | None, int | None, str | None, list[int]]:
    """(tax, rate, the tax word seen, the rates when there are several: 8 % and 10 % add up)."""
    rates = RATES.get(currency, ())
    by_rate: dict[int | None, Decimal] = {}
    seen = None
    for part in parts:
        if part.kind != "tax":
            continue
        seen = seen or part.word
        found = amounts(part.text)
        if not found:
            continue
        rate_match = _PERCENT.search(part.text) or _PERCENT.search(
            next((ln for ln in lines if part.text in ln), "")
        )
        rate = int(rate_match.group(1)) if rate_match else None
        by_rate.setdefault(rate, found[-1])
    if not by_rate:
        return None, None, seen, []
    if len(by_rate) > 1 and None not in by_rate:
        return sum(by_rate.values(), Decimal(0)), None, seen, sorted(r for r in by_rate if r is not None)
    rate, tax = next(iter(by_rate.items()))
    if rate is None and rates and total is not None:
        # no rate printed: the standard rate the amount matches
        rate = next((r for r in rates if abs(total * r / (100 + r) - tax) < 1), None)
    return tax, rate, seen, []
