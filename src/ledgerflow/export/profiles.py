"""CSV layouts of the accounting packages ledgerflow exports to. Pure functions, no I/O.

Profiles are data (columns, encoding, BOM, date style, amount rules); the four layouts
differ in how an entry becomes rows, so each has a small row builder, made once per file
set (`row_builder`) and called once per entry on `EntryRows`: the entry as the database
streams it, amounts in integer minor units (formatted without `Decimal`). Sources for every
layout are in ../shared/research/domain.md (Yayoi page_id=18545, Money Forward ib01,
freee 204847430; OWASP CSV Injection for the neutralising rule).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any, NamedTuple

from ledgerflow.errors import BadInput
from ledgerflow.ledger.entries import Entry
from ledgerflow.ledger.money import MINOR_UNITS, minor_formatter, to_minor

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


#: A journal line as the row builders read it: a sequence whose first six items are account,
#: account name, debit and credit in minor units, tax code and memo (a database row of
#: `writer.stream_entries` carries its entry's columns after them).
LineRow = Sequence[Any]
ACCOUNT, ACCOUNT_NAME, DEBIT, CREDIT, TAX_CODE, MEMO = range(6)


class EntryRows(NamedTuple):
    """One entry as the export streams it from the database: amounts stay integer minor units."""

    id: int
    reference: str
    date: date
    description: str
    currency: str
    late: bool  # dated into a day already delivered (listed in the manifest)
    lines: Sequence[LineRow]


def entry_rows(entry: Entry, late: bool = False) -> EntryRows:
    """An `Entry` (Decimal amounts) in the form the row builders read."""
    cur = entry.currency
    return EntryRows(
        entry.id or 0,
        entry.reference,
        entry.date,
        entry.description,
        cur,
        late,
        [
            (
                ln.account,
                ln.account_name,
                to_minor(ln.debit, cur),
                to_minor(ln.credit, cur),
                ln.tax_code,
                ln.memo,
            )
            for ln in entry.lines
        ],
    )


#: Distinct text values a file set remembers (`TextCells.line`): a repeated account, account
#: name or tax code costs one dict look-up; memory stays bounded.
REMEMBERED_CELLS = 4096


class _Remembered(dict[str | None, str]):
    """text value -> its cell, made by `make` the first time; kept (up to `REMEMBERED_CELLS`
    values) only when written unchanged, so a value the profile's rules change is cleaned and
    counted each time it is written."""

    def __init__(self, make: Callable[[str | None], str]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, value: str | None) -> str:
        text = self.make(value)
        if text == (value or "") and len(self) < REMEMBERED_CELLS:
            self[value] = text
        return text


class TextCells:
    """Cleans the free-text cells (account, description, memo …) as a layout builds them, and
    counts what the profile's rules changed. Amount, date and flag cells never pass here.

    `line[value]` is `cell(value)` for the cells of a line that repeat from line to line
    (account, account name, tax code): a value written unchanged is remembered, so a repeated
    one is a dict look-up; a value the rules change is cleaned and counted each time it is
    written. Free text (memo, description) goes through `cell`: mostly distinct, a miss would
    cost more than the call."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.flattened = 0  # cells whose line breaks, tabs or control characters were replaced
        self.neutralised = 0  # cells the formula guard prefixed with '
        self.line = _Remembered(self.cell)

    def cell(self, value: str | None, cells: int = 1) -> str:
        """`value` as written; it fills `cells` cells of the file (an entry's text on each of its rows)."""
        if not value:
            return ""
        if value.isprintable() and value[0] not in _GUARD_FIRST:  # the common cell: unchanged, at C speed
            return value
        flat = self.profile.flatten(value)
        safe = neutralise_text(flat) if self.profile.formula_guard else flat
        self.flattened += cells * (flat != value)
        self.neutralised += cells * (safe != flat)
        return safe


Cells = list[list[str]]
#: A layout's rows for one entry: (entry, slip) -> rows, `slip` numbering the entry within its file.
RowBuilder = Callable[[EntryRows, int], Cells]


def row_builder(profile: Profile, text: TextCells) -> RowBuilder:
    """The rows of `profile`'s layout, entry by entry, its text cells cleaned (and counted) by `text`."""
    return LAYOUTS[profile.layout](profile, text)


@dataclass(frozen=True)
class Rendered:
    """The CSV rows of one entry, and how many text cells the profile's rules changed."""

    rows: list[list[str]]
    flattened: int
    neutralised: int


def render(entry: Entry, profile: Profile, slip: int) -> Rendered:
    """The rows of one entry (`slip` numbers the entry within its file: 1, 2, 3 …)."""
    text = TextCells(profile)
    rows = row_builder(profile, text)(entry_rows(entry), slip)
    return Rendered(rows, text.flattened, text.neutralised)


def rows_for(entry: Entry, profile: Profile, slip: int) -> list[list[str]]:
    """The CSV rows of one entry (`slip` numbers the entry within its file: 1, 2, 3 …)."""
    return render(entry, profile, slip).rows


def check_layout(entry: EntryRows, profile: Profile) -> None:
    """Refuse, naming the entry, a currency, sign or field this layout cannot hold. (A tax line
    whose taxed line is ambiguous is refused by the row builder; encodability by `check_entry`.)"""
    if profile.currencies is not None and entry.currency not in profile.currencies:
        raise BadInput(
            f"{_where(entry, profile)}: currency {entry.currency} is not supported "
            f"(only {', '.join(sorted(profile.currencies))})"
        )
    digits, limit = profile.max_amount_digits, profile.max_account_chars
    if profile.allow_negative and digits is None and limit is None:
        return  # nothing to check line by line (generic)
    largest = 10 ** (digits + MINOR_UNITS[entry.currency]) if digits is not None else None
    for n, line in enumerate(entry.lines, 1):
        debit, credit = line[DEBIT], line[CREDIT]
        if not profile.allow_negative and (debit < 0 or credit < 0):
            raise BadInput(
                f"{_where(entry, profile)}: line {n} has a negative amount; this layout only takes "
                f"positive amounts (put it on the opposite side)"
            )
        if largest is not None and max(abs(debit), abs(credit)) >= largest:
            amount = minor_formatter(entry.currency)(debit or credit)
            raise BadInput(
                f"{_where(entry, profile)}: line {n} amount {amount} is too large; this layout takes "
                f"at most {digits} digits ({'9' * (digits or 0)})"
            )
        if limit is not None and len(account := profile.clean(_account(line))) > limit:
            raise BadInput(
                f"{_where(entry, profile)}: line {n} account {account!r} has {len(account)} characters; "
                f"this layout takes at most {limit}"
            )


def _where(entry: EntryRows | Entry, profile: Profile) -> str:
    return f"entry {entry.reference} ({profile.name} profile)"


def check_entry(entry: Entry, profile: Profile) -> None:
    """Refuse, naming the entry, what this layout cannot hold (before anything is written)."""
    check_layout(entry_rows(entry), profile)
    where = _where(entry, profile)
    codec = profile.encoding
    for n, row in enumerate(rows_for(entry, profile, 1), 1):
        for cell in row:
            try:
                cell.encode(codec)
            except UnicodeEncodeError as exc:
                bad = cell[exc.start : exc.end]
                raise BadInput(f"{where}: row {n}: character {bad!r} cannot be written in {codec}") from None


def tax_amounts(entry: EntryRows, profile: Profile) -> dict[int, int]:
    """Line index → the amount (minor units) for that line's 税額 column.

    A tax line is a line on one of the profile's tax accounts (by code or name). Its amount
    goes to the one line on the same side that carries a tax code (the same tax code as the
    tax line's, when it has one). None there: nothing is filled. Several: refused, never split.
    """
    if not profile.tax_accounts:
        return {}
    lines = entry.lines
    is_tax = [
        line[ACCOUNT] in profile.tax_accounts or line[ACCOUNT_NAME] in profile.tax_accounts for line in lines
    ]
    if not any(is_tax):
        return {}
    taxes: dict[int, int] = {}
    for n, (line, tax) in enumerate(zip(lines, is_tax, strict=True)):
        if not tax:
            continue
        debit = bool(line[DEBIT])
        taxed = [
            i
            for i, other in enumerate(lines)
            if not is_tax[i]
            and other[TAX_CODE]
            and bool(other[DEBIT]) == debit
            and (not line[TAX_CODE] or other[TAX_CODE] == line[TAX_CODE])
        ]
        if len(taxed) > 1:
            raise BadInput(
                f"entry {entry.reference} ({profile.name} profile): tax line {n + 1} ({_account(line)}) "
                f"could belong to lines {', '.join(str(i + 1) for i in taxed)}; "
                "give it the tax code of its line"
            )
        if taxed:
            taxes[taxed[0]] = taxes.get(taxed[0], 0) + (line[DEBIT] or line[CREDIT])
    return taxes


# ---------------------------------------------------------------- row builders
# Each layout is a factory called once per file set; the function it returns builds one
# entry's rows with no per-cell dispatch: text cells through `TextCells.cell`, amount cells
# from minor units, entry-level cells (reference, date, description) computed once per entry.


def _generic(p: Profile, text: TextCells) -> RowBuilder:
    cell, line_cell = text.cell, text.line

    def rows(entry: EntryRows, slip: int) -> Cells:
        n = len(entry.lines)
        reference, description = cell(entry.reference, n), cell(entry.description, n)
        day, currency = format_date(entry.date, p.date_style), entry.currency
        amount = minor_formatter(currency)
        zero = amount(0)  # one side of most lines: no call
        return [
            [
                reference,
                day,
                line_cell[line[ACCOUNT]],
                line_cell[line[ACCOUNT_NAME]],
                description,
                amount(debit) if (debit := line[DEBIT]) else zero,
                amount(credit) if (credit := line[CREDIT]) else zero,
                line_cell[line[TAX_CODE]],
                currency,
                cell(line[MEMO]),
            ]
            for line in entry.lines
        ]

    return rows


def _account(line: LineRow) -> str:
    return str(line[ACCOUNT_NAME] or line[ACCOUNT])


def _sides(
    entry: EntryRows, p: Profile, text: TextCells, blank: str
) -> list[tuple[LineRow, list[str], list[str]]]:
    """Per line: (line, debit cells, credit cells) as [account, tax code, amount, tax amount];
    the side a line is not on gets `blank` amounts and empty text."""
    taxes = tax_amounts(entry, p)
    amount, line_cell = minor_formatter(entry.currency), text.line
    if p.max_amount_digits is not None:  # several tax lines may add up past the layout's digits
        largest = 10 ** (p.max_amount_digits + MINOR_UNITS[entry.currency])
        for i, summed in taxes.items():
            if abs(summed) >= largest:
                raise BadInput(
                    f"{_where(entry, p)}: line {i + 1} tax amount {amount(summed)} is too large; this layout "
                    f"takes at most {p.max_amount_digits} digits ({'9' * p.max_amount_digits})"
                )
    out = []
    for i, line in enumerate(entry.lines):
        tax = amount(taxes[i]) if i in taxes else ""
        filled = [
            line_cell[_account(line)],
            line_cell[line[TAX_CODE]],
            amount(line[DEBIT] or line[CREDIT]),
            tax,
        ]
        empty = ["", "", blank, ""]
        out.append((line, filled, empty) if line[DEBIT] else (line, empty, filled))
    return out


def _yayoi(p: Profile, text: TextCells) -> RowBuilder:
    """弥生会計 仕訳日記帳: one row per line; 識別フラグ 2110 first / 2100 middle / 2101 last
    (2111 alone); 借方/貸方 勘定科目 (E, K), 税区分 (H, N), 金額 (I, O: `0` on the other side),
    税金額 (J, P); 摘要 (Q), 仕訳メモ (V)."""
    cell = text.cell

    def rows(entry: EntryRows, slip: int) -> Cells:
        out = []
        last = len(entry.lines) - 1
        day, number = format_date(entry.date, p.date_style), str(slip)
        description = cell(entry.description, len(entry.lines))
        for i, (line, debit, credit) in enumerate(_sides(entry, p, text, blank="0")):
            flag = "2111" if last == 0 else "2110" if i == 0 else "2101" if i == last else "2100"
            d_account, d_tax_code, d_amount, d_tax = debit
            c_account, c_tax_code, c_amount, c_tax = credit
            out.append(
                [
                    flag,
                    number,
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
                    description,
                    "",
                    "",
                    "0",
                    "",
                    cell(line[MEMO]),
                    "0",
                    "0",
                    "no",
                ]
            )
        return out

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


def _moneyforward(p: Profile, text: TextCells) -> RowBuilder:
    """Money Forward 仕訳帳: same 取引No and 取引日 on every line of one entry, one side per row."""
    cell = text.cell

    def rows(entry: EntryRows, slip: int) -> Cells:
        day, number = format_date(entry.date, p.date_style), str(slip)
        description = cell(entry.description, len(entry.lines))
        out = []
        for line, debit, credit in _sides(entry, p, text, blank=""):
            d_account, d_tax_code, d_amount, d_tax = debit
            c_account, c_tax_code, c_amount, c_tax = credit
            out.append(
                [
                    number,
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
                    description,
                    cell(line[MEMO]),
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                ]
            )
        return out

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


def _freee(p: Profile, text: TextCells) -> RowBuilder:
    """freee 仕訳インポート (振替伝票): rows with the same 日付 and 伝票番号 form one entry."""
    cell = text.cell

    def rows(entry: EntryRows, slip: int) -> Cells:
        day, number = format_date(entry.date, p.date_style), str(slip)
        description = cell(entry.description, len(entry.lines))
        out = []
        for line, debit, credit in _sides(entry, p, text, blank=""):
            d_account, d_tax_code, d_amount, d_tax = debit
            c_account, c_tax_code, c_amount, c_tax = credit
            out.append(
                [
                    day,
                    number,
                    "",
                    d_account,
                    d_tax_code,
                    d_amount,
                    d_tax,
                    c_account,
                    c_tax_code,
                    c_amount,
                    c_tax,
                    description,
                    cell(line[MEMO]),
                ]
            )
        return out

    return rows


LAYOUTS: dict[str, Callable[[Profile, TextCells], RowBuilder]] = {
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
