"""Journal entries: validation of what callers send (API, Python, CSV/JSON imports)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from ledgerflow.errors import BadInput
from ledgerflow.ledger.money import check_currency, format_amount, parse_amount

EXPORT_PATHS = ("scheduled", "immediate")
MAX_LINES = 1000


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
    obj: Mapping[str, Any], key: str, where: str, *, required: bool = True, limit: int = 500
) -> str | None:
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
    return text


def parse_entry(obj: Any, where: str = "entry") -> Entry:
    """Validate one entry mapping; every problem names the entry (reference) and the field."""
    if not isinstance(obj, Mapping):
        raise BadInput(f"{where}: expected an object, got {type(obj).__name__}")
    reference = _text(obj, "reference", where, limit=64)
    assert reference is not None
    where = f"{where} {reference}" if where == "entry" else f"{where} (entry {reference})"
    raw_date = obj.get("date")
    try:
        entry_date = raw_date if isinstance(raw_date, date) else date.fromisoformat(str(raw_date))
    except (TypeError, ValueError):
        raise BadInput(f"{where}: bad date {raw_date!r} (expected YYYY-MM-DD)") from None
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
    lines = tuple(_parse_line(raw, currency, f"{where} line {n}") for n, raw in enumerate(raw_lines, 1))
    entry = Entry(
        reference=reference,
        date=entry_date,
        description=_text(obj, "description", where, required=False) or "",
        currency=currency,
        lines=lines,
        export_path=path,
    )
    if entry.debit_total != entry.credit_total:
        raise BadInput(
            f"{where}: unbalanced: debits {format_amount(entry.debit_total, currency)} != credits "
            f"{format_amount(entry.credit_total, currency)} {currency}"
        )
    return entry


def _parse_line(raw: Any, currency: str, where: str) -> Line:
    if not isinstance(raw, Mapping):
        raise BadInput(f"{where}: expected an object")
    debit = parse_amount(raw.get("debit"), currency, f"{where}: debit")
    credit = parse_amount(raw.get("credit"), currency, f"{where}: credit")
    if debit and credit:
        raise BadInput(f"{where}: a line is either a debit or a credit, not both")
    if not debit and not credit:
        raise BadInput(f"{where}: debit and credit are both zero")
    account = _text(raw, "account", where, limit=40)
    assert account is not None
    return Line(
        account=account,
        account_name=_text(raw, "account_name", where, required=False, limit=100) or "",
        debit=debit,
        credit=credit,
        tax_code=_text(raw, "tax_code", where, required=False, limit=40),
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
