"""`make bench`: every benchmark, one JSON document (see docs/benchmarks.md).

python -m bench.run [--backends sqlite,postgresql] [--quick] [--reps N] [--out FILE] [--plot FILE]
                    [--only fair,growth,export,dashboard,receipts,backup,year,rescue]

`--quick` validates the harness in a few minutes (fewer jobs and repetitions, no 1M-row
cases); figures worth publishing come from a full run on a quiet machine (~30 minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import backup, dashboard, export, fair, growth, receipts, rescue, year
from bench.common import machine

PARTS = "fair,growth,export,dashboard,receipts,backup,year,rescue"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.run")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--only", default=PARTS)
    parser.add_argument("--quick", action="store_true", help="short runs to validate the harness")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per measure (default 5, quick 2)")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    parser.add_argument("--plot", type=Path, help="draw the growth curve to this file (.svg or .png)")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    parts = set(args.only.split(","))
    reps = args.reps or (2 if args.quick else 5)
    started = time.time()
    report: dict[str, Any] = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "repetitions": reps,
    }
    if "fair" in parts:
        names = [f"ledgerflow_{b}" for b in backends]
        names += [
            n
            for n, b in (
                ("ledgerflow_postgresql_async", "postgresql"),
                ("pgqueuer", "postgresql"),
                ("procrastinate", "postgresql"),
                ("huey_sqlite", "sqlite"),
            )
            if b in backends
        ]
        jobs = 2000 if args.quick else 10_000
        report["fair"] = fair.run(names, reps, jobs, 50 if args.quick else 200)
    if "growth" in parts:
        if args.quick:
            report["growth"] = growth.run(
                backends, [0, 20_000, "backlog_100k"], [(1, 8), (2, 32)], reps, 1000
            )
        else:
            report["growth"] = growth.run(backends, reps=reps, jobs=10_000)
        if args.plot:
            growth.plot(report["growth"], args.plot)
    if "export" in parts:
        sizes = ["10k_lines", "10k_entries"] + ([] if args.quick else ["1m_lines"])
        report["export"] = export.run(backends, sizes, reps)
    if "dashboard" in parts:
        report["dashboard"] = dashboard.run(backends)
    if "receipts" in parts:
        report["receipts"] = receipts.run(backends)
    if "backup" in parts:
        report["backup"] = backup.run(backends)
    if "rescue" in parts:
        report["rescue"] = rescue.run(backends, 5 if args.quick else 20)
    if "year" in parts:
        report["year"] = year.run(backends, 30 if args.quick else 365)
    report["seconds"] = round(time.time() - started, 1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2, ensure_ascii=False))
