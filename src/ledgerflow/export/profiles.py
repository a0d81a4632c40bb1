"""CSV layouts of the accounting packages ledgerflow exports to. Pure functions, no I/O.

Profiles are data (columns, encoding, BOM, date style, amount rules); the four layouts
differ in how an entry becomes rows, so each has a small row builder. Sources for every
layout are in ../shared/research/domain.md (Yayoi page_id=18545, Money Forward ib01,
freee 204847430; OWASP CSV Injection for the neutralising rule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal

from ledgerflow.errors import BadInput
from ledgerflow.ledger.entries import Entry, Line
from ledgerflow.ledger.money import format_amount

#: A text cell starting with one of these is read as a formula by spreadsheets (OWASP, plus
#: NUL per ASVS 1.2.10 and the full-width forms Japanese IMEs produce).
FORMULA_TRIGGERS = frozenset("=+-@\t\r\n\x00＝＋－＠")
EXCEL_MAX_ROWS = 1_048_576


def neutralise_text(value: str) -> str:
    """Prefix `'` to a text cell that a spreadsheet would evaluate (also after leading spaces)."""
    if not value:
        return value
    first = value[0]
    if first in FORMULA_TRIGGERS or (first == " " and value.lstrip(" ")[:1] in FORMULA_TRIGGERS):
        return "'" + value
    return value


def format_date(day: date, style: str) -> str:
    if style == "iso":
        return day.isoformat()
    if style == "slash":
        return f"{day.year:04d}/{day.month:02d}/{day.day:02d}"
    if style == "dmy":
        return f"{day.day:02d}/{day.month:02d}/{day.year:04d}"
    if style == "buddhist":  # Thai Buddhist Era: BE = CE + 543
        return f"{day.day:02d}/{day.month:02d}/{day.year + 543:04d}"
    raise BadInput(f"unknown date style {style!r}")


@dataclass(frozen=True)
class Profile:
    name: str
    layout: str
    header: tuple[str, ...] | None
    encoding: str  # a Python codec; the BOM is separate
    bom: bool
    date_style: str
    currencies: frozenset[str] | None = None  # None: any currency
    allow_negative: bool = True
    neutralise: bool = True
    max_rows: int = EXCEL_MAX_ROWS  # per file, header included

    def with_options(
        self, *, bom: bool | None = None, date_style: str | None = None, encoding: str | None = None
    ) -> Profile:
        """Apply LEDGERFLOW_EXPORT_BOM / _DATE_STYLE / _ENCODING overrides."""
        options = {
            k: v
            for k, v in {"bom": bom, "date_style": date_style, "encoding": encoding}.items()
            if v is not None
        }
        if options.get("encoding"):
            import codecs

            try:
                codecs.lookup(str(options["encoding"]))
            except LookupError:
                raise BadInput(f"unknown encoding {options['encoding']!r}") from None
        return replace(self, **options)  # type: ignore[arg-type]

    @property
    def byte_order_mark(self) -> bytes:
        return "\ufeff".encode(self.encoding) if self.bom else b""

    def text(self, value: str | None) -> str:
        return neutralise_text(value or "") if self.neutralise else (value or "")

    def amount(self, value: Decimal, currency: str) -> str:
        return format_amount(value, currency)


def check_amounts(entry: Entry, profile: Profile) -> None:
    """Refuse, naming the entry, a currency or sign this layout cannot hold."""
    where = f"entry {entry.reference} ({profile.name} profile)"
    if profile.currencies is not None and entry.currency not in profile.currencies:
        raise BadInput(
            f"{where}: currency {entry.currency} is not supported "
            f"(only {', '.join(sorted(profile.currencies))})"
        )
    if not profile.allow_negative:
        for n, line in enumerate(entry.lines, 1):
            if line.debit < 0 or line.credit < 0:
                raise BadInput(
                    f"{where}: line {n} has a negative amount; this layout only takes "
                    f"positive amounts (put it on the opposite side)"
                )


def check_entry(entry: Entry, profile: Profile) -> None:
    """Refuse, naming the entry, what this layout cannot hold (before anything is written)."""
    check_amounts(entry, profile)
    where = f"entry {entry.reference} ({profile.name} profile)"
    codec = profile.encoding
    for n, row in enumerate(rows_for(entry, profile, 1), 1):
        for cell in row:
            try:
                cell.encode(codec)
            except UnicodeEncodeError as exc:
                bad = cell[exc.start : exc.end]
                raise BadInput(f"{where}: row {n}: character {bad!r} cannot be written in {codec}") from None


# ---------------------------------------------------------------- row builders
def _generic(entry: Entry, p: Profile, slip: int) -> list[list[str]]:
    day = format_date(entry.date, p.date_style)
    reference, description = p.text(entry.reference), p.text(entry.description)
    return [
        [
            reference,
            day,
            p.text(line.account),
            p.text(line.account_name),
            description,
            p.amount(line.debit, entry.currency),
            p.amount(line.credit, entry.currency),
            p.text(line.tax_code),
            entry.currency,
            p.text(line.memo),
        ]
        for line in entry.lines
    ]


def _account(line: Line) -> str:
    return line.account_name or line.account


def _yayoi(entry: Entry, p: Profile, slip: int) -> list[list[str]]:
    """弥生会計 仕訳日記帳: one row per line; 識別フラグ 2110 first / 2100 middle / 2101 last."""
    rows = []
    last = len(entry.lines) - 1
    day = format_date(entry.date, p.date_style)
    for i, line in enumerate(entry.lines):
        flag = "2110" if i == 0 else ("2101" if i == last else "2100")
        if last == 0:
            flag = "2111"
        debit, credit = line.debit > 0, line.credit > 0
        rows.append(
            [
                flag,
                str(slip),
                "",
                day,
                p.text(_account(line)) if debit else "",
                "",
                "",
                p.text(line.tax_code) if debit else "",
                p.amount(line.debit, entry.currency) if debit else "0",
                "",
                p.text(_account(line)) if credit else "",
                "",
                "",
                p.text(line.tax_code) if credit else "",
                p.amount(line.credit, entry.currency) if credit else "0",
                "",
                p.text(entry.description),
                "",
                "",
                "0",
                "",
                p.text(line.memo),
                "0",
                "0",
                "no",
            ]
        )
    return rows


MONEYFORWARD_HEADER = (
    "取引No",
    "取引日",
    "借方勘定科目",
    "借方補助科目",
    "借方部門",
    "借方取引先",
    "借方税区分",
    "借方インボイス",
    "借方金額(円)",
    "借方税額",
    "貸方勘定科目",
    "貸方補助科目",
    "貸方部門",
    "貸方取引先",
    "貸方税区分",
    "貸方インボイス",
    "貸方金額(円)",
    "貸方税額",
    "摘要",
    "仕訳メモ",
    "タグ",
    "MF仕訳タイプ",
    "決算整理仕訳",
    "作成日時",
    "作成者",
    "最終更新日時",
    "最終更新者",
)


def _moneyforward(entry: Entry, p: Profile, slip: int) -> list[list[str]]:
    """Money Forward 仕訳帳: same 取引No and 取引日 on every line of one entry, one side per row."""
    day = format_date(entry.date, p.date_style)
    rows = []
    for line in entry.lines:
        debit, credit = line.debit > 0, line.credit > 0
        rows.append(
            [
                str(slip),
                day,
                p.text(_account(line)) if debit else "",
                "",
                "",
                "",
                p.text(line.tax_code) if debit else "",
                "",
                p.amount(line.debit, entry.currency) if debit else "",
                "",
                p.text(_account(line)) if credit else "",
                "",
                "",
                "",
                p.text(line.tax_code) if credit else "",
                "",
                p.amount(line.credit, entry.currency) if credit else "",
                "",
                p.text(entry.description),
                p.text(line.memo),
                "",
                "",
                "",
                "",
                "",
                "",
                "",
            ]
        )
    return rows


FREEE_HEADER = (
    "日付",
    "伝票番号",
    "決算整理仕訳",
    "借方勘定科目",
    "借方税区分",
    "借方金額",
    "借方税額",
    "貸方勘定科目",
    "貸方税区分",
    "貸方金額",
    "貸方税額",
    "摘要",
    "備考",
)


def _freee(entry: Entry, p: Profile, slip: int) -> list[list[str]]:
    """freee 仕訳インポート (振替伝票): rows with the same 日付 and 伝票番号 form one entry."""
    day = format_date(entry.date, p.date_style)
    rows = []
    for line in entry.lines:
        debit, credit = line.debit > 0, line.credit > 0
        rows.append(
            [
                day,
                str(slip),
                "",
                p.text(_account(line)) if debit else "",
                p.text(line.tax_code) if debit else "",
                p.amount(line.debit, entry.currency) if debit else "",
                "",
                p.text(_account(line)) if credit else "",
                p.text(line.tax_code) if credit else "",
                p.amount(line.credit, entry.currency) if credit else "",
                "",
                p.text(entry.description),
                p.text(line.memo),
            ]
        )
    return rows


LAYOUTS: dict[str, Callable[[Entry, Profile, int], list[list[str]]]] = {
    "generic": _generic,
    "yayoi": _yayoi,
    "moneyforward": _moneyforward,
    "freee": _freee,
}

GENERIC_HEADER = (
    "entry_reference",
    "date",
    "account_code",
    "account_name",
    "description",
    "debit",
    "credit",
    "tax_code",
    "currency",
    "memo",
)
YEN = frozenset({"JPY"})

PROFILES: dict[str, Profile] = {
    "generic": Profile("generic", "generic", GENERIC_HEADER, "utf-8", bom=True, date_style="iso"),
    "yayoi": Profile(
        "yayoi", "yayoi", None, "cp932", bom=False, date_style="slash", currencies=YEN, allow_negative=False
    ),
    "moneyforward": Profile(
        "moneyforward",
        "moneyforward",
        MONEYFORWARD_HEADER,
        "utf-8",
        bom=True,
        date_style="slash",
        currencies=YEN,
        allow_negative=False,
    ),
    "freee": Profile(
        "freee",
        "freee",
        FREEE_HEADER,
        "utf-8",
        bom=True,
        date_style="slash",
        currencies=YEN,
        allow_negative=False,
    ),
}


def rows_for(entry: Entry, profile: Profile, slip: int) -> list[list[str]]:
    """The CSV rows of one entry (`slip` numbers the entry within its file: 1, 2, 3 …)."""
    return LAYOUTS[profile.layout](entry, profile, slip)


def get_profile(
    name: str, *, bom: bool | None = None, date_style: str | None = None, encoding: str | None = None
) -> Profile:
    try:
        base = PROFILES[name]
    except KeyError:
        raise BadInput(f"unknown export profile {name!r} (known: {', '.join(sorted(PROFILES))})") from None
    return base.with_options(bom=bom, date_style=date_style, encoding=encoding)
