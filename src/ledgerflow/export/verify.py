"""`ledgerflow export verify`: the audit chain, anchored outside the database, and every
delivered file against the checksums the chain recorded.

* **the chain** (`export_logs`): every hash recomputed (`audit.verify_chain`);
* **its anchors**: each delivered manifest carries the chain head at its generation
  (`audit_anchor`: the row's id as `seq`, and its hash), read back from the destination —
  those the database points to, and any other `journal_*.manifest.json` found by listing the
  destinations. A row it names that the database no longer holds, or holds with another
  hash, means audit rows were deleted or truncated — which the chain alone cannot show for
  its last rows;
* **the files**: checked against the `csv_generated` row of their batch (hash-chained), not
  `export_batches.files` (which is not), by the service's own content checksum or a download;
  a completed batch without its `csv_generated` row is reported;
* **restores** that rolled the books back (`backup.restore_divergences`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from ledgerflow.backup import restore_divergences
from ledgerflow.db.tables import export_batches, export_logs
from ledgerflow.export.audit import verify_chain
from ledgerflow.export.destinations import (
    Destination,
    destination_for,
    download,
    file_sha256,
    list_files,
    same_content,
)

if TYPE_CHECKING:
    from ledgerflow.app import App


def verify_exports(app: App) -> dict[str, Any]:
    """Check the chain, its anchors in the delivered manifests, and every delivered file.

    Returns `chain_rows`, `chain_problems` (broken hashes, deleted or truncated rows),
    `anchors_checked`, `files_checked`, `file_problems`, `unreachable` (destinations that did
    not answer: nothing concluded) and `restore_divergences` (restores that rolled back).
    """
    chain = verify_chain(app.db)
    report = _Report(app)
    with app.db.read() as conn:
        delivered = {
            r.batch_key: r.metadata
            for r in conn.execute(
                select(export_logs.c.batch_key, export_logs.c.metadata)
                .where(export_logs.c.action == "csv_generated")
                .order_by(export_logs.c.id)
            )
        }
        batches = conn.execute(
            select(export_batches.c.batch_key, export_batches.c.destination, export_batches.c.files)
            .where(export_batches.c.state == "completed", export_batches.c.entry_count > 0)
            .order_by(export_batches.c.id)
        ).all()
        chain_end = int(conn.execute(select(func.max(export_logs.c.id))).scalar() or 0)
        known = dict(conn.execute(select(export_batches.c.batch_key, export_batches.c.state)).all())
    for batch in batches:
        logged = delivered.pop(batch.batch_key, None)
        if logged is None:
            report.chain.append(
                f"{batch.batch_key} is completed but its csv_generated audit row is missing "
                "(audit rows deleted?)"
            )
            report.read_anchor_only(batch.batch_key, batch.destination, batch.files or [])
            continue
        url = logged.get("destination") or batch.destination
        report.check_batch(batch.batch_key, url, batch.files, logged)
    for key in delivered:
        report.files.append(f"the audit trail records the delivery of {key}, but export_batches does not")
    report.scan({app.settings.export_destination, *(b.destination for b in batches)}, known)
    report.check_anchors(chain_end)
    return {
        "chain_rows": chain.rows,
        "chain_problems": chain.problems + report.chain,
        "anchors_checked": len(report.anchors),
        "files_checked": report.checked,
        "file_problems": report.files,
        "unreachable": report.unreachable,
        "restore_divergences": [d.describe() for d in restore_divergences(app.db)],
    }


class _Report:
    def __init__(self, app: App) -> None:
        self.app = app
        self.chain: list[str] = []
        self.files: list[str] = []
        self.unreachable: list[str] = []
        self.checked = 0
        #: (where it was read, seq, row hash) of every chain head a delivered manifest anchors
        self.anchors: list[tuple[str, int, str]] = []
        self._destinations: dict[str, Destination] = {}
        self._read: set[tuple[str, str]] = set()  # (destination, file id) of each manifest read

    def destination(self, url: str) -> Destination:
        if url not in self._destinations:
            self._destinations[url] = destination_for(self.app.settings, url)
        return self._destinations[url]

    def check_batch(self, key: str, url: str, stored: list[dict[str, Any]], logged: dict[str, Any]) -> None:
        """Each delivered file against its chained checksum; the CSVs' checksums also against the
        delivered manifest, which the database cannot rewrite (a batch's own csv_generated row
        comes after every anchor, so its hash could be recomputed unnoticed)."""
        recorded = {f["name"]: f for f in stored or []}
        md5s = logged.get("md5") or {}
        files = list(zip(logged["filenames"], logged["file_ids"], strict=True))
        manifests = [(name, remote_id) for name, remote_id in files if name.endswith(".manifest.json")]
        for name, remote_id in manifests + [f for f in files if f not in manifests]:
            sha256 = logged["sha256"][name]
            if name in recorded and recorded[name]["sha256"] != sha256:
                self.files.append(
                    f"{key}: export_batches.files gives {name} another checksum "
                    "than its csv_generated audit row"
                )
            try:
                destination = self.destination(url)
                if name.endswith(".manifest.json"):
                    document = self.check_manifest(key, url, destination, name, remote_id, sha256)
                    self.check_listed_checksums(key, name, document, logged["sha256"])
                    continue
                same = same_content(destination, remote_id, sha256=sha256, md5=md5s.get(name))
            except Exception as exc:  # unreachable: nothing can be concluded about this file
                self.unreachable.append(f"{key} {name}: {type(exc).__name__}: {exc}")
                continue
            self.checked += 1
            if same is None:
                self.files.append(f"{key}: {name} is missing at {url}")
            elif not same:
                self.files.append(f"{key}: {name} at {url} differs from the checksum in the audit trail")

    def check_listed_checksums(
        self, key: str, manifest: str, document: dict[str, Any] | None, chained: dict[str, str]
    ) -> None:
        """The checksum the delivered manifest lists for each file must be the chained one."""
        for listed in (document or {}).get("files", []):
            if listed.get("name") in chained and listed.get("sha256") != chained[listed["name"]]:
                self.files.append(
                    f"{key}: the delivered manifest {manifest} gives {listed['name']} another checksum "
                    "than its csv_generated audit row (audit row rewritten?)"
                )

    def read_anchor_only(self, key: str, url: str, files: list[dict[str, Any]]) -> None:
        """Without its audit row the batch's files cannot be checked, but its delivered manifest
        (found through export_batches) still says which chain head existed when it was made."""
        for f in files:
            if f.get("kind") != "manifest" or not f.get("remote_id"):
                continue
            try:
                self.check_manifest(key, url, self.destination(url), f["name"], f["remote_id"], None)
            except Exception as exc:  # unreachable: nothing can be concluded about this file
                self.unreachable.append(f"{key} {f['name']}: {type(exc).__name__}: {exc}")

    def scan(self, urls: set[str], known: dict[str, str]) -> None:
        """Manifests at the destinations that the database did not lead to: their chain heads
        are checked too, and one of a batch export_batches does not hold, or holds as abandoned
        (its entries back in the queue: compensation deletes its files), is reported."""
        scanned: set[str] = set()
        for url in sorted(urls):
            try:
                destination = self.destination(url)
                if destination.key in scanned:
                    continue
                scanned.add(destination.key)
                found = [f for f in list_files(destination, "journal_") if f.name.endswith(".manifest.json")]
            except Exception as exc:  # unreachable: nothing can be concluded about it
                self.unreachable.append(f"listing {url}: {type(exc).__name__}: {exc}")
                continue
            for stored in found:
                if (destination.key, stored.file_id) in self._read:
                    continue
                try:
                    document = self.check_manifest(None, url, destination, stored.name, stored.file_id, None)
                except Exception as exc:
                    self.unreachable.append(f"{stored.name} at {url}: {type(exc).__name__}: {exc}")
                    continue
                key = (document or {}).get("batch_key")
                if key is not None and key not in known:
                    self.files.append(
                        f"the manifest {stored.name} at {url} belongs to {key}, which export_batches "
                        "does not hold (rows deleted?)"
                    )
                elif key is not None and known[key] == "abandoned":
                    self.files.append(
                        f"the manifest {stored.name} at {url} belongs to {key}, which export_batches "
                        "holds as abandoned: a delivered file of a batch whose entries went back to "
                        "the queue (delivered twice? rows rewritten?)"
                    )

    def check_manifest(
        self,
        key: str | None,
        url: str,
        destination: Destination,
        name: str,
        remote_id: str,
        sha256: str | None,
    ) -> dict[str, Any] | None:
        """The delivered manifest, read back: its bytes as chained (unless `sha256` is None), and
        the chain head it anchors. Returns the document (None: missing or changed)."""
        self.checked += 1
        self._read.add((destination.key, remote_id))
        if destination.content_digests(remote_id) is None:
            self.files.append(f"{key}: {name} is missing at {url}")
            return None
        with tempfile.TemporaryDirectory(prefix="ledgerflow-verify-") as folder:
            target = Path(folder) / "manifest.json"
            download(destination, remote_id, target)
            if sha256 is not None and file_sha256(target) != sha256:
                self.files.append(f"{key}: {name} at {url} differs from the checksum in the audit trail")
                return None
            document: dict[str, Any] = json.loads(target.read_bytes())
        anchor = document.get("audit_anchor")
        if anchor and int(anchor["seq"]) > 0:  # older manifests carry no chain head
            where = f"the manifest {name} of {key or document.get('batch_key')} at {url}"
            self.anchors.append((where, int(anchor["seq"]), anchor["row_hash"]))
        return document

    def check_anchors(self, chain_end: int) -> None:
        """Each anchored row must still be in export_logs with the hash the manifest recorded."""
        if not self.anchors:
            return
        wanted = sorted({seq for _where, seq, _hash in self.anchors})
        with self.app.db.read() as conn:
            found = dict(
                conn.execute(
                    select(export_logs.c.id, export_logs.c.row_hash).where(export_logs.c.id.in_(wanted))
                ).all()
            )
        for where, seq, head in self.anchors:
            if seq not in found:
                self.chain.append(
                    f"audit rows deleted or truncated: {where} anchors the chain at row {seq} "
                    f"({head[:12]}…), which export_logs no longer holds (the chain ends at row {chain_end})"
                )
            elif found[seq] != head:
                self.chain.append(
                    f"audit row {seq} differs from the chain head recorded in {where} "
                    f"({head[:12]}… there, {found[seq][:12]}… here): audit rows rewritten or replaced"
                )
