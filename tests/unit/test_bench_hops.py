"""bench.hops' attribution of the slowest jobs: hops, overlapping spans, maintenance split."""

from __future__ import annotations

from bench.hops import _hops, _slowest

# Two jobs in worker 10 (worker 20 idle); the second overlaps an index pass of worker 10 and a
# heartbeat of worker 20, and a rival claim of worker 20.
EVENTS = """\
call 1 0.000
notify 10 0.001
returned 1 0.0012
cycle 10 0.0013
claim 10 0.0014
claimed 10 0.002
start 10 0.0022
task 10 0.0023
call 1 0.010
index+ 10 0.009
heartbeat+ 20 0.0105
notify 10 0.011
claim 20 0.0112
cycle 10 0.0113
claim 10 0.0114
heartbeat- 20 0.0115
claimed 10 0.018
index- 10 0.0185
start 10 0.0190
task 10 0.0192
"""


def test_the_slowest_job_comes_first_with_what_overlapped_it() -> None:
    (slow,) = _slowest(EVENTS, 1)
    assert slow["total_ms"] == 9.2
    assert slow["hops_ms"]["claimed"] == 6.6
    assert slow["rival_claims"] == 1
    overlapping = {(o["what"], o["same_process"]) for o in slow["overlapping"]}
    assert overlapping == {("index", True), ("heartbeat", False)}


def test_the_spans_are_also_given_for_the_jobs_maintenance_overlapped() -> None:
    hops = _hops(EVENTS)
    assert len(hops["span notify -> task"]) == 2
    assert [round(v * 1000, 3) for v in hops["span notify -> task [maintenance]"]] == [8.2]
