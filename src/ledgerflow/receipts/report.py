"""The monthly receipts report: totals by account, vendor and tax rate, and the processing counts,
as CSV and as one self-contained HTML page with a bar chart, stored at the destination."""

from __future__ import annotations

import csv
import html
import io
import tempfile
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from ledgerflow.db.tables import receipts
from ledgerflow.errors import BadInput
from ledgerflow.export.profiles import neutralise_text  # the export's formula guard, one rule
from ledgerflow.ledger.money import format_amount, from_minor

if TYPE_CHECKING:
    from ledgerflow.app import App

Totals = dict[tuple[str, str], list[Any]]  # (key, currency) -> [count, net, tax, total]


def month_bounds(month: str) -> tuple[date, date]:
    try:
        first = date.fromisoformat(f"{month}-01")
    except ValueError:
        raise BadInput(f"bad month {month!r} (expected YYYY-MM)") from None
    after = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
    return first, after


def build_report(app: App, month: str) -> dict[str, Any]:
    """Totals and counts of the receipts dated in `month` (YYYY-MM)."""
    first, after = month_bounds(month)
    with app.db.read() as conn:
        rows = conn.execute(
            select(receipts).where(receipts.c.receipt_date >= first, receipts.c.receipt_date < after)
        ).all()
        undated = conn.execute(
            select(receipts.c.status, receipts.c.created_at).where(receipts.c.receipt_date.is_(None))
        ).all()
    zone = ZoneInfo(app.settings.timezone)
    counts = {"processed": 0, "approved": 0, "pending_review": 0, "failed": 0, "rejected": 0}
    sections: dict[str, Totals] = {"account": {}, "vendor": {}, "tax_rate": {}}
    for r in rows:
        if r.status == "rejected":
            counts["rejected"] += 1
            continue
        if r.status == "review":
            counts["pending_review"] += 1
            continue
        counts["processed"] += 1
        counts["approved"] += r.status == "approved"
        total = from_minor(r.total_minor, r.currency)
        tax = from_minor(r.tax_minor or 0, r.currency)
        keys = {
            "account": r.expense_account or "?",
            "vendor": r.vendor or "?",
            "tax_rate": f"{r.tax_rate} %" if r.tax_rate else "none",
        }
        for section, key in keys.items():
            acc = sections[section].setdefault((key, r.currency), [0, Decimal(0), Decimal(0), Decimal(0)])
            acc[0] += 1
            acc[1] += total - tax
            acc[2] += tax
            acc[3] += total
    for r in undated:  # unreadable receipts that arrived this month
        if r.created_at.astimezone(zone).date().strftime("%Y-%m") == month and r.status == "review":
            counts["failed"] += 1
    return {"month": month, "counts": counts, "sections": sections}


def to_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["section", "key", "currency", "receipts", "net", "tax", "total"])
    for section, totals in report["sections"].items():
        for (key, currency), (n, net, tax, total) in sorted(totals.items()):
            writer.writerow(
                [
                    section,
                    neutralise_text(key),
                    currency,
                    n,
                    *(format_amount(v, currency) for v in (net, tax, total)),
                ]
            )
    for name, value in report["counts"].items():
        writer.writerow(["count", name, "", value, "", "", ""])
    return out.getvalue()


def to_html(report: dict[str, Any], run: str = "") -> str:
    """One page, no external files: tables and an inline SVG bar chart of totals by account."""
    e = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Receipts {e(report['month'])}</title>",
        "<style>body{font:15px/1.45 system-ui,'Noto Sans Thai','Noto Sans JP',sans-serif;margin:1.5rem;"
        "color:#1f2933}table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #d9e2ec;"
        "padding:.3rem .6rem;text-align:left}td.n{text-align:right}rect{fill:#2b6cb0}"
        "text{font-size:12px}</style></head><body>",
        f"<h1>Receipts — {e(report['month'])}</h1>",
        "<p>" + ", ".join(f"{e(k.replace('_', ' '))}: <b>{n}</b>" for k, n in report["counts"].items()),
    ]
    accounts = report["sections"]["account"]
    if accounts:
        parts.append("<h2>By account</h2>" + _chart(accounts))
    for section, totals in report["sections"].items():
        parts.append(f"<h2>By {e(section.replace('_', ' '))}</h2><table><tr><th>{e(section)}</th>")
        parts.append("<th>currency</th><th>receipts</th><th>net</th><th>tax</th><th>total</th></tr>")
        for (key, currency), (n, net, tax, total) in sorted(totals.items()):
            cells = "".join(f"<td class='n'>{format_amount(v, currency)}</td>" for v in (net, tax, total))
            parts.append(f"<tr><td>{e(key)}</td><td>{currency}</td><td class='n'>{n}</td>{cells}</tr>")
        parts.append("</table>")
    parts.append(f"<p><small>ledgerflow receipts report {e(run)}</small></p></body></html>")
    return "\n".join(parts)


def _chart(totals: Totals) -> str:
    items = sorted(totals.items(), key=lambda kv: kv[1][3], reverse=True)[:12]
    top = max((v[3] for _, v in items), default=Decimal(1)) or Decimal(1)
    bar_h, label_w, width = 22, 260, 420
    rows = []
    for i, ((key, currency), v) in enumerate(items):
        w = int(Decimal(width) * v[3] / top)
        y = i * bar_h
        label = html.escape(f"{key} ({currency})")
        amount = format_amount(v[3], currency)
        rows.append(
            f"<text x='0' y='{y + 15}'>{label}</text><rect x='{label_w}' y='{y + 3}' width='{max(w, 1)}' "
            f"height='{bar_h - 6}'/><text x='{label_w + max(w, 1) + 6}' y='{y + 15}'>{amount}</text>"
        )
    height = bar_h * len(items)
    return (
        f"<svg role='img' aria-label='totals by account' width='{label_w + width + 120}' height='{height}'>"
        + "".join(rows)
        + "</svg>"
    )


def publish_report(app: App, month: str | None = None) -> dict[str, Any]:
    """Build the month's report (default: this month to date) and store CSV and HTML at the destination."""
    from ledgerflow.engine.jobs import current_job
    from ledgerflow.export.destinations import destination_for, file_digests

    month = month or datetime.now(UTC).astimezone(ZoneInfo(app.settings.timezone)).strftime("%Y-%m")
    report = build_report(app, month)
    job = current_job()
    run = f"job{job.id}" if job is not None else datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    destination = destination_for(app.settings, app.settings.receipt_destination)
    links = {}
    with tempfile.TemporaryDirectory(prefix="lf-report-") as tmp:
        for ext, body in (("csv", "\ufeff" + to_csv(report)), ("html", to_html(report, run))):
            path = Path(tmp) / f"report.{ext}"
            path.write_text(body, encoding="utf-8")
            sha, md5, size = file_digests(path)
            name = f"reports/{month}/receipts-{month}-{run}.{ext}"
            remote = destination.upload(
                path, name, sha256=sha, md5=md5, size=size, batch_key=f"report:{name}", reserved_id=None
            )
            links[ext] = remote.link
    return {"month": month, "counts": report["counts"], "files": links}
