"""`ledgerflow receipts list|show|approve|reject|scan|dedup|report`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from ledgerflow.cli.context import console, print_json, print_table, state

if TYPE_CHECKING:
    from ledgerflow.receipts.store import ReceiptStore

Json = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
receipts_cli = typer.Typer(
    help="Receipts from mail: review, approve into the books, reject; scan, dedup and report now.",
    no_args_is_help=True,
)


def register(cli: typer.Typer) -> None:
    cli.add_typer(receipts_cli, name="receipts")


def _store() -> ReceiptStore:
    from ledgerflow.receipts.store import ReceiptStore

    return ReceiptStore(state.app())


@receipts_cli.command("list")
def list_(
    status: Annotated[
        str | None,
        typer.Option("--status", help="draft, review, approved, rejected, ... or skipped (mail not read)"),
    ] = None,
    limit: Annotated[int, typer.Option("--limit")] = 100,
    as_json: Json = False,
) -> None:
    """Receipts, newest first (`--status review` is the list waiting for a person; `--status
    skipped` lists the messages and attachments that were not receipts, with the reason)."""
    store = _store()
    if status == "skipped":
        skipped = store.skipped(limit)
        if as_json:
            print_json(skipped)
            return
        print_table(
            ["when", "mail", "subject", "part", "name", "why"],
            [
                [
                    s["created_at"].isoformat(timespec="seconds"),
                    f"{s['mailbox']} UID {s['uid']}",
                    s["subject"] or "",
                    s["part"] or "message",
                    s["name"] or "",
                    s["reason"],
                ]
                for s in skipped
            ],
        )
        return
    found = store.list(status, limit)
    if as_json:
        print_json([r.to_dict() for r in found])
        return
    print_table(
        ["id", "status", "date", "vendor", "total", "tax", "conf.", "account", "why"],
        [
            [
                r.id,
                r.status,
                r.receipt_date,
                r.vendor or "",
                f"{r.to_dict()['total']} {r.currency}" if r.total is not None else "",
                r.to_dict()["tax"] or "",
                r.confidence if r.confidence is not None else "",
                f"{r.expense_account or ''}{' (learned)' if _learned(r) else ''}",
                r.reason or "",
            ]
            for r in found
        ],
    )
    skipped_count = store.skipped_count()
    if status is None and skipped_count:
        console.print(
            f"{skipped_count} message(s) or attachment(s) were not receipts: "
            "`ledgerflow receipts list --status skipped` says why"
        )


def _learned(receipt: Any) -> bool:
    return bool(receipt.account_note and receipt.account_note.startswith("learned"))


@receipts_cli.command("show")
def show(receipt_id: int) -> None:
    """One receipt with its sources and the text that was read."""
    store = _store()
    receipt = store.get(receipt_id).to_dict()
    print_json({**receipt, "sources": store.sources(receipt_id), "text": store.text(receipt_id)})


@receipts_cli.command("approve")
def approve(
    receipt_id: int,
    total: Annotated[str | None, typer.Option("--total", help="Correct or supply the total.")] = None,
    tax: Annotated[str | None, typer.Option("--tax")] = None,
    on: Annotated[str | None, typer.Option("--date", help="YYYY-MM-DD")] = None,
    vendor: Annotated[str | None, typer.Option("--vendor")] = None,
    account: Annotated[str | None, typer.Option("--account", help="CODE:Account name")] = None,
    currency: Annotated[str | None, typer.Option("--currency")] = None,
    tax_rate: Annotated[
        int | None, typer.Option("--tax-rate", help="Percent, e.g. 8: sets the tax code (JCT8, VAT7).")
    ] = None,
    not_duplicate: Annotated[
        bool,
        typer.Option(
            "--not-a-duplicate",
            help="Book it although it looks like a receipt or entry already booked (refused otherwise).",
        ),
    ] = False,
    as_json: Json = False,
) -> None:
    """Book a draft (or a reviewed receipt, giving what is missing): queued for the daily export.

    Amounts follow the ledger's rule: `1,234.50` or `1234.50`, never a decimal comma."""
    from ledgerflow.ledger.dates import parse_day

    day = parse_day(on, "--date") if on else None
    receipt, entry = _store().approve(
        receipt_id,
        total=total,
        tax=tax,
        on=day,
        vendor=vendor,
        account=account,
        currency=currency,
        tax_rate=tax_rate,
        not_duplicate=not_duplicate,
    )
    if as_json:
        print_json({"receipt": receipt.to_dict(), "entry": entry.to_dict()})
        return
    console.print(f"receipt {receipt_id} approved: entry {entry.reference} queued for the daily export")


@receipts_cli.command("reject")
def reject(
    receipt_id: int, reason: Annotated[str, typer.Option("--reason")] = "rejected by a person"
) -> None:
    """Never book this receipt (its file and history are kept)."""
    receipt = _store().reject(receipt_id, reason)
    console.print(f"receipt {receipt.id} rejected: {receipt.reason}")


@receipts_cli.command("scan")
def scan(limit: Annotated[int, typer.Option("--limit")] = 500, as_json: Json = False) -> None:
    """Fetch new mail now (what the `email_monitoring` schedule does); processing runs on workers."""
    from ledgerflow.receipts.mail import scan as scan_mailbox

    counts = scan_mailbox(state.app(), limit)
    if as_json:
        print_json(counts)
        return
    console.print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items()))


@receipts_cli.command("dedup")
def dedup() -> None:
    """Flag likely duplicates for review now (nothing is deleted)."""
    from ledgerflow.receipts.tasks import flag_likely_duplicates

    console.print(f"{flag_likely_duplicates(state.app())} receipt(s) flagged as possible duplicates")


@receipts_cli.command("report")
def report(
    month: Annotated[str | None, typer.Option("--month", help="YYYY-MM (default: this month)")] = None,
    as_json: Json = False,
) -> None:
    """Build the monthly report (CSV + HTML) and store it at the destination."""
    from ledgerflow.receipts.report import publish_report

    result = publish_report(state.app(), month)
    if as_json:
        print_json(result)
        return
    console.print(f"report {result['month']}: " + ", ".join(result["files"].values()))
