"""Which expense account a receipt is booked to: vendor rules with a priority, else the account
people chose most often for that vendor (learned), else the default.

`LEDGERFLOW_RECEIPT_RULES` is a JSON list of rules, tried by `priority` (0 first, default 5)
and then in the order written; the first whose every condition holds wins:

    [{"account": "5210:Meeting expenses", "vendor": "Starbucks", "max": "2000", "priority": 1},
     {"account": "5300:Supplies", "text": "toner"}]

The older form, an object of keyword → account, is a list of rules whose keyword may be in
the vendor or the text.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ledgerflow.errors import BadInput

FIELDS = {"account", "vendor", "text", "keyword", "min", "max", "currency", "priority", "name"}
#: Company forms left out when comparing vendor names (株式会社サンプル = サンプル).
COMPANY_FORMS = ("株式会社", "有限会社", "合同会社", "(株)", "บริษัท", "จำกัด", "มหาชน", "co.,", "ltd", "inc")


def fold(text: str | None) -> str:
    """For comparing names and keywords: NFKC, case-folded, company forms and punctuation removed.

    Thai vowel and tone marks are kept (they are letters of the name), spaces are not.
    """
    text = unicodedata.normalize("NFKC", text or "").casefold()
    for form in COMPANY_FORMS:
        text = text.replace(form, " ")
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LMN")


def same_vendor(a: str | None, b: str | None) -> bool:
    """Two vendor names are one shop: equal when folded, or one holds the other (3+ letters)."""
    x, y = fold(a), fold(b)
    if not x or not y:
        return False
    return x == y or (min(len(x), len(y)) >= 3 and (x in y or y in x))


@dataclass(frozen=True)
class Rule:
    account: str
    name: str
    priority: int = 5
    vendor: str | None = None  # in the vendor's name
    text: str | None = None  # in the receipt's text
    keyword: str | None = None  # in either
    minimum: Decimal | None = None  # total >= minimum
    maximum: Decimal | None = None  # total <= maximum
    currency: str | None = None

    def matches(self, vendor: str | None, text: str, total: Decimal | None, currency: str | None) -> bool:
        folded_vendor, folded_text = fold(vendor), fold(text)
        checks = [
            self.vendor is None or fold(self.vendor) in folded_vendor,
            self.text is None or fold(self.text) in folded_text,
            self.keyword is None or fold(self.keyword) in folded_vendor + "\n" + folded_text,
            self.currency is None or self.currency == currency,
            self.minimum is None or (total is not None and total >= self.minimum),
            self.maximum is None or (total is not None and total <= self.maximum),
        ]
        return all(checks)


def parse_rules(value: Any) -> list[Rule]:
    """Rules from the setting's JSON (a list of rule objects, or keyword → account); ValueError
    naming the rule and the field when one is wrong."""
    from ledgerflow.config import check_account
    from ledgerflow.ledger.money import check_currency, parse_amount

    if isinstance(value, dict):
        value = [{"keyword": k, "account": a} for k, a in value.items()]
    if not isinstance(value, list):
        raise ValueError("receipt rules must be a JSON list of rules (or an object of keyword → account)")
    rules = []
    for number, raw in enumerate(value, 1):
        where = f"receipt rule {number}"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be an object such as {{'vendor': 'Amazon', 'account': ...}}")
        unknown = sorted(set(raw) - FIELDS)
        if unknown:
            raise ValueError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(FIELDS))})")
        try:
            account = check_account(str(raw.get("account", "")))
            words = {k: raw.get(k) for k in ("vendor", "text", "keyword")}
            for key, word in words.items():
                if word is not None and (not isinstance(word, str) or not fold(word)):
                    raise ValueError(f"{key} must be a non-empty text")
            if not any(raw.get(k) is not None for k in ("vendor", "text", "keyword", "min", "max")):
                raise ValueError("give at least one of vendor, text, keyword, min, max")
            currency = check_currency(raw["currency"]) if raw.get("currency") is not None else None
            bounds = {
                k: parse_amount(raw[k], currency or "THB", k) if raw.get(k) is not None else None
                for k in ("min", "max")
            }
            priority = raw.get("priority", 5)
            if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
                raise ValueError(f"priority must be a whole number 0-9, got {priority!r}")
        except (ValueError, BadInput) as exc:
            raise ValueError(f"{where}: {exc}") from None
        label = raw.get("name") or next((f"{k} {w!r}" for k, w in words.items() if w), f"rule {number}")
        rules.append(
            Rule(
                account=account,
                name=str(label),
                priority=priority,
                minimum=bounds["min"],
                maximum=bounds["max"],
                currency=currency,
                **words,
            )
        )
    return sorted(rules, key=lambda r: r.priority)  # stable: the written order within a priority


def first_match(
    rules: list[Rule], vendor: str | None, text: str, total: Decimal | None, currency: str | None
) -> Rule | None:
    return next((r for r in rules if r.matches(vendor, text, total, currency)), None)
