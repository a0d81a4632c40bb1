"""`ledgerflow export verify`: the audit chain, and every delivered file against its checksum."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ledgerflow.db.tables import export_batches
from ledgerflow.export.audit import verify_chain
from ledgerflow.export.destinations import DestinationError, destination_for

if TYPE_CHECKING:
    from ledgerflow.app import App


def verify_exports(app: App) -> dict[str, Any]:
    chain = verify_chain(app.db)
    problems: list[str] = []
    unreachable: list[str] = []
    checked = 0
    s = app.settings
    destinations: dict[str, Any] = {}
    with app.db.read() as conn:
        batches = conn.execute(
            select(export_batches.c.batch_key, export_batches.c.destination, export_batches.c.files).where(
                export_batches.c.state == "completed"
            )
        ).all()
    for batch in batches:
        for f in batch.files or []:
            if not f.get("remote_id"):
                continue
            url = batch.destination
            try:
                if url not in destinations:
                    destinations[url] = destination_for(s, url)
                remote_sha = destinations[url].fetch_sha256(f["remote_id"])
            except (DestinationError, Exception) as exc:
                unreachable.append(f"{batch.batch_key} {f['name']}: {exc}")
                continue
            checked += 1
            expected = f["sha256"][: len(remote_sha)] if remote_sha else f["sha256"]
            if remote_sha is None:
                problems.append(f"{batch.batch_key}: {f['name']} is missing at {url}")
            elif remote_sha != expected:
                problems.append(f"{batch.batch_key}: {f['name']} at {url} has a different checksum")
    return {
        "chain_rows": chain.rows,
        "chain_problems": chain.problems,
        "files_checked": checked,
        "file_problems": problems,
        "unreachable": unreachable,
    }
