"""Journal entries: validation of what callers send (API, Python, CSV/JSON imports)."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from ledgerflow.errors import BadInput
from ledgerflow.ledger.dates import parse_day
from ledgerflow.ledger.money import check_amount, check_currency, format_amount, parse_amount

EXPORT_PATHS = ("scheduled", "immediate")
MAX_LINES = 1000
#: What a one-line field may not hold: controls (tab, CR, LF, NEL…), line and paragraph separators.
_NOT_ONE_LINE = frozenset({"Cc", "Zl", "Zp"})
#: How many refused entries one error lists (the count of the rest follows).
MAX_REPORTED = 50

T = TypeVar("T")


@dataclass(frozen=True)
class Line:
    account: str
    account_name: str
    debit: Decimal
    credit: Decimal
    tax_code: str | None = None
    memo: str | None = None


@dataclass(frozen=True)
class Entry:
    """A balanced journal entry (sum of debits = sum of credits, in one currency)."""

    reference: str
    date: date
    description: str
    currency: str
    lines: tuple[Line, ...]
    export_path: str = "scheduled"
    id: int | None = None
    status: str = "posted"
    source: str = "api"
    reverses_id: int | None = None
    created_at: datetime | None = None

    @property
    def debit_total(self) -> Decimal:
        return sum((line.debit for line in self.lines), Decimal(0))

    @property
    def credit_total(self) -> Decimal:
        return sum((line.credit for line in self.lines), Decimal(0))

    def to_dict(self) -> dict[str, Any]:
        """The API / JSON-import shape: amounts as decimal strings."""
        return {
            "id": self.id,
            "reference": self.reference,
            "date": self.date.isoformat(),
            "description": self.description,
            "currency": self.currency,
            "export_path": self.export_path,
            "status": self.status,
            "source": self.source,
            "lines": [
                {
                    "account": ln.account,
                    "account_name": ln.account_name,
                    "debit": format_amount(ln.debit, self.currency),
                    "credit": format_amount(ln.credit, self.currency),
                    "tax_code": ln.tax_code,
                    "memo": ln.memo,
                }
                for ln in self.lines
            ],
        }


def _text(
    obj: Mapping[str, Any],
    key: str,
    where: str,
    *,
    required: bool = True,
    limit: int = 500,
    one_line: bool = False,
) -> str | None:
    """A text field, stripped. `one_line` (names and codes that are looked up or matched, such
    as a reference or an account): no line break, tab or other control character either."""
    value = obj.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise BadInput(f"{where}: {key} is required")
        return None
    if not isinstance(value, str | int):
        raise BadInput(f"{where}: {key} must be text, got {value!r}")
    text = str(value).strip()
    if len(text) > limit:
        raise BadInput(f"{where}: {key} is longer than {limit} characters")
    if "\x00" in text:
        raise BadInput(f"{where}: {key} contains a NUL character")
    return _check_one_line(text, key, where) if one_line else text


def _check_one_line(text: str, key: str, where: str) -> str:
    if any(unicodedata.category(ch) in _NOT_ONE_LINE for ch in text):
        shown = repr(text) if len(text) <= 40 else repr(text[:36]) + "…"
        raise BadInput(
            f"{where}: {key} {shown} contains a line break, tab or control character; "
            f"a {key} is one line of printable text"
        )
    return text


def parse_entry(obj: Any, where: str = "entry", line_places: Sequence[str] | None = None) -> Entry:
    """Validate one entry mapping; every problem names the entry (reference) and the field.

    `where` says where the entry came from (`entries.csv:4`); `line_places`, where each of
    its lines did (a CSV file's line numbers), else lines are named by position.
    """
    if not isinstance(obj, Mapping):
        raise BadInput(f"{where}: expected an object, got {type(obj).__name__}")
    reference = _text(obj, "reference", where, limit=64, one_line=True)
    assert reference is not None
    where = f"{where} {reference}" if where == "entry" else f"{where} (entry {reference})"
    try:
        entry_date = parse_day(obj.get("date"))
    except BadInput as exc:
        raise BadInput(f"{where}: {exc}") from None
    currency = obj.get("currency") or "THB"
    try:
        currency = check_currency(currency)
    except BadInput as exc:
        raise BadInput(f"{where}: {exc}") from None
    path = obj.get("export_path") or "scheduled"
    if path not in EXPORT_PATHS:
        raise BadInput(f"{where}: export_path must be scheduled or immediate, got {path!r}")
    raw_lines = obj.get("lines")
    if not isinstance(raw_lines, Sequence) or isinstance(raw_lines, str) or not raw_lines:
        raise BadInput(f"{where}: an entry needs at least one line")
    if len(raw_lines) > MAX_LINES:
        raise BadInput(f"{where}: more than {MAX_LINES} lines")
    places = (
        [f"{place} (entry {reference})" for place in line_places]
        if line_places is not None and len(line_places) == len(raw_lines)
        else [f"{where} line {n}" for n in range(1, len(raw_lines) + 1)]
    )
    lines = tuple(_parse_line(raw, currency, place) for raw, place in zip(raw_lines, places, strict=True))
    entry = Entry(
        reference=reference,
        date=entry_date,
        description=_text(obj, "description", where, required=False) or "",
        currency=currency,
        lines=lines,
        export_path=path,
    )
    check_balanced(entry, where)
    return entry


def check_balanced(entry: Entry, where: str) -> None:
    """Σ debit = Σ credit, or a clear error with both totals."""
    if entry.debit_total != entry.credit_total:
        cur = entry.currency
        raise BadInput(
            f"{where}: unbalanced: debits {format_amount(entry.debit_total, cur)} != credits "
            f"{format_amount(entry.credit_total, cur)} {cur}"
        )


def check_built_entry(entry: Entry) -> Entry:
    """Validate an `Entry` built in Python (not parsed): one-line names, currency, amounts, balance."""
    _check_one_line(entry.reference, "reference", "entry")
    where = f"entry {entry.reference}"
    currency = check_currency(entry.currency)
    if not entry.lines or len(entry.lines) > MAX_LINES:
        raise BadInput(f"{where}: an entry needs 1 to {MAX_LINES} lines")
    for n, line in enumerate(entry.lines, 1):
        for key in ("account", "account_name", "tax_code"):
            _check_one_line(getattr(line, key) or "", key, f"{where} line {n}")
        check_amount(line.debit, currency, f"{where} line {n}: debit")
        check_amount(line.credit, currency, f"{where} line {n}: credit")
    check_balanced(entry, where)
    return entry


@dataclass
class Problems:
    """Problems found in many entries, reported together in one error (nothing is stored)."""

    count: int = 0
    messages: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.messages) < MAX_REPORTED:
            self.messages.append(message)

    def attempt(self, func: Callable[..., T], *args: Any, place: str = "") -> T | None:
        """`func(*args)`, or None with its BadInput recorded (prefixed with `place`)."""
        try:
            return func(*args)
        except BadInput as exc:
            self.add(f"{place}: {exc}" if place else str(exc))
            return None

    def raise_if_any(self) -> None:
        if not self.count:
            return
        if self.count == 1:
            raise BadInput(self.messages[0])
        more = f"\n  … and {self.count - len(self.messages)} more" if self.count > len(self.messages) else ""
        raise BadInput(f"{self.count} problems, nothing stored:\n  " + "\n  ".join(self.messages) + more)


def _parse_line(raw: Any, currency: str, where: str) -> Line:
    if not isinstance(raw, Mapping):
        raise BadInput(f"{where}: expected an object")
    debit = parse_amount(raw.get("debit"), currency, f"{where}: debit")
    credit = parse_amount(raw.get("credit"), currency, f"{where}: credit")
    if debit and credit:
        raise BadInput(f"{where}: a line is either a debit or a credit, not both")
    if not debit and not credit:
        raise BadInput(f"{where}: debit and credit are both zero")
    account = _text(raw, "account", where, limit=40, one_line=True)
    assert account is not None
    return Line(
        account=account,
        account_name=_text(raw, "account_name", where, required=False, limit=100, one_line=True) or "",
        debit=debit,
        credit=credit,
        tax_code=_text(raw, "tax_code", where, required=False, limit=40, one_line=True),
        memo=_text(raw, "memo", where, required=False),
    )


def reversal_of(entry: Entry, on: date, reference: str | None = None) -> Entry:
    """The entry that cancels `entry`: same lines with debit and credit swapped."""
    return Entry(
        reference=reference or f"REV-{entry.reference}"[:64],
        date=on,
        description=f"Reversal of {entry.reference}: {entry.description}"[:500],
        currency=entry.currency,
        lines=tuple(
            Line(ln.account, ln.account_name, ln.credit, ln.debit, ln.tax_code, ln.memo) for ln in entry.lines
        ),
        export_path="scheduled",
        reverses_id=entry.id,
        source="reversal",
    )
