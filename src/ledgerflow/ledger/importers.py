"""Reading entries from files: a JSON list, JSON lines, or CSV with one row per line.

Every problem is reported with the file's line number, and nothing from a file is stored
unless all of it is valid.
"""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from ledgerflow.errors import BadInput
from ledgerflow.ledger.entries import Entry, parse_entry

CSV_HEADER = (
    "reference",
    "date",
    "description",
    "currency",
    "account",
    "account_name",
    "debit",
    "credit",
    "tax_code",
    "memo",
)
MAX_FILE_BYTES = 50 * 2**20


def read_entries(path: Path) -> list[Entry]:
    """Parse a .json, .jsonl/.ndjson or .csv file into validated entries."""
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise BadInput(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MB")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 (byte {exc.start})") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return parse_csv(text, str(path))
    if suffix in (".jsonl", ".ndjson"):
        return parse_json_lines(text, str(path))
    return parse_json(text, str(path))


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def parse_json(text: str, name: str = "<json>") -> list[Entry]:
    stripped = text.lstrip()
    if not stripped.startswith("["):
        return parse_json_lines(text, name)
    data = _loads(text, name)
    starts = _object_start_lines(text)
    out = []
    for i, obj in enumerate(data):
        line = starts[i] if i < len(starts) else "?"
        out.append(parse_entry(obj, f"{name}:{line}"))
    return _unique(out, name)


def parse_json_lines(text: str, name: str = "<jsonl>") -> list[Entry]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            out.append(parse_entry(_loads(line, f"{name}:{number}"), f"{name}:{number}"))
    return _unique(out, name)


def parse_csv(text: str, name: str = "<csv>") -> list[Entry]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = tuple(h.strip() for h in (reader.fieldnames or ()))
    missing = [c for c in CSV_HEADER if c not in header]
    if missing:
        raise BadInput(f"{name}:1: missing column(s) {', '.join(missing)} (header: {','.join(CSV_HEADER)})")
    groups: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    for row in reader:
        number = reader.line_num
        if None in row or any(v is None for v in row.values()):
            raise BadInput(f"{name}:{number}: wrong number of fields")
        ref = (row.get("reference") or "").strip()
        if not ref:
            raise BadInput(f"{name}:{number}: reference is required")
        entry = groups.setdefault(
            ref,
            {
                "reference": ref,
                "date": row["date"],
                "description": row["description"],
                "currency": row["currency"],
                "lines": [],
            },
        )
        first_line.setdefault(ref, number)
        for key in ("date", "currency"):
            if (row[key] or "").strip() != (entry[key] or "").strip():
                raise BadInput(
                    f"{name}:{number}: {key} {row[key]!r} differs from the entry's first row "
                    f"(line {first_line[ref]})"
                )
        entry["lines"].append(
            {k: row[k] for k in ("account", "account_name", "debit", "credit", "tax_code", "memo")}
        )
        entry.setdefault("_lines", []).append(number)
    out = []
    for ref, obj in groups.items():
        obj.pop("_lines")
        out.append(parse_entry(obj, f"{name}:{first_line[ref]}"))
    return out


def _unique(entries: list[Entry], name: str) -> list[Entry]:
    seen: set[str] = set()
    for e in entries:
        if e.reference in seen:
            raise BadInput(f"{name}: reference {e.reference} appears twice in the file")
        seen.add(e.reference)
    return entries


def _object_start_lines(text: str) -> list[int]:
    """Line numbers where each top-level object of a JSON array starts (for error messages)."""
    out, depth, line, in_string, escape = [], 0, 1, False, False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_string:
            escape = not escape and ch == "\\"
            if ch == '"' and not escape:
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if ch == "{" and depth == 2:
                out.append(line)
        elif ch in "]}":
            depth -= 1
    return out
