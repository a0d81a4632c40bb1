"""Money is never a float: `Decimal` in Python, integer minor units in the database."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from ledgerflow.errors import BadInput

#: ISO 4217 currencies we accept, with their number of decimal places.
MINOR_UNITS: dict[str, int] = {
    "THB": 2,
    "JPY": 0,
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "SGD": 2,
    "CNY": 2,
    "HKD": 2,
    "TWD": 2,
    "KRW": 0,
    "VND": 0,
    "IDR": 2,
    "MYR": 2,
    "PHP": 2,
    "LAK": 2,
    "MMK": 2,
    "KHR": 2,
    "BND": 2,
    "INR": 2,
    "AUD": 2,
    "NZD": 2,
    "CAD": 2,
    "CHF": 2,
}
MAX_AMOUNT = Decimal(10) ** 15


def check_currency(code: Any) -> str:
    if not isinstance(code, str) or code.upper() not in MINOR_UNITS:
        raise BadInput(f"unknown currency {code!r} (known: {', '.join(sorted(MINOR_UNITS))})")
    return code.upper()


def parse_amount(value: Any, currency: str, what: str = "amount") -> Decimal:
    """A decimal string (or int/Decimal) → Decimal, refusing floats and excess precision."""
    if value is None or value == "":
        return Decimal(0)
    if isinstance(value, float | bool):
        raise BadInput(f"{what} must be a decimal string such as '107.00', got {value!r}")
    try:
        amount = Decimal(str(value).strip().replace(",", ""))
    except InvalidOperation:
        raise BadInput(f"{what} {value!r} is not a number") from None
    if not amount.is_finite():
        raise BadInput(f"{what} {value!r} is not a finite number")
    places = MINOR_UNITS[currency]
    if amount != amount.quantize(Decimal(1).scaleb(-places)):
        raise BadInput(f"{what} {value!r} has more decimals than {currency} allows ({places})")
    if abs(amount) >= MAX_AMOUNT:
        raise BadInput(f"{what} {value!r} is too large")
    return amount


_QUANTUM = {places: Decimal(1).scaleb(-places) for places in set(MINOR_UNITS.values())}


def to_minor(amount: Decimal, currency: str) -> int:
    return int(amount.scaleb(MINOR_UNITS[currency]))


def from_minor(minor: int, currency: str) -> Decimal:
    """Integer minor units → Decimal with exactly the currency's places (10700 THB → 107.00)."""
    return Decimal(minor).scaleb(-MINOR_UNITS[currency])


def format_amount(amount: Decimal, currency: str) -> str:
    """Plain decimal text with the currency's places: '107.00' (THB), '1080' (JPY), '-5.50'."""
    return f"{amount.quantize(_QUANTUM[MINOR_UNITS[currency]]):f}"
