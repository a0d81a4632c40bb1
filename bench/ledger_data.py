"""Load many balanced journal entries fast (driver-level bulk inserts) for memory tests and benchmarks."""

from __future__ import annotations

from datetime import UTC, date, datetime

from ledgerflow import App

DESCRIPTIONS = ["ค่าเครื่องเขียน ร้านบีทูเอส", "タクシー代 東京駅→本社", 'Client lunch, "Sukhumvit"', "=SUM(A1:A9)"]


def load_entries(
    app: App, entries: int, lines_per_entry: int = 4, day: date = date(2026, 11, 26), first: int = 0
) -> None:
    """`entries` balanced THB entries of `lines_per_entry` lines, queued for the daily export
    (references `BULK-{first:08d}` on: load more into the same database with a larger `first`)."""
    now = datetime.now(UTC)
    raw = app.db.engine.raw_connection()
    try:
        cur = raw.cursor()
        ph = "?" if app.db.is_sqlite else "%s"
        if app.db.is_sqlite:  # test data only: a large page cache makes the index inserts cheap
            cur.execute("PRAGMA cache_size=-262144")
        chunk = 20_000
        for start in range(0, entries, chunk):
            n = min(chunk, entries - start)
            if app.db.is_sqlite:
                cur.execute("BEGIN IMMEDIATE")  # the engine's connections are in autocommit mode
            refs = [f"BULK-{first + start + i:08d}" for i in range(n)]
            cur.executemany(
                "INSERT INTO journal_entries (reference, entry_date, description, currency, export_path, "
                f"status, source, created_at, updated_at) VALUES ({ph}, {ph}, {ph}, 'THB', 'scheduled', "
                f"'posted', 'bench', {ph}, {ph})",
                [
                    (
                        ref,
                        day if not app.db.is_sqlite else day.isoformat(),
                        DESCRIPTIONS[i % 4],
                        _ts(app, now),
                        _ts(app, now),
                    )
                    for i, ref in enumerate(refs)
                ],
            )
            cur.execute(
                f"SELECT id FROM journal_entries WHERE reference >= {ph} ORDER BY reference LIMIT {n}",
                (refs[0],),
            )
            ids = [r[0] for r in cur.fetchall()]
            half = lines_per_entry // 2
            line_rows = [
                (
                    eid,
                    k + 1,
                    "5100" if k < half else "1000",
                    "วัสดุสำนักงาน" if k < half else "Cash",
                    10700 if k < half else 0,
                    0 if k < half else 10700,
                    "VAT7",
                    "+memo" if k == 0 else None,
                )
                for eid in ids
                for k in range(lines_per_entry)
            ]
            columns = "entry_id, line_no, account, account_name, debit_minor, credit_minor, tax_code, memo"
            if app.db.is_sqlite:
                cur.executemany(
                    f"INSERT INTO journal_lines ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", line_rows
                )
            else:
                with cur.copy(f"COPY journal_lines ({columns}) FROM STDIN") as copy:
                    for row in line_rows:
                        copy.write_row(row)
            cur.executemany(
                "INSERT INTO export_queue (entry_id, export_path, status, queued_at) "
                f"VALUES ({ph}, 'scheduled', 'queued', {ph})",
                [(eid, _ts(app, now)) for eid in ids],
            )
            raw.commit()
    finally:
        raw.close()


def _ts(app: App, value: datetime) -> object:
    return value.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f") if app.db.is_sqlite else value
