"""Money is never a float: `Decimal` in Python, integer minor units in the database.

An amount arrives as a decimal string or an integer and is read by one strict rule
(`parse_amount`): ASCII digits, an optional leading `-`, grouping commas only in groups of
three (`1,234.50`), at most the currency's decimals, at most 15 digits before the point.
Anything else is refused with the reason; nothing is ever re-interpreted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
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
#: Digits allowed before the decimal point: amounts stay far inside BIGINT minor units, and
#: sums of a whole batch too.
MAX_INTEGER_DIGITS = 15
MAX_AMOUNT = Decimal(10) ** MAX_INTEGER_DIGITS  # exclusive

_AMOUNT = re.compile(r"(-?)([1-9][0-9]{0,2}(?:,[0-9]{3})+|[0-9]+)(?:\.([0-9]+))?")
_QUANTUM = {places: Decimal(1).scaleb(-places) for places in set(MINOR_UNITS.values())}


class JsonNumber(str):
    """The text of a JSON number with a fraction or exponent, kept unread: never an amount."""


def check_currency(code: Any) -> str:
    if not isinstance(code, str) or code.upper() not in MINOR_UNITS:
        raise BadInput(f"unknown currency {code!r} (known: {', '.join(sorted(MINOR_UNITS))})")
    return code.upper()


def largest_amount(currency: str) -> str:
    """The largest amount accepted in `currency`, as text: '999999999999999.99' (THB)."""
    places = MINOR_UNITS[currency]
    return "9" * MAX_INTEGER_DIGITS + ("." + "9" * places if places else "")


def parse_amount(value: Any, currency: str, what: str = "amount") -> Decimal:
    """A decimal string or an integer (or a `Decimal` from Python callers) → exact `Decimal`.

    Blank (None or "") is zero. Refused, with the reason: booleans, floats, exponents,
    underscores, other digit scripts, misplaced grouping commas, more decimals than the
    currency has, more than 15 digits before the point. Checked before any arithmetic.
    """
    if value is None or value == "":
        return Decimal(0)
    if isinstance(value, bool):
        raise BadInput(f"{what} must be a decimal string such as '107.00', got {str(value).lower()}")
    if isinstance(value, int):
        if abs(value) >= 10**MAX_INTEGER_DIGITS:
            raise _too_large(what, value, currency)
        return Decimal(value)
    if isinstance(value, Decimal):
        return check_amount(value, currency, what)
    if isinstance(value, JsonNumber | float):
        raise BadInput(
            f"{what} must be a decimal string such as '107.00' or a whole number, got the number "
            f"{_show(str(value))} (a float: send amounts as strings)"
        )
    if not isinstance(value, str):
        raise BadInput(
            f"{what} must be a decimal string such as '107.00' or a whole number, got "
            f"{type(value).__name__} {_show(value)}"
        )
    text = value.strip(" ")
    match = _AMOUNT.fullmatch(text)
    if match is None:
        raise BadInput(f"{what} {_show(value)} {_why_not(text)}")
    sign, whole, fraction = match.groups()
    if len(whole.replace(",", "").lstrip("0")) > MAX_INTEGER_DIGITS:
        raise _too_large(what, value, currency)
    places = MINOR_UNITS[currency]
    if fraction is not None and len(fraction) > places:
        raise _too_many_decimals(what, value, currency)
    amount = Decimal(sign + whole.replace(",", "") + ("." + fraction if fraction else ""))
    return amount if amount else Decimal(0)  # -0 is 0


def check_amount(amount: Decimal, currency: str, what: str = "amount") -> Decimal:
    """Refuse a `Decimal` that is not finite, too large or too precise for `currency`."""
    if not amount.is_finite():
        raise BadInput(f"{what} {_show(str(amount))} is not a finite number")
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > MINOR_UNITS[currency]:
        raise _too_many_decimals(what, str(amount), currency)
    if amount and amount.adjusted() >= MAX_INTEGER_DIGITS:
        raise _too_large(what, str(amount), currency)
    return amount if amount else Decimal(0)


def _why_not(text: str) -> str:
    """Why `text` is not an amount, in words (it did not match the one accepted form)."""
    if any(ch.isdigit() and not "0" <= ch <= "9" for ch in text):
        return "uses digits other than ASCII 0-9"
    if "e" in text.lower() and any("0" <= ch <= "9" for ch in text):
        return "has an exponent; write the number out in full"
    if "_" in text:
        return "contains '_'; write digits only"
    if "," in text:
        return "has a misplaced comma: commas may only group thousands (1,234.50), decimals follow a '.'"
    return "is not a decimal number (expected digits, an optional '-' and '.', e.g. '1234.50')"


def _too_large(what: str, value: Any, currency: str) -> BadInput:
    return BadInput(
        f"{what} {_show(value)} is too large: the largest amount allowed is "
        f"{largest_amount(currency)} {currency} ({MAX_INTEGER_DIGITS} digits before the point)"
    )


def _too_many_decimals(what: str, value: Any, currency: str) -> BadInput:
    places = MINOR_UNITS[currency]
    allowed = f"{currency} has no decimals" if places == 0 else f"{currency} has {places}"
    return BadInput(f"{what} {_show(value)} has more decimals than {currency} allows ({allowed})")


def _show(value: Any) -> str:
    """The value for an error message, shortened: a message never carries a 10 MB amount."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"(a whole number of about {int(value.bit_length() * 0.30103) + 1} digits)"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:36] + "…"


def to_minor(amount: Decimal, currency: str) -> int:
    return int(amount.scaleb(MINOR_UNITS[currency]))


def from_minor(minor: int, currency: str) -> Decimal:
    """Integer minor units → Decimal with exactly the currency's places (10700 THB → 107.00)."""
    return Decimal(minor).scaleb(-MINOR_UNITS[currency])


def format_amount(amount: Decimal, currency: str) -> str:
    """Plain decimal text with the currency's places: '107.00' (THB), '1080' (JPY), '-5.50'."""
    return f"{amount.quantize(_QUANTUM[MINOR_UNITS[currency]]):f}"


def minor_formatter(currency: str) -> Callable[[int], str]:
    """`format_amount` for integer minor units, without a `Decimal`: the export's amount cells.

    `minor_formatter("THB")(-550)` is '-5.50', the text `format_amount(from_minor(-550, "THB"))` gives.
    """
    places = MINOR_UNITS[currency]
    if places == 0:
        return str
    scale, zero, pattern = 10**places, "0." + "0" * places, f"%d.%0{places}d"

    def text(minor: int) -> str:
        if not minor:
            return zero
        digits: str = pattern % divmod(abs(minor), scale)
        return digits if minor > 0 else "-" + digits

    return text
