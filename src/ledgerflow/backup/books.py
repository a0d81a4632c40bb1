"""Restores never roll the books back silently.

A backup's manifest holds the **watermark** of the books in its snapshot: the highest journal
entry id (and the ids below it that the snapshot lacks), the highest export batch id, and the
length and last hash of the export audit chain. Before a restore, `compare` finds what the
database holds beyond that watermark — journal entries, export batches, audit rows — and the
restore is refused unless forced.

A forced restore keeps what was **delivered**: the batches the replaced database had
delivered since the backup (completed, or uploaded), with their entries, lines, queue rows,
the receipts those entries came from, and the tail of the audit chain, are captured before
the restore and written back after it (`carry_over`), so the next export never sends them
again. What was recorded but never delivered is gone, and named. Every restore appends a
`restored` row to the audit chain; `restore_divergences` lists the restores that rolled the
books back, for `ledgerflow export verify` and people.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Table, and_, delete, func, insert, inspect, or_, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from ledgerflow.db.tables import (
    export_batch_entries,
    export_batches,
    export_logs,
    export_queue,
    journal_entries,
    journal_lines,
    receipts,
)
from ledgerflow.errors import DatabaseUnavailable
from ledgerflow.export.audit import GENESIS, append_log

if TYPE_CHECKING:
    from ledgerflow.db.database import Database

RESTORED = "restored"  # the audit action of a restore
_EXAMPLES = 8
_GAPS_SQL = (
    "SELECT id + 1, next_id - 1 FROM (SELECT id, lead(id) OVER (ORDER BY id) AS next_id "
    "FROM journal_entries) AS t WHERE next_id > id + 1"
)


# ------------------------------------------------------------------ the watermark
def watermark(conn: Any) -> dict[str, Any]:
    """The books in a snapshot, read through a DB-API connection (sqlite3 or psycopg) inside it."""

    def one(sql: str) -> Any:
        row = conn.execute(sql).fetchone()
        return row[0] if row else None

    first, last = conn.execute("SELECT min(id), max(id) FROM journal_entries").fetchone()
    absent = [[int(a), int(b)] for a, b in conn.execute(_GAPS_SQL).fetchall()]
    if first is not None and first > 1:
        absent.insert(0, [1, int(first) - 1])
    return {
        "entries_max_id": int(last or 0),
        "entries_absent_ids": absent,  # ranges: rolled back, or not yet committed at the snapshot
        "entries_last_reference": one(f"SELECT reference FROM journal_entries WHERE id = {int(last)}")
        if last is not None
        else None,
        "batches_max_id": int(one("SELECT max(id) FROM export_batches") or 0),
        "audit_rows": int(one("SELECT count(*) FROM export_logs")),
        "audit_head": one("SELECT row_hash FROM export_logs ORDER BY id DESC LIMIT 1") or GENESIS,
    }


# ------------------------------------------------------------------ what a restore rolls back
def _examples(items: list[str] | tuple[str, ...]) -> str:
    return ", ".join(items[:_EXAMPLES]) + (", …" if len(items) > _EXAMPLES else "")


@dataclass(frozen=True)
class BatchSeen:
    batch_key: str
    batch_date: str
    state: str


@dataclass(frozen=True)
class Newer:
    """What the database holds beyond a backup's watermark: what restoring it would roll back."""

    entries: tuple[str, ...] = ()  # references
    batches: tuple[BatchSeen, ...] = ()
    audit_rows: int = 0
    chain_diverged: bool = False  # the chain here does not continue the backup's
    journal_diverged: bool = False  # the entry ids here are not the backup's
    audit_after: int | None = None  # id here of the backup's last audit row (None: no common row)
    batches_max_id: int = 0  # the backup's
    since: datetime | None = None  # when the backup was taken

    def audit_rows_clause(self) -> list[Any]:
        """Audit rows newer than the backup: after its last row, else (diverged) made after it."""
        logs = export_logs.c
        after = logs.id > self.audit_after if self.audit_after is not None else logs.created_at > self.since
        return [logs.action != RESTORED, after]

    def batches_clause(self) -> Any:
        """Export batches newer than the backup: made after it, or touched by a newer audit row."""
        logs, b = export_logs.c, export_batches.c
        touched = select(logs.batch_key).where(*self.audit_rows_clause(), logs.batch_key.is_not(None))
        return or_(b.id > self.batches_max_id, b.batch_key.in_(touched.distinct()))

    @property
    def empty(self) -> bool:
        return not (
            self.entries or self.batches or self.audit_rows or self.chain_diverged or self.journal_diverged
        )

    def describe(self) -> str:
        """One line: how many of each, with examples (references, batch dates and states)."""
        parts = []
        if self.entries:
            n = len(self.entries)
            parts.append(f"{n} journal entr{'y' if n == 1 else 'ies'} ({_examples(self.entries)})")
        if self.batches:
            n = len(self.batches)
            seen = _examples([f"{b.batch_date} {b.state}" for b in self.batches])
            parts.append(f"{n} export batch{'' if n == 1 else 'es'} ({seen})")
        if self.audit_rows:
            parts.append(f"{self.audit_rows} export audit row{'' if self.audit_rows == 1 else 's'}")
        listed = " and ".join([", ".join(parts[:-1]), parts[-1]]) if len(parts) > 1 else "".join(parts)
        notes = [
            note
            for flag, note in (
                (self.chain_diverged, "its export audit chain does not continue the backup's"),
                (self.journal_diverged, "its journal entry ids are not the backup's"),
            )
            if flag
        ]
        return f"{listed or 'nothing'} newer than the backup" + "".join(f"; {note}" for note in notes)


def compare(db: Database, books: dict[str, Any], since: datetime) -> Newer:
    """What the database holds that a snapshot with watermark `books` (taken at `since`) does not."""
    with db.read() as conn:
        if not inspect(conn).has_table("export_logs"):
            return Newer()  # an empty database: nothing to lose
        after, diverged = _common_audit_row(conn, books)
        newer = Newer(audit_after=after, batches_max_id=books["batches_max_id"], since=since)
        audit_rows = int(conn.execute(select(func.count()).where(*newer.audit_rows_clause())).scalar_one())
        b = export_batches.c
        batches = conn.execute(
            select(b.batch_key, b.batch_date, b.state)
            .where(newer.batches_clause())
            .order_by(b.batch_date, b.batch_key)
        ).all()
        entries, journal_diverged = _newer_entries(conn, books)
    return replace(
        newer,
        entries=tuple(entries),
        batches=tuple(BatchSeen(r.batch_key, r.batch_date.isoformat(), r.state) for r in batches),
        audit_rows=audit_rows,
        chain_diverged=diverged,
        journal_diverged=journal_diverged,
    )


def _common_audit_row(conn: Connection, books: dict[str, Any]) -> tuple[int | None, bool]:
    """(id here of the backup's last audit row, whether the chains diverge).

    An empty chain here (a new database to restore into) continues any chain; a chain here that
    lacks the backup's last row does not (it may only be shorter: a restore cannot tell, and
    refuses).
    """
    logs = export_logs.c
    if (
        books["audit_rows"] == 0
        or conn.execute(select(func.count()).select_from(export_logs)).scalar_one() == 0
    ):
        return 0, False
    head = conn.execute(select(logs.id).where(logs.row_hash == books["audit_head"])).scalar()
    if (
        head is None
        or conn.execute(select(func.count()).where(logs.id <= head)).scalar_one() != books["audit_rows"]
    ):
        return None, True
    return int(head), False


def _newer_entries(conn: Connection, books: dict[str, Any]) -> tuple[list[str], bool]:
    top, absent = books["entries_max_id"], books["entries_absent_ids"]
    starts = [a for a, _ in absent]
    floor = starts[0] if starts else top + 1
    e = journal_entries.c
    newer = []
    for entry_id, reference in conn.execute(select(e.id, e.reference).where(e.id >= floor).order_by(e.id)):
        i = bisect.bisect_right(starts, entry_id) - 1
        if entry_id > top or (i >= 0 and entry_id <= absent[i][1]):
            newer.append(reference)
    here = conn.execute(select(e.reference).where(e.id == top)).scalar() if top else None
    return newer, here is not None and here != books["entries_last_reference"]


# ------------------------------------------------------------------ what was delivered
@dataclass
class Delivered:
    """What the replaced database had delivered since the backup (rows as dicts)."""

    batches: list[dict[str, Any]] = field(default_factory=list)
    members: list[dict[str, Any]] = field(default_factory=list)  # export_batch_entries + reference
    entries: list[dict[str, Any]] = field(default_factory=list)  # + reverses_reference
    lines: list[dict[str, Any]] = field(default_factory=list)  # + reference
    queue: list[dict[str, Any]] = field(default_factory=list)  # + reference
    receipts: list[dict[str, Any]] = field(default_factory=list)
    audit_tail: list[dict[str, Any]] = field(default_factory=list)


def _delivered_batch() -> Any:
    b = export_batches.c
    return or_(b.state == "completed", and_(b.step == "uploaded", b.state != "abandoned"))


def capture(db: Database, newer: Newer) -> Delivered:
    """Read, before a restore, what it would take away that already left the building."""
    out = Delivered()
    with db.read() as conn:
        if newer.audit_after is not None:
            out.audit_tail = _rows(
                conn,
                select(export_logs).where(export_logs.c.id > newer.audit_after).order_by(export_logs.c.id),
            )
        if not newer.batches:
            return out
        b, m, e, ln, q = export_batches, export_batch_entries, journal_entries, journal_lines, export_queue
        delivered = and_(newer.batches_clause(), _delivered_batch())
        out.batches = _rows(conn, select(b).where(delivered).order_by(b.c.id))
        in_batches = select(m.c.entry_id).where(m.c.batch_id.in_(select(b.c.id).where(delivered)))
        out.members = _rows(
            conn,
            select(m, e.c.reference)
            .join(e, e.c.id == m.c.entry_id)
            .where(m.c.batch_id.in_(select(b.c.id).where(delivered))),
        )
        reversed_ = e.alias("reversed")
        out.entries = _rows(
            conn,
            select(e, reversed_.c.reference.label("reverses_reference"))
            .outerjoin(reversed_, reversed_.c.id == e.c.reverses_id)
            .where(e.c.id.in_(in_batches))
            .order_by(e.c.id),
        )
        out.lines = _rows(
            conn,
            select(ln, e.c.reference)
            .join(e, e.c.id == ln.c.entry_id)
            .where(ln.c.entry_id.in_(in_batches))
            .order_by(ln.c.entry_id, ln.c.line_no),
        )
        out.queue = _rows(
            conn, select(q, e.c.reference).join(e, e.c.id == q.c.entry_id).where(q.c.entry_id.in_(in_batches))
        )
        if inspect(conn).has_table("receipts"):
            booked = select(e.c.reference).where(e.c.id.in_(in_batches))
            out.receipts = _rows(conn, select(receipts).where(receipts.c.entry_reference.in_(booked)))
    return out


def _rows(conn: Connection, query: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(query)]


# ------------------------------------------------------------------ after the restore
@dataclass(frozen=True)
class CarriedOver:
    """What a restore wrote back, what it dropped, and what it could not reconcile."""

    batches: tuple[str, ...] = ()
    entries: int = 0
    receipts: int = 0
    audit_rows: int = 0  # audit rows re-joined to the restored chain
    dropped: tuple[str, ...] = ()  # references recorded after the backup and never delivered
    problems: tuple[str, ...] = ()


@dataclass
class RestorePlan:
    """What a restore must write back once the file is in place.

    Saved to a file before the database is replaced, so a restore killed half-way is finished
    by the next `backup restore` (`books` tells whether the replacement happened).
    """

    backup: str
    books: dict[str, Any] | None  # the backup's watermark (None: made before watermarks)
    since: datetime  # when the backup was taken
    forced: bool
    unread: str | None = None  # why the replaced database could not be compared
    newer: str | None = None  # what it held beyond the backup, described (None: nothing)
    newer_entries: list[str] = field(default_factory=list)
    chain_diverged: bool = False
    delivered: Delivered = field(default_factory=Delivered)

    @property
    def rolled_back(self) -> bool:
        return self.unread is not None or self.newer is not None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), default=_tagged, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RestorePlan:
        document = json.loads(data, object_hook=_untagged)
        return cls(**{**document, "delivered": Delivered(**document["delivered"])})


def plan_restore(
    backup: str, books: dict[str, Any] | None, since: datetime, newer: Newer | None, delivered: Delivered,
    *, forced: bool, unread: str | None,
) -> RestorePlan:  # fmt: skip
    rolled_back = newer is not None and not newer.empty
    return RestorePlan(
        backup=backup,
        books=books,
        since=since,
        forced=forced,
        unread=unread,
        newer=newer.describe() if newer is not None and rolled_back else None,
        newer_entries=list(newer.entries) if newer is not None else [],
        chain_diverged=newer is not None and newer.chain_diverged,
        delivered=delivered,
    )


def _tagged(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, date):
        return {"__date__": value.isoformat()}
    raise TypeError(f"cannot save {type(value).__name__} in a restore plan")


def _untagged(value: dict[str, Any]) -> Any:
    if value.keys() == {"__datetime__"}:
        return datetime.fromisoformat(value["__datetime__"])
    if value.keys() == {"__date__"}:
        return date.fromisoformat(value["__date__"])
    return value


def restore_happened(db: Database, plan: RestorePlan) -> bool:
    """Whether the database now holds nothing beyond the plan's backup (the restore replaced it)."""
    if plan.books is None:
        return False
    try:
        return compare(db, plan.books, plan.since).empty
    except (SQLAlchemyError, DatabaseUnavailable):
        return False


def carry_over(db: Database, plan: RestorePlan) -> CarriedOver:
    """Write back, into the restored database, what the replaced one had delivered; record the restore."""
    delivered = plan.delivered
    problems: list[str] = []
    if plan.unread:
        problems.append(
            f"the replaced database could not be read ({plan.unread}): what it had delivered since the "
            "backup was not carried over; compare the export destination with `ledgerflow export status` "
            "before the next export"
        )
    if plan.chain_diverged:
        problems.append(
            "the replaced database's export audit chain did not continue the backup's: not re-joined"
        )
    with db.begin() as conn:
        batch_ids = _carry_batches(conn, delivered, problems)
        entry_ids = _carry_entries(conn, delivered, batch_ids, problems)
        carried_receipts = _carry_receipts(conn, delivered, problems)
        rejoined = _rejoin_audit(conn, delivered, batch_ids, problems)
        if not db.is_sqlite:
            for table in (export_batches, journal_entries, receipts):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"GREATEST((SELECT max(id) FROM {table.name}), 1))"
                    )
                )
        dropped = sorted(set(plan.newer_entries) - set(entry_ids))
        result = CarriedOver(
            batches=tuple(b["batch_key"] for b in delivered.batches),
            entries=len(entry_ids),
            receipts=carried_receipts,
            audit_rows=rejoined,
            dropped=tuple(dropped),
            problems=tuple(problems),
        )
        append_log(
            db,
            conn,
            action=RESTORED,
            message=f"database restored from backup {plan.backup}"
            + (": books rolled back, delivered batches carried over" if plan.rolled_back else ""),
            metadata={
                "backup": plan.backup,
                "forced": plan.forced,
                "rolled_back": plan.rolled_back,
                "newer": plan.newer,
                "carried_batches": list(result.batches),
                "carried_entries": result.entries,
                "carried_receipts": result.receipts,
                "rejoined_audit_rows": result.audit_rows,
                "dropped_entries": len(dropped),
                "dropped_examples": dropped[:20],
                "problems": problems,
            },
        )
    return result


def _columns(table: Table, *leave_out: str) -> list[str]:
    return [c.name for c in table.c if c.name not in leave_out]


def _insert_keeping_id(conn: Connection, table: Table, row: dict[str, Any]) -> tuple[int, bool]:
    """Insert `row` under its own id when that id is free here; (id, whether it was kept)."""
    values = {k: v for k, v in row.items() if k in table.c}
    kept = conn.execute(select(table.c.id).where(table.c.id == values["id"])).scalar() is None
    if not kept:
        del values["id"]
    return int(conn.execute(insert(table).values(values).returning(table.c.id)).scalar_one()), kept


def _carry_batches(conn: Connection, delivered: Delivered, problems: list[str]) -> dict[int, int]:
    """old batch id → id here."""
    ids = {}
    for batch in delivered.batches:
        values = {k: v for k, v in batch.items() if k != "id"} | {"lock_token": None, "lock_expires_at": None}
        here = conn.execute(
            select(export_batches.c.id).where(export_batches.c.batch_key == batch["batch_key"])
        ).scalar()
        if here is None:
            here, kept = _insert_keeping_id(conn, export_batches, {**batch, **values})
            if not kept:
                problems.append(
                    f"batch {batch['batch_key']} carried over as id {here} (id {batch['id']} is taken)"
                )
        else:
            conn.execute(update(export_batches).where(export_batches.c.id == here).values(values))
        ids[batch["id"]] = int(here)
    return ids


def _carry_entries(
    conn: Connection, delivered: Delivered, batch_ids: dict[int, int], problems: list[str]
) -> dict[str, int]:
    """The delivered version of each entry wins; returns reference → id here."""
    e = journal_entries.c
    ids: dict[str, int] = {}
    header = _columns(journal_entries, "id", "reverses_id")
    for entry in delivered.entries:  # in id order: a reversal comes after the entry it reverses
        reverses = entry["reverses_reference"]
        reverses_id = None
        if reverses is not None:
            reverses_id = (
                ids.get(reverses) or conn.execute(select(e.id).where(e.reference == reverses)).scalar()
            )
        values = {c: entry[c] for c in header} | {"reverses_id": reverses_id}
        here = conn.execute(select(e.id).where(e.reference == entry["reference"])).scalar()
        if here is None:
            here, kept = _insert_keeping_id(conn, journal_entries, {"id": entry["id"], **values})
            if not kept:
                problems.append(
                    f"entry {entry['reference']} carried over as id {here} (id {entry['id']} is taken)"
                )
        else:
            conn.execute(update(journal_entries).where(e.id == here).values(values))
            conn.execute(delete(journal_lines).where(journal_lines.c.entry_id == here))
        ids[entry["reference"]] = int(here)
    line_columns = _columns(journal_lines, "id", "entry_id")
    if delivered.lines:
        conn.execute(
            insert(journal_lines),
            [{c: ln[c] for c in line_columns} | {"entry_id": ids[ln["reference"]]} for ln in delivered.lines],
        )
    queue_columns = _columns(export_queue, "id", "entry_id", "batch_id")
    for row in delivered.queue:
        here = ids[row["reference"]]
        conn.execute(delete(export_queue).where(export_queue.c.entry_id == here))
        conn.execute(
            insert(export_queue).values(
                {c: row[c] for c in queue_columns}
                | {"entry_id": here, "batch_id": batch_ids.get(row["batch_id"])}
            )
        )
    if batch_ids:
        conn.execute(
            delete(export_batch_entries).where(export_batch_entries.c.batch_id.in_(list(batch_ids.values())))
        )
    if delivered.members:
        conn.execute(
            insert(export_batch_entries),
            [
                {"batch_id": batch_ids[m["batch_id"]], "entry_id": ids[m["reference"]], "late": m["late"]}
                for m in delivered.members
            ],
        )
    return ids


def _carry_receipts(conn: Connection, delivered: Delivered, problems: list[str]) -> int:
    """Receipts whose entries were delivered keep their approval (else re-approving them books twice)."""
    r = receipts.c
    carried = 0
    for receipt in delivered.receipts:
        here = conn.execute(select(r.sha256).where(r.id == receipt["id"])).scalar()
        if here == receipt["sha256"]:
            conn.execute(
                update(receipts)
                .where(r.id == receipt["id"])
                .values({k: v for k, v in receipt.items() if k != "id"})
            )
        elif (
            here is None and conn.execute(select(r.id).where(r.sha256 == receipt["sha256"])).scalar() is None
        ):
            conn.execute(insert(receipts).values(receipt))
        else:
            problems.append(
                f"receipt {receipt['id']} (booked as {receipt['entry_reference']}) is another file here: "
                "left as restored"
            )
            continue
        carried += 1
    return carried


def _rejoin_audit(
    conn: Connection, delivered: Delivered, batch_ids: dict[int, int], problems: list[str]
) -> int:
    """Append the replaced chain's tail, row for row, when the restored chain ends where it began."""
    tail = delivered.audit_tail
    if not tail:
        return 0
    head = (
        conn.execute(select(export_logs.c.row_hash).order_by(export_logs.c.id.desc()).limit(1)).scalar()
        or GENESIS
    )
    if tail[0]["prev_hash"] != head:
        problems.append(f"{len(tail)} export audit rows of the replaced database could not be re-joined")
        return 0
    conn.execute(
        insert(export_logs),
        [
            {k: v for k, v in row.items() if k != "id"} | {"batch_id": batch_ids.get(row["batch_id"])}
            for row in tail
        ],
    )
    return len(tail)


# ------------------------------------------------------------------ for `export verify` and people
@dataclass(frozen=True)
class RestoreDivergence:
    """A restore that rolled the books back, as recorded in the export audit chain."""

    at: datetime
    backup: str
    newer: str | None
    carried_batches: tuple[str, ...]
    dropped_entries: int
    problems: tuple[str, ...]

    def describe(self) -> str:
        parts = [f"{self.at.isoformat(timespec='seconds')}: restore of {self.backup} rolled the books back"]
        if self.newer:
            parts.append(f"(the replaced database held {self.newer})")
        if self.carried_batches:
            parts.append(f"; delivered batches carried over: {', '.join(self.carried_batches)}")
        if self.dropped_entries:
            parts.append(
                f"; {self.dropped_entries} entries recorded after the backup and never exported were dropped"
            )
        if self.problems:
            parts.append("; " + "; ".join(self.problems))
        return " ".join(parts[:2]) + "".join(parts[2:])


def restore_divergences(db: Database) -> list[RestoreDivergence]:
    """Every restore that rolled the books back (forced over newer batches, entries or audit rows).

    Read from the `restored` rows of the export audit chain, oldest first: what the replaced
    database held, which delivered batches were carried over, what was dropped, and anything
    that could not be reconciled. `ledgerflow export verify` reports them.
    """
    with db.read() as conn:
        rows = conn.execute(
            select(export_logs.c.created_at, export_logs.c.metadata)
            .where(export_logs.c.action == RESTORED)
            .order_by(export_logs.c.id)
        ).all()
    return [
        RestoreDivergence(
            at=row.created_at,
            backup=str(row.metadata.get("backup")),
            newer=row.metadata.get("newer"),
            carried_batches=tuple(row.metadata.get("carried_batches") or ()),
            dropped_entries=int(row.metadata.get("dropped_entries") or 0),
            problems=tuple(row.metadata.get("problems") or ()),
        )
        for row in rows
        if row.metadata.get("rolled_back")
    ]
