"""Seconds each test file took in a recorded run, so the longest files start first.

`make test` hands out whole files (`--dist loadfile`, `--no-loadscope-reorder`); pytest
collects them in `durations.json` order (the hook in tests/conftest.py), so the longest start
at once and the short ones fill the end: the processes finish together instead of one long file
starting last. Files missing from the table (new ones) count as `UNKNOWN` seconds.

Refresh the table from one or more JUnit reports (a later report's files replace an earlier's):

    python -m pytest -n 3 --dist loadfile --junitxml=run.xml
    python -m tests.durations run.xml
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

TABLE = Path(__file__).with_name("durations.json")
ROOT = TABLE.parent.parent
#: Seconds assumed for a file not in the table: ahead of the many short files, behind the long.
UNKNOWN = 10.0


def load() -> dict[str, float]:
    """Test file (path from the repository root) → seconds."""
    return json.loads(TABLE.read_text()) if TABLE.exists() else {}  # type: ignore[no-any-return]


def file_seconds(report: Path) -> dict[str, float]:
    """Seconds per test file (set-up, call and tear-down of each test) in a JUnit report."""
    seconds: dict[str, float] = defaultdict(float)
    for case in ET.parse(report).getroot().iter("testcase"):
        parts = case.get("classname", "").split(".")
        while parts and not (ROOT / Path(*parts).with_suffix(".py")).is_file():
            parts.pop()  # a class inside the module: Module.Class
        if parts:
            seconds[Path(*parts).with_suffix(".py").as_posix()] += float(case.get("time", 0))
    return seconds


def main(reports: list[str]) -> None:
    table: dict[str, float] = {}
    for report in reports:
        table.update(file_seconds(Path(report)))
    ordered = dict(sorted(((k, round(v, 1)) for k, v in table.items()), key=lambda kv: (-kv[1], kv[0])))
    TABLE.write_text(json.dumps(ordered, indent=1) + "\n")
    print(f"{TABLE}: {len(ordered)} files, {sum(ordered.values()):.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
