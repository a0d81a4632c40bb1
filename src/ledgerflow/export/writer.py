"""Generate a batch's file set by streaming rows from a database cursor into temp files.

Memory stays flat whatever the batch size: one entry at a time is held, rows go through
`csv.writer` (RFC 4180 quoting) into a sink that encodes, hashes and writes them. Parts
are split only above the profile's row limit and only between entries.

The stream is the hot path of a large export: rows stay the cursor's rows (no `Entry`, no
`Decimal` per amount), the layout's row builder is made once per file set, and the control
totals are summed in integer minor units.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import ColumnElement, Connection, func, literal, select

from ledgerflow.db.tables import export_batch_entries, journal_entries, journal_lines
from ledgerflow.errors import BadInput, LedgerflowError
from ledgerflow.export.profiles import (
    AMOUNT_COLUMNS,
    CREDIT,
    DEBIT,
    EntryRows,
    Profile,
    TextCells,
    check_layout,
    row_builder,
)
from ledgerflow.ledger.money import format_amount, from_minor


class GenerationTimeout(LedgerflowError):
    code = "timeout"


class EntryRejected(LedgerflowError):
    """One entry cannot be written in this profile (named in the message)."""

    code = "entry_rejected"

    def __init__(self, entry_id: int, reason: str, reference: str = "") -> None:
        super().__init__(reason)
        self.entry_id = entry_id
        self.reference = reference


class TotalsMismatch(LedgerflowError):
    """The written file's control totals differ from the books: the batch stops, nothing is sent."""

    code = "totals_mismatch"


class _Sink:
    """A write(str) target for csv.writer that encodes strictly, hashes and writes in chunks.

    Rows are collected as text until `end_entry` encodes the entry's rows at once (so a
    character the encoding cannot hold is reported against its entry, and nothing of that
    entry is kept); encoded bytes are hashed and written CHUNK bytes at a time.
    """

    CHUNK = 1 << 18

    def __init__(self, path: Path, encoding: str, bom: bytes) -> None:
        self.path = path
        self.file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.encoding = encoding
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.bytes = 0
        self._text: list[str] = []
        self._encoded = bytearray(bom)
        self.write = self._text.append  # csv.writer's target: one call per row

    def end_entry(self) -> None:
        """Encode the rows written since the last call (raises UnicodeEncodeError, dropping them)."""
        text, self._text[:] = "".join(self._text), []
        self._encoded += text.encode(self.encoding)
        if len(self._encoded) >= self.CHUNK:
            self._flush()

    def _flush(self) -> None:
        data = self._encoded
        self.file.write(data)
        self.sha256.update(data)
        self.md5.update(data)
        self.bytes += len(data)
        self._encoded = bytearray()

    def close(self) -> None:
        self._flush()
        self.file.flush()
        self.file.close()


@dataclass
class PartFile:
    name: str
    path: Path
    sha256: str
    md5: str
    bytes: int
    rows: int  # data rows, header excluded
    entries: int

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "md5": self.md5,
            "bytes": self.bytes,
            "rows": self.rows,
            "entries": self.entries,
        }


@dataclass
class Generated:
    parts: list[PartFile]
    entry_count: int = 0
    line_count: int = 0
    totals: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    late: list[str] = field(default_factory=list)
    formula_guard: bool = True  # the profile's setting when the files were written
    neutralised_cells: int = 0  # text cells the formula guard prefixed with '
    flattened_cells: int = 0  # text cells whose line breaks, tabs or control characters were replaced

    def totals_text(self) -> dict[str, dict[str, str]]:
        return {
            cur: {side: format_amount(v, cur) for side, v in t.items()}
            for cur, t in sorted(self.totals.items())
        }

    def cells_changed(self) -> dict[str, int]:
        """Text cells altered on the way into the file (the manifest carries these counts)."""
        return {"formula_guard": self.neutralised_cells, "line_breaks_and_controls": self.flattened_cells}

    def check_balanced(self) -> None:
        for cur, t in self.totals.items():
            if t["debit"] != t["credit"]:
                raise BadInput(
                    f"control totals do not balance in {cur}: debit {t['debit']} != credit {t['credit']}"
                )


def export_columns(late: ColumnElement[bool]) -> list[ColumnElement[Any]]:
    """What `stream_entries` reads, in this order: the line's six columns (as `LineRow`), then
    the entry's (`id` first), then whether it is `late`."""
    e, ln = journal_entries, journal_lines
    return [
        ln.c.account,
        ln.c.account_name,
        ln.c.debit_minor,
        ln.c.credit_minor,
        ln.c.tax_code,
        ln.c.memo,
        e.c.id,
        e.c.reference,
        e.c.entry_date,
        e.c.description,
        e.c.currency,
        late,
    ]


def batch_lines_query(batch_id: int) -> Any:
    e, ln, be = journal_entries, journal_lines, export_batch_entries
    return (
        select(*export_columns(be.c.late))
        .select_from(be.join(e, e.c.id == be.c.entry_id).join(ln, ln.c.entry_id == e.c.id))
        .where(be.c.batch_id == batch_id)
        .order_by(e.c.entry_date, e.c.reference, ln.c.line_no)
    )


def count_lines(conn: Connection, batch_id: int) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(
                export_batch_entries.join(
                    journal_lines, journal_lines.c.entry_id == export_batch_entries.c.entry_id
                )
            )
            .where(export_batch_entries.c.batch_id == batch_id)
        ).scalar_one()
    )


#: Rows of a written file counted at a time when its totals are re-read (bounds the memory).
TOTALS_CHUNK = 50_000
_ENTRY_ID = itemgetter(6)  # the position of journal_entries.id in `export_columns`
_DEBITS, _CREDITS = itemgetter(DEBIT), itemgetter(CREDIT)


def stream_entries(rows: Iterable[Sequence[Any]]) -> Iterator[EntryRows]:
    """Entries one at a time, each with its rows as read (`rows` of `export_columns`, ordered by
    entry, as `Database.stream` reads them: SQLite's dates are ISO text, its booleans 0 or 1)."""
    for _entry_id, group in itertools.groupby(rows, key=_ENTRY_ID):
        lines = list(group)
        _, _, _, _, _, _, entry_id, reference, day, description, currency, late = lines[0]
        if day.__class__ is str:
            day = date.fromisoformat(day)
        yield EntryRows(entry_id, reference, day, description, currency, bool(late), lines)


def write_parts(
    entries: Iterable[EntryRows],
    profile: Profile,
    directory: Path,
    base_name: str,
    *,
    timeout: float,
    on_progress: Callable[[int], None] | None = None,
    crash_point: Callable[[str], None] | None = None,
) -> Generated:
    """Write entries into `<base>.csv` (or `<base>_partNN.csv` parts) under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    header_rows = 1 if profile.header else 0
    capacity = profile.max_rows - header_rows
    generated = Generated(parts=[], formula_guard=profile.formula_guard)
    text = TextCells(profile)
    build = row_builder(profile, text)
    sums: dict[str, list[int]] = {}  # currency -> [debit, credit] in minor units
    sink: _Sink | None = None
    writer: Any = None
    part_rows = part_entries = 0
    paths: list[Path] = []

    def close_part() -> None:
        nonlocal sink
        if sink is not None:
            sink.close()
            generated.parts.append(
                PartFile(
                    sink.path.name,
                    sink.path,
                    sink.sha256.hexdigest(),
                    sink.md5.hexdigest(),
                    sink.bytes,
                    part_rows,
                    part_entries,
                )
            )
            sink = None

    try:
        for slip, entry in enumerate(entries, 1):
            try:
                check_layout(entry, profile)
                rows = build(entry, slip)
            except BadInput as exc:
                raise EntryRejected(entry.id, str(exc), entry.reference) from None
            if len(rows) > capacity:
                raise EntryRejected(
                    entry.id,
                    f"entry {entry.reference} has more rows than one file can hold",
                    entry.reference,
                )
            if sink is None or part_rows + len(rows) > capacity:
                close_part()
                path = directory / f"{base_name}.part{len(paths) + 1:03d}.tmp"
                paths.append(path)
                sink = _Sink(path, profile.encoding, profile.byte_order_mark)
                writer = csv.writer(sink, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
                if profile.header:
                    writer.writerow(profile.header)
                    sink.end_entry()  # the header's encodability is checked with the profile
                part_rows = part_entries = 0
            try:
                writer.writerows(rows)
                sink.end_entry()
            except UnicodeEncodeError as exc:  # checked here rather than cell by cell beforehand
                bad = exc.object[exc.start : exc.end]
                raise EntryRejected(
                    entry.id,
                    f"entry {entry.reference} ({profile.name} profile): character "
                    f"{bad!r} cannot be written in {profile.encoding}",
                    entry.reference,
                ) from None
            part_rows += len(rows)
            part_entries += 1
            generated.entry_count += 1
            lines = entry.lines
            generated.line_count += len(lines)
            totals = sums.get(entry.currency) or sums.setdefault(entry.currency, [0, 0])
            totals[0] += sum(map(_DEBITS, lines))
            totals[1] += sum(map(_CREDITS, lines))
            if entry.late:
                generated.late.append(entry.reference)
            if slip % 500 == 0:
                if time.monotonic() > deadline:
                    raise GenerationTimeout(f"CSV generation ran past its timeout of {timeout:g}s")
                if on_progress:
                    on_progress(generated.line_count)
            if crash_point and slip == 1:
                crash_point("mid_stream")
        close_part()
        generated.neutralised_cells, generated.flattened_cells = text.neutralised, text.flattened
        generated.totals = {
            cur: {"debit": from_minor(debit, cur), "credit": from_minor(credit, cur)}
            for cur, (debit, credit) in sums.items()
        }
    except BaseException:
        if sink is not None:
            sink.close()
        for path in paths:
            path.unlink(missing_ok=True)
        raise
    # final names: one file, or numbered parts only when split
    single = len(generated.parts) == 1
    for n, part in enumerate(generated.parts, 1):
        name = f"{base_name}.csv" if single else f"{base_name}_part{n:02d}.csv"
        final = directory / name
        part.path.replace(final)
        part.path, part.name = final, name
    if on_progress:
        on_progress(generated.line_count)
    return generated


def write_manifest(generated: Generated, directory: Path, base_name: str, info: dict[str, Any]) -> PartFile:
    """The manifest beside the CSV: names, checksums, sizes, counts, control totals, cut-off,
    profile, and how many text cells the profile's rules changed."""
    document = {
        **info,
        "files": [p.describe() for p in generated.parts],
        "entry_count": generated.entry_count,
        "line_count": generated.line_count,
        "totals": generated.totals_text(),
        "late_entries": generated.late,
        "formula_guard": generated.formula_guard,
        "text_cells_changed": generated.cells_changed(),
    }
    data = (json.dumps(document, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode()
    path = directory / f"{base_name}.manifest.json"
    path.write_bytes(data)
    return PartFile(
        path.name,
        path,
        hashlib.sha256(data).hexdigest(),
        hashlib.md5(data, usedforsecurity=False).hexdigest(),
        len(data),
        0,
        0,
    )


# ---------------------------------------------------------------- control totals, reconciled
Totals = dict[str, dict[str, Any]]  # currency -> {"debit", "credit": Decimal, "lines": int}


#: SQLite sums 64-bit integers and fails past 9.2e18 minor units (a hundred lines of the
#: largest THB amount): there each amount is summed as its quotient and remainder by this,
#: both truncated toward zero, so Σquotient * _SPLIT + Σremainder is exact for any batch.
_SPLIT = 10**9


def books_totals(conn: Connection, batch_id: int) -> Totals:
    """The batch snapshot summed in SQL, independently of the writer: per currency Σdebit,
    Σcredit and the number of journal lines."""
    e, ln, be = journal_entries, journal_lines, export_batch_entries
    amounts = (ln.c.debit_minor, ln.c.credit_minor)
    sums: list[ColumnElement[Any]]
    if conn.dialect.name == "sqlite":
        split = _SPLIT
        sums = [*(func.sum(a // split) for a in amounts), *(func.sum(a % split) for a in amounts)]
    else:  # PostgreSQL: sum(bigint) is an exact numeric
        split = 1
        sums = [*(func.sum(a) for a in amounts), literal(0), literal(0)]
    rows = conn.execute(
        select(e.c.currency, *sums, func.count())
        .select_from(be.join(e, e.c.id == be.c.entry_id).join(ln, ln.c.entry_id == e.c.id))
        .where(be.c.batch_id == batch_id)
        .group_by(e.c.currency)
    )
    return {
        cur: {
            "debit": from_minor(int(dr) * split + int(dr_rest), cur),
            "credit": from_minor(int(cr) * split + int(cr_rest), cur),
            "lines": int(n),
        }
        for cur, dr, cr, dr_rest, cr_rest, n in map(tuple, rows)
    }


def file_totals(parts: list[PartFile], profile: Profile) -> Totals:
    """The written files read back (decoded as the importer will) and summed per currency.

    The amount cells are counted per distinct (debit, credit, currency) text, a chunk of rows
    at a time (memory flat), and each distinct text is read as a `Decimal` once."""
    debit_at, credit_at, currency_at = AMOUNT_COLUMNS[profile.layout]
    (only,) = profile.currencies or {None}
    cells = itemgetter(debit_at, credit_at, *([] if currency_at is None else [currency_at]))
    out: Totals = {}
    bom = profile.byte_order_mark
    for part in parts:
        with open(part.path, "rb") as raw:
            if bom and raw.read(len(bom)) != bom:
                raise TotalsMismatch(f"{part.name} does not start with its byte-order mark")
            text = io.TextIOWrapper(raw, encoding=profile.encoding, newline="")
            rows = csv.reader(text)
            if profile.header:
                next(rows, None)
            amounts = map(cells, rows)
            while chunk := Counter(itertools.islice(amounts, TOTALS_CHUNK)):
                for key, n in chunk.items():
                    cur = key[2] if currency_at is not None else only
                    t = out.setdefault(cur, {"debit": Decimal(0), "credit": Decimal(0), "lines": 0})
                    t["debit"] += Decimal(key[0] or 0) * n
                    t["credit"] += Decimal(key[1] or 0) * n
                    t["lines"] += n
    return out


def reconcile(generated: Generated, books: Totals, written: Totals) -> None:
    """The writer's totals, the books' (SQL) and the file's (re-read) must be one and the same."""

    def sums(totals: dict[str, dict[str, Any]]) -> dict[str, tuple[Decimal, Decimal]]:
        return {cur: (t["debit"], t["credit"]) for cur, t in totals.items()}

    problems = []
    if sums(generated.totals) != sums(books):
        problems.append(f"the writer counted {_show(generated.totals)} but the books hold {_show(books)}")
    if written != books:
        problems.append(f"the written file holds {_show(written)} but the books hold {_show(books)}")
    lines = sum(t["lines"] for t in books.values())
    if lines != generated.line_count:
        problems.append(f"the writer counted {generated.line_count} lines but the books hold {lines}")
    if problems:
        raise TotalsMismatch("control totals do not reconcile: " + "; ".join(problems))


def _show(totals: dict[str, dict[str, Any]]) -> str:
    return (
        ", ".join(
            f"{cur} Dr {t['debit']} Cr {t['credit']}" + (f" in {t['lines']} lines" if "lines" in t else "")
            for cur, t in sorted(totals.items())
        )
        or "nothing"
    )
