"""`make bench`: every benchmark, one JSON document on stdout (see docs/benchmarks.md).

python -m bench.run [--backends sqlite,postgresql] [--quick]
                    [--only engine,export,dashboard,receipts,backup,peers]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench import backup, dashboard, engine, export, receipts
from bench.common import machine


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.run")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--only", default="engine,export,dashboard,receipts,backup,peers")
    parser.add_argument("--quick", action="store_true", help="skip the 1M-line export")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    parts = set(args.only.split(","))
    started = time.time()
    report: dict[str, Any] = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if "engine" in parts:
        report["engine"] = engine.run(backends)
    if "export" in parts:
        sizes = ["10k_lines", "10k_entries"] + ([] if args.quick else ["1m_lines"])
        report["export"] = export.run(backends, sizes)
    if "dashboard" in parts:
        report["dashboard"] = dashboard.run(backends)
    if "receipts" in parts:
        report["receipts"] = receipts.run(backends)
    if "backup" in parts:
        report["backup"] = backup.run(backends)
    if "peers" in parts:
        from bench import peers

        report["peers"] = peers.run(report.get("engine", {}))
    report["seconds"] = round(time.time() - started, 1)
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2, ensure_ascii=False))
