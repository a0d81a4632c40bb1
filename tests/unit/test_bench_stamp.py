"""bench.stamp: each line carries the pid of the process that ran the job; files written before
(without it) still read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bench import stamp
from bench.stamp import Stamps, parse


def test_stamps_carry_the_pid_and_older_lines_still_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "stamps"
    monkeypatch.setenv("BENCH_STAMPS", str(path))
    monkeypatch.setattr(stamp, "_fd", None)
    stamp.record("a")
    stamp.record("b")
    with path.open("a") as f:
        f.write("c 1.500000\n")  # an older line: no pid
    key, at, pid = parse(path.read_text().splitlines()[0]) or ("", 0.0, None)
    assert (key, pid) == ("a", os.getpid()) and at > 0
    seen = Stamps.read(path)
    assert seen.count == 3 and seen.duplicates == 0
    assert len(seen.by_pid[os.getpid()]) == 2 and seen.by_pid[None] == [1.5]
    assert Stamps.read(path, prefix="c").times == [1.5]
    assert parse("") is None and parse("only-a-key") is None
