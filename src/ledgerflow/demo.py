"""`ledgerflow demo`: a realistic demo ledger, one daily export, and a batch of jobs."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from ledgerflow.app import App
from ledgerflow.engine.states import JobState

DEMO_TASK = "ledgerflow.demo.checksum"


def register_demo_tasks(app: App) -> None:
    @app.task(name=DEMO_TASK, queue="demo", max_attempts=3, retry_backoff=0.5)
    def checksum(n: int) -> str:
        """A small CPU-bound job: hash a generated payload."""
        return hashlib.sha256(f"ledgerflow-demo-{n}".encode() * 200).hexdigest()[:16]


def run_job_demo(app: App, jobs: int, on_progress: Callable[[int, int], None]) -> dict[str, Any]:
    """Enqueue `jobs` demo jobs, run them with an in-process worker, report progress."""
    task = app.registry.get(DEMO_TASK)
    started = time.monotonic()
    ids = app.enqueue_many([task.prepare(i) for i in range(jobs)])
    worker = app.worker("demo", concurrency=4, burst=True)
    thread = threading.Thread(target=worker.run, name="ledgerflow-demo-worker", daemon=True)
    thread.start()
    first, last = min(ids), max(ids)
    while True:
        counts = _counts(app, first, last)
        done = counts.get(JobState.COMPLETED, 0) + counts.get(JobState.DEAD, 0)
        on_progress(done, jobs)
        if done >= jobs or not thread.is_alive():
            break
        time.sleep(0.1)
    thread.join(30)
    elapsed = time.monotonic() - started
    counts = _counts(app, first, last)
    return {
        "jobs": jobs,
        "completed": counts.get(JobState.COMPLETED, 0),
        "dead": counts.get(JobState.DEAD, 0),
        "seconds": round(elapsed, 2),
        "jobs_per_second": round(jobs / elapsed, 1) if elapsed else None,
    }


def _counts(app: App, first: int, last: int) -> dict[str, int]:
    from sqlalchemy import func, select

    from ledgerflow.db.tables import jobs

    with app.db.read() as conn:
        rows = conn.execute(
            select(jobs.c.state, func.count()).where(jobs.c.id.between(first, last)).group_by(jobs.c.state)
        )
        return {r[0]: int(r[1]) for r in rows}


# (description, debit account, credit account, net amount, VAT rate in %, memo)
_THAI_DAY = [
    (
        "ค่าเครื่องเขียน ร้านบีทูเอส สาขาสยาม",
        ("5100", "วัสดุสำนักงาน"),
        ("1000", "เงินสด"),
        "250.00",
        7,
        "ใบกำกับภาษีเลขที่ 0042",
    ),
    (
        "ขายสินค้า ใบกำกับภาษี INV-{n}",
        ("1100", "ธนาคารกสิกรไทย"),
        ("4000", "รายได้จากการขาย"),
        "12500.00",
        7,
        "ลูกค้า บริษัท สยามเทรด จำกัด",
    ),
    ("ค่าอินเทอร์เน็ตประจำเดือน", ("5300", "ค่าสาธารณูปโภค"), ("1100", "ธนาคารกสิกรไทย"), "899.00", 7, ""),
    ("タクシー代 東京駅→本社 (出張)", ("5200", "旅費交通費"), ("1000", "เงินสด"), "1480.00", 0, "領収書あり"),
    ("会議用お茶代 =人数分", ("5400", "会議費"), ("1000", "เงินสด"), "320.00", 7, "+ 打ち合わせ資料"),
]
_JAPANESE_DAY = [
    ("文房具 ㈱アスクル", ("消耗品費", "消耗品費"), ("現金", "現金"), "2500", 10, "領収書No.0042"),
    ("売上 請求書 INV-{n}", ("売掛金", "売掛金"), ("売上高", "売上高"), "125000", 10, "株式会社サンプル商事"),
    ("タクシー代 東京駅→本社", ("旅費交通費", "旅費交通費"), ("現金", "現金"), "1480", 10, "出張"),
    ("会議用お茶代", ("会議費", "会議費"), ("現金", "現金"), "864", 8, "軽減税率"),
]


def demo_entries(currency: str, today: date, days: int = 5) -> list[dict[str, Any]]:
    """Balanced entries over the last `days` days, with VAT/消費税 split out."""
    template = _JAPANESE_DAY if currency == "JPY" else _THAI_DAY
    vat_account = ("仮払消費税", "仮払消費税") if currency == "JPY" else ("1150", "ภาษีซื้อ")
    out_vat = ("仮受消費税", "仮受消費税") if currency == "JPY" else ("2100", "ภาษีขาย")
    places = Decimal(1) if currency == "JPY" else Decimal("0.01")
    entries = []
    n = 0
    for back in range(days - 1, -1, -1):
        day = today - timedelta(days=back)
        for text, debit, credit, net, rate, memo in template:
            n += 1
            amount = Decimal(net)
            vat = (amount * rate / 100).quantize(places)
            sale = debit[0] in ("1100", "売掛金")
            lines = [
                {
                    "account": debit[0],
                    "account_name": debit[1],
                    "debit": str(amount + (vat if sale else 0)),
                    "credit": "0",
                    "tax_code": f"VAT{rate}" if rate else None,
                    "memo": memo,
                }
            ]
            if vat and not sale:
                lines.append(
                    {
                        "account": vat_account[0],
                        "account_name": vat_account[1],
                        "debit": str(vat),
                        "credit": "0",
                        "tax_code": f"VAT{rate}",
                    }
                )
            lines.append(
                {
                    "account": credit[0],
                    "account_name": credit[1],
                    "debit": "0",
                    "credit": str(amount if sale else amount + vat),
                    "memo": memo,
                }
            )
            if vat and sale:
                lines.append(
                    {
                        "account": out_vat[0],
                        "account_name": out_vat[1],
                        "debit": "0",
                        "credit": str(vat),
                        "tax_code": f"VAT{rate}",
                    }
                )
            entries.append(
                {
                    "date": day.isoformat(),
                    "reference": f"DEMO-{day:%Y%m%d}-{n:03d}",
                    "description": text.format(n=f"{n:04d}"),
                    "currency": currency,
                    "lines": lines,
                }
            )
    return entries


def load_demo_ledger(app: App, today: date) -> int:
    """Record the demo entries that are not there yet; returns how many were added."""
    from sqlalchemy import select

    from ledgerflow.db.tables import journal_entries

    currency = "JPY" if app.export_profile.currencies == frozenset({"JPY"}) else "THB"
    wanted = demo_entries(currency, today)
    with app.db.read() as conn:
        have = set(
            conn.execute(
                select(journal_entries.c.reference).where(
                    journal_entries.c.reference.in_([e["reference"] for e in wanted])
                )
            ).scalars()
        )
    fresh = [e for e in wanted if e["reference"] not in have]
    app.ledger.record_many(fresh, source="demo")
    return len(fresh)
