"""CSV layouts of the accounting packages ledgerflow exports to. Pure functions, no I/O.

Profiles are data (columns, encoding, BOM, date style, amount rules); the four layouts
differ in how an entry becomes rows, so each has a small row builder. Sources for every
layout are in ../shared/research/domain.md (Yayoi page_id=18545, Money Forward ib01,
freee 204847430; OWASP CSV Injection for the neutralising rule).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal

from ledgerflow.errors import BadInput
from ledgerflow.ledger.entries import Entry, Line
from ledgerflow.ledger.money import format_amount

#: A text cell starting with one of these is read as a formula by spreadsheets (OWASP, plus
#: NUL per ASVS 1.2.10 and the full-width forms Japanese IMEs produce).
FORMULA_TRIGGERS = frozenset("=+-@\t\r\n\x00＝＋－＠")
#: A first character that may make `TextCells` change a printable cell (a trigger, or a space before one).
_GUARD_FIRST = FORMULA_TRIGGERS | {" "}
EXCEL_MAX_ROWS = 1_048_576
#: What `str.splitlines` (and a line-oriented importer) treats as the end of a line; CRLF is one.
LINE_BREAKS = re.compile("\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
#: Other C0 and C1 control characters (tab and the line breaks above excluded) and DEL.
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f]")
#: The consumption-tax accounts of the Japanese standard chart (弥生, Money Forward, freee).
JAPANESE_TAX_ACCOUNTS = frozenset({"仮払消費税", "仮払消費税等", "仮受消費税", "仮受消費税等"})


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
    """One importer's layout, as data. Text rules apply to free-text cells only; amount, date
    and flag cells are produced from typed values and never altered."""

    name: str
    layout: str
    header: tuple[str, ...] | None
    encoding: str  # a Python codec; the BOM is separate
    bom: bool
    date_style: str
    currencies: frozenset[str] | None = None  # None: any currency
    allow_negative: bool = True
    formula_guard: bool = True  # prefix ' to text cells a spreadsheet would evaluate
    line_break: str = " "  # what a line break inside a text cell becomes (one record per line)
    tab: str = " "  # what a tab inside a text cell becomes
    control: str = ""  # what any other control character becomes
    max_amount_digits: int | None = None  # digits of an amount cell (Yayoi: 9)
    max_account_chars: int | None = None  # characters of the account cell (Yayoi 勘定科目: 12)
    tax_accounts: frozenset[str] = frozenset()  # codes or names of tax lines (fill 税額 columns)
    max_rows: int = EXCEL_MAX_ROWS  # per file, header included

    def with_options(
        self,
        *,
        bom: bool | None = None,
        date_style: str | None = None,
        encoding: str | None = None,
        formula_guard: bool | None = None,
        tax_accounts: Collection[str] | None = None,
    ) -> Profile:
        """Apply the LEDGERFLOW_EXPORT_* overrides, then `check` the result."""
        options = {
            "bom": bom,
            "date_style": date_style,
            "encoding": encoding,
            "formula_guard": formula_guard,
            "tax_accounts": frozenset(tax_accounts) if tax_accounts is not None else None,
        }
        profile = replace(self, **{k: v for k, v in options.items() if v is not None})  # type: ignore[arg-type]
        profile.check()
        return profile

    def check(self) -> None:
        """Refuse an encoding that could never write this layout: unknown, not ASCII-compatible,
        or unable to hold the byte-order mark or the header."""
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise BadInput(f"unknown encoding {self.encoding!r}") from None
        if "2026/11,x\r\n".encode(self.encoding, errors="replace") != b"2026/11,x\r\n":
            raise BadInput(f"encoding {self.encoding} is not ASCII-compatible; use utf-8, cp932 or cp874")
        try:
            self.byte_order_mark  # noqa: B018 - encodes the BOM
        except UnicodeEncodeError:
            raise BadInput(f"encoding {self.encoding} cannot hold a byte-order mark") from None
        try:
            ",".join(self.header or ()).encode(self.encoding)
        except UnicodeEncodeError:
            raise BadInput(f"encoding {self.encoding} cannot hold the {self.name} header row") from None

    @property
    def byte_order_mark(self) -> bytes:
        return "\ufeff".encode(self.encoding) if self.bom else b""

    def flatten(self, value: str) -> str:
        """Line breaks, tabs and control characters of a text cell, as this importer needs them."""
        if value.isprintable():  # the common case, at C speed: none of them is printable
            return value
        value = LINE_BREAKS.sub(self.line_break, value)
        return CONTROL_CHARACTERS.sub(self.control, value.replace("\t", self.tab))

    def clean(self, value: str) -> str:
        """A text cell as written: flattened, then guarded when the formula guard is on."""
        flat = self.flatten(value)
        return neutralise_text(flat) if self.formula_guard else flat

    def amount(self, value: Decimal, currency: str) -> str:
        return format_amount(value, currency)


class TextCells:
    """Cleans the free-text cells (account, description, memo …) as a layout builds them, and
    counts what the profile's rules changed. Amount, date and flag cells never pass here."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.flattened = 0  # cells whose line breaks, tabs or control characters were replaced
        self.neutralised = 0  # cells the formula guard prefixed with '

    def __call__(self, value: str | None) -> str:
        if not value:
            return ""
        if value.isprintable() and value[0] not in _GUARD_FIRST:  # the common cell: unchanged, at C speed
            return value
        flat = self.profile.flatten(value)
        safe = neutralise_text(flat) if self.profile.formula_guard else flat
        self.flattened += flat != value
        self.neutralised += safe != flat
        return safe


@dataclass(frozen=True)
class Rendered:
    """The CSV rows of one entry, and how many text cells the profile's rules changed."""

    rows: list[list[str]]
    flattened: int
    neutralised: int


def render(entry: Entry, profile: Profile, slip: int) -> Rendered:
    """The rows of one entry (`slip` numbers the entry within its file: 1, 2, 3 …)."""
    text = TextCells(profile)
    rows = LAYOUTS[profile.layout](entry, profile, slip, text)
    return Rendered(rows, text.flattened, text.neutralised)


def rows_for(entry: Entry, profile: Profile, slip: int) -> list[list[str]]:
    """The CSV rows of one entry (`slip` numbers the entry within its file: 1, 2, 3 …)."""
    return render(entry, profile, slip).rows


def check_layout(entry: Entry, profile: Profile) -> None:
    """Refuse, naming the entry, a currency, sign or field this layout cannot hold. (A tax line
    whose taxed line is ambiguous is refused by `render`; encodability by `check_entry`.)"""
    where = f"entry {entry.reference} ({profile.name} profile)"
    if profile.currencies is not None and entry.currency not in profile.currencies:
        raise BadInput(
            f"{where}: currency {entry.currency} is not supported "
            f"(only {', '.join(sorted(profile.currencies))})"
        )
    for n, line in enumerate(entry.lines, 1):
        if not profile.allow_negative and (line.debit < 0 or line.credit < 0):
            raise BadInput(
                f"{where}: line {n} has a negative amount; this layout only takes "
                f"positive amounts (put it on the opposite side)"
            )
        digits = profile.max_amount_digits
        if digits is not None and max(abs(line.debit), abs(line.credit)) >= 10**digits:
            amount = profile.amount(line.debit or line.credit, entry.currency)
            raise BadInput(
                f"{where}: line {n} amount {amount} is too large; this layout takes at most "
                f"{digits} digits ({'9' * digits})"
            )
        limit = profile.max_account_chars
        if limit is not None and len(account := profile.clean(_account(line))) > limit:
            raise BadInput(
                f"{where}: line {n} account {account!r} has {len(account)} characters; "
                f"this layout takes at most {limit}"
            )


def check_entry(entry: Entry, profile: Profile) -> None:
    """Refuse, naming the entry, what this layout cannot hold (before anything is written)."""
    check_layout(entry, profile)
    where = f"entry {entry.reference} ({profile.name} profile)"
    codec = profile.encoding
    for n, row in enumerate(rows_for(entry, profile, 1), 1):
        for cell in row:
            try:
                cell.encode(codec)
            except UnicodeEncodeError as exc:
                bad = cell[exc.start : exc.end]
                raise BadInput(f"{where}: row {n}: character {bad!r} cannot be written in {codec}") from None


def tax_amounts(entry: Entry, profile: Profile) -> dict[int, Decimal]:
    """Line index → the amount for that line's 税額 column.

    A tax line is a line on one of the profile's tax accounts (by code or name). Its amount
    goes to the one line on the same side that carries a tax code (the same tax code as the
    tax line's, when it has one). None there: nothing is filled. Several: refused, never split.
    """
    if not profile.tax_accounts:
        return {}
    is_tax = [
        line.account in profile.tax_accounts or line.account_name in profile.tax_accounts
        for line in entry.lines
    ]
    if not any(is_tax):
        return {}
    taxes: dict[int, Decimal] = {}
    for n, (line, tax) in enumerate(zip(entry.lines, is_tax, strict=True)):
        if not tax:
            continue
        debit = bool(line.debit)
        taxed = [
            i
            for i, other in enumerate(entry.lines)
            if not is_tax[i]
            and other.tax_code
            and bool(other.debit) == debit
            and (not line.tax_code or other.tax_code == line.tax_code)
        ]
        if len(taxed) > 1:
            raise BadInput(
                f"entry {entry.reference} ({profile.name} profile): tax line {n + 1} ({_account(line)}) "
                f"could belong to lines {', '.join(str(i + 1) for i in taxed)}; "
                "give it the tax code of its line"
            )
        if taxed:
            taxes[taxed[0]] = taxes.get(taxed[0], Decimal(0)) + (line.debit or line.credit)
    return taxes


# ---------------------------------------------------------------- row builders
Cells = list[list[str]]


def _generic(entry: Entry, p: Profile, slip: int, text: TextCells) -> Cells:
    day = format_date(entry.date, p.date_style)
    return [
        [
            text(entry.reference),
            day,
            text(line.account),
            text(line.account_name),
            text(entry.description),
            p.amount(line.debit, entry.currency),
            p.amount(line.credit, entry.currency),
            text(line.tax_code),
            entry.currency,
            text(line.memo),
        ]
        for line in entry.lines
    ]


def _account(line: Line) -> str:
    return line.account_name or line.account


def _sides(entry: Entry, p: Profile, text: TextCells, blank: str) -> list[tuple[Line, list[str], list[str]]]:
    """Per line: (line, debit cells, credit cells) as [account, tax code, amount, tax amount];
    the side a line is not on gets `blank` amounts and empty text."""
    taxes = tax_amounts(entry, p)
    out = []
    for i, line in enumerate(entry.lines):
        tax = p.amount(taxes[i], entry.currency) if i in taxes else ""
        filled = [
            text(_account(line)),
            text(line.tax_code),
            p.amount(line.debit or line.credit, entry.currency),
            tax,
        ]
        empty = ["", "", blank, ""]
        out.append((line, filled, empty) if line.debit else (line, empty, filled))
    return out


def _yayoi(entry: Entry, p: Profile, slip: int, text: TextCells) -> Cells:
    """弥生会計 仕訳日記帳: one row per line; 識別フラグ 2110 first / 2100 middle / 2101 last
    (2111 alone); 借方/貸方 勘定科目 (E, K), 税区分 (H, N), 金額 (I, O: `0` on the other side),
    税金額 (J, P); 摘要 (Q), 仕訳メモ (V)."""
    rows = []
    last = len(entry.lines) - 1
    day = format_date(entry.date, p.date_style)
    for i, (line, debit, credit) in enumerate(_sides(entry, p, text, blank="0")):
        flag = "2111" if last == 0 else "2110" if i == 0 else "2101" if i == last else "2100"
        d_account, d_tax_code, d_amount, d_tax = debit
        c_account, c_tax_code, c_amount, c_tax = credit
        rows.append(
            [
                flag,
                str(slip),
                "",
                day,
                d_account,
                "",
                "",
                d_tax_code,
                d_amount,
                d_tax,
                c_account,
                "",
                "",
                c_tax_code,
                c_amount,
                c_tax,
                text(entry.description),
                "",
                "",
                "0",
                "",
                text(line.memo),
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


def _moneyforward(entry: Entry, p: Profile, slip: int, text: TextCells) -> Cells:
    """Money Forward 仕訳帳: same 取引No and 取引日 on every line of one entry, one side per row."""
    day = format_date(entry.date, p.date_style)
    rows = []
    for line, debit, credit in _sides(entry, p, text, blank=""):
        d_account, d_tax_code, d_amount, d_tax = debit
        c_account, c_tax_code, c_amount, c_tax = credit
        rows.append(
            [
                str(slip),
                day,
                d_account,
                "",
                "",
                "",
                d_tax_code,
                "",
                d_amount,
                d_tax,
                c_account,
                "",
                "",
                "",
                c_tax_code,
                "",
                c_amount,
                c_tax,
                text(entry.description),
                text(line.memo),
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


def _freee(entry: Entry, p: Profile, slip: int, text: TextCells) -> Cells:
    """freee 仕訳インポート (振替伝票): rows with the same 日付 and 伝票番号 form one entry."""
    day = format_date(entry.date, p.date_style)
    rows = []
    for line, debit, credit in _sides(entry, p, text, blank=""):
        d_account, d_tax_code, d_amount, d_tax = debit
        c_account, c_tax_code, c_amount, c_tax = credit
        rows.append(
            [
                day,
                str(slip),
                "",
                d_account,
                d_tax_code,
                d_amount,
                d_tax,
                c_account,
                c_tax_code,
                c_amount,
                c_tax,
                text(entry.description),
                text(line.memo),
            ]
        )
    return rows


LAYOUTS: dict[str, Callable[[Entry, Profile, int, TextCells], Cells]] = {
    "generic": _generic,
    "yayoi": _yayoi,
    "moneyforward": _moneyforward,
    "freee": _freee,
}

#: Per layout, the columns (0-based) a re-read of the file sums: debit amount, credit amount,
#: and currency (None: the profile has one currency).
AMOUNT_COLUMNS: dict[str, tuple[int, int, int | None]] = {
    "generic": (5, 6, 8),
    "yayoi": (8, 14, None),  # 借方金額 I, 貸方金額 O
    "moneyforward": (8, 16, None),  # 借方金額(円), 貸方金額(円)
    "freee": (5, 9, None),  # 借方金額, 貸方金額
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

#: Text rules, all four alike: a line break, tab or line/paragraph separator in a text cell
#: becomes one space (Yayoi reads one record per line, and a continuation line starting with
#: `#` would be a comment; freee's and Money Forward's row limits count lines, and Excel's
#: row count is what the split uses), other control characters are dropped.
PROFILES: dict[str, Profile] = {
    "generic": Profile("generic", "generic", GENERIC_HEADER, "utf-8", bom=True, date_style="iso"),
    "yayoi": Profile(
        "yayoi",
        "yayoi",
        None,
        "cp932",
        bom=False,
        date_style="slash",
        currencies=YEN,
        allow_negative=False,
        max_amount_digits=9,  # Yayoi FAQ page_id=27184: integer of at most 9 digits
        max_account_chars=12,  # ibid.: 勘定科目 at most 12 characters (longer is cut off)
        tax_accounts=JAPANESE_TAX_ACCOUNTS,
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
        tax_accounts=JAPANESE_TAX_ACCOUNTS,
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
        tax_accounts=JAPANESE_TAX_ACCOUNTS,
    ),
}


def get_profile(
    name: str,
    *,
    bom: bool | None = None,
    date_style: str | None = None,
    encoding: str | None = None,
    formula_guard: bool | None = None,
    tax_accounts: Collection[str] | None = None,
) -> Profile:
    try:
        base = PROFILES[name]
    except KeyError:
        raise BadInput(f"unknown export profile {name!r} (known: {', '.join(sorted(PROFILES))})") from None
    return base.with_options(
        bom=bom,
        date_style=date_style,
        encoding=encoding,
        formula_guard=formula_guard,
        tax_accounts=tax_accounts,
    )
