"""Reading entries from files: a JSON list, JSON lines, or CSV with one row per line.

Every bad entry is reported (up to `MAX_REPORTED`, then a count) with its place in the
file: `entries.csv:4` (the file's line), `entries.jsonl:2`, `entries.json item 3 (line 14)`.
Nothing from a file is stored unless all of it is valid.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledgerflow.errors import BadInput
from ledgerflow.ledger.entries import Entry, Problems, parse_entry
from ledgerflow.ledger.money import JsonNumber

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
#: A JSON integer longer than this is kept as its text, so the amount rule refuses it by size
#: (Python would refuse to convert more than 4,300 digits with an unrelated error).
_LONG_INT_DIGITS = 40
#: A line break as `io.StringIO(newline="")` splits lines, and so as `csv` counts them.
_LINE_BREAK = re.compile("\r\n|\r|\n")


@dataclass(frozen=True)
class Located:
    """An entry and where it came from (`entries.csv:4`)."""

    place: str
    entry: Entry


def read_entries(path: Path, problems: Problems | None = None) -> list[Located]:
    """Parse a .json, .jsonl/.ndjson or .csv file into validated entries.

    With `problems`, bad entries are recorded there and left out; without, they are raised
    together as one `BadInput`.
    """
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise BadInput(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MB")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 (byte {exc.start})") from None
    own = problems is None
    problems = problems if problems is not None else Problems()
    suffix = path.suffix.lower()
    if suffix == ".csv":
        found = parse_csv(text, str(path), problems)
    elif suffix in (".jsonl", ".ndjson"):
        found = parse_json_lines(text, str(path), problems)
    else:
        found = parse_json(text, str(path), problems)
    if own:
        problems.raise_if_any()
    return found


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_float=JsonNumber, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise BadInput(f"{where}: JSON nested too deeply to be a journal entry") from None


def _json_int(text: str) -> int | str:
    return int(text) if len(text) <= _LONG_INT_DIGITS else text


def parse_json(text: str, name: str = "<json>", problems: Problems | None = None) -> list[Located]:
    """A JSON list of entries (item N is named with the line its object starts on)."""
    stripped = text.lstrip()
    if not stripped.startswith("["):
        return parse_json_lines(text, name, problems)
    data = _loads(text, name)
    starts = _item_start_lines(text)
    out = []
    collect = problems if problems is not None else Problems()
    for i, obj in enumerate(data):
        place = f"{name} item {i + 1}" + (f" (line {starts[i]})" if i < len(starts) else "")
        entry = collect.attempt(parse_entry, obj, place)
        if entry is not None:
            out.append(Located(place, entry))
    return _unique(out, collect, problems is None)


def parse_json_lines(text: str, name: str = "<jsonl>", problems: Problems | None = None) -> list[Located]:
    """One entry per line; blank lines are skipped. Lines end at '\n' (or '\r\n') only, as
    JSON Lines says: U+2028, U+2029 or NEL may stand raw inside a JSON string."""
    out = []
    collect = problems if problems is not None else Problems()
    for number, line in enumerate(text.removesuffix("\n").split("\n"), 1):
        if line.strip():
            place = f"{name}:{number}"
            obj = collect.attempt(_loads, line, place)
            entry = collect.attempt(parse_entry, obj, place) if obj is not None else None
            if entry is not None:
                out.append(Located(place, entry))
    return _unique(out, collect, problems is None)


def parse_csv(text: str, name: str = "<csv>", problems: Problems | None = None) -> list[Located]:
    """One row per journal line; rows with the same reference form one entry."""
    collect = problems if problems is not None else Problems()
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = tuple(h.strip() for h in (reader.fieldnames or ()))
    missing = [c for c in CSV_HEADER if c not in header]
    if missing:
        raise BadInput(f"{name}:1: missing column(s) {', '.join(missing)} (header: {','.join(CSV_HEADER)})")
    groups: dict[str, dict[str, Any]] = {}
    places: dict[str, list[str]] = {}
    broken: set[str] = set()
    for row in reader:
        number = reader.line_num - _line_breaks_inside(row)  # the line the row starts on
        if None in row or any(v is None for v in row.values()):
            collect.add(f"{name}:{number}: wrong number of fields")
            continue
        ref = (row.get("reference") or "").strip()
        if not ref:
            collect.add(f"{name}:{number}: reference is required")
            continue
        group = groups.setdefault(
            ref,
            {
                "reference": ref,
                "date": row["date"],
                "description": row["description"],
                "currency": row["currency"],
                "lines": [],
            },
        )
        places.setdefault(ref, [])
        for key in ("date", "currency"):
            if (row[key] or "").strip() != (group[key] or "").strip():
                collect.add(
                    f"{name}:{number} (entry {ref}): {key} {row[key]!r} differs from the entry's first "
                    f"row ({places[ref][0]})"
                )
                broken.add(ref)
        group["lines"].append(
            {k: row[k] for k in ("account", "account_name", "debit", "credit", "tax_code", "memo")}
        )
        places[ref].append(f"{name}:{number}")
    out = []
    for ref, obj in groups.items():
        if ref in broken or not obj["lines"]:
            continue
        entry = collect.attempt(parse_entry, obj, places[ref][0], places[ref])
        if entry is not None:
            out.append(Located(places[ref][0], entry))
    if problems is None:
        collect.raise_if_any()
    return out


def _line_breaks_inside(row: dict[str | None, Any]) -> int:
    """How many line breaks the row's quoted cells hold (`csv` counts the lines its
    `io.StringIO(newline="")` yields: each ends at CRLF, CR or LF)."""
    cells = [v for value in row.values() for v in (value if isinstance(value, list) else [value])]
    return sum(len(_LINE_BREAK.findall(cell)) for cell in cells if cell)


def _unique(found: list[Located], problems: Problems, raise_now: bool) -> list[Located]:
    first: dict[str, str] = {}
    out = []
    for item in found:
        ref = item.entry.reference
        if ref in first:
            problems.add(f"{item.place}: reference {ref} appears twice in the file (first at {first[ref]})")
        else:
            first[ref] = item.place
            out.append(item)
    if raise_now:
        problems.raise_if_any()
    return out


def _item_start_lines(text: str) -> list[int]:
    """Line numbers where each item of a top-level JSON array starts (for error messages)."""
    out: list[int] = []
    depth, line, in_string, escape, expect = 0, 1, False, False, False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
            continue
        if depth == 1 and expect and ch not in " \t\r\n":
            if ch != "]":
                out.append(line)
            expect = False
        if ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            expect = depth == 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 1:
            expect = True
    return out
