"""The misfire decision (pure): what each due fire's record says is what happened to its run."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerflow.scheduler.loop import decide
from ledgerflow.scheduler.schedules import Schedule

START = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday


def daily(**options: object) -> Schedule:
    return Schedule(name="s", cron_expression="0 9 * * *", job_type="t", timezone="Asia/Tokyo", **options)


def test_after_an_outage_no_fire_runs_with_a_fire_that_was_itself_missed():
    """Sat and Sun move to Monday's run; the outage lasts until Wednesday; 'skip' runs Wednesday only."""
    schedule = daily(business_day="next")
    fires = schedule.due(datetime(2026, 11, 6, 1, tzinfo=UTC), datetime(2026, 11, 11, 1, tzinfo=UTC))
    plan = [(f.nominal.strftime("%a"), status, reason) for f, status, reason in decide(schedule, fires)]
    missed = "not run in time; misfire policy 'skip' runs only the latest missed fire"
    assert plan == [
        ("Sat", "missed", missed),
        ("Sun", "missed", missed),  # was: skipped, "runs with the fire of" Saturday, itself missed
        ("Mon", "missed", missed),
        ("Tue", "missed", missed),
        ("Wed", "enqueued", None),
    ]


def test_fires_merged_onto_the_run_that_happens_say_which_fire_runs_them():
    schedule = daily(business_day="next")
    fires = schedule.due(datetime(2026, 11, 6, 1, tzinfo=UTC), datetime(2026, 11, 9, 1, tzinfo=UTC))
    plan = [(f.nominal.strftime("%a"), status, reason) for f, status, reason in decide(schedule, fires)]
    assert plan == [
        ("Sat", "enqueued", None),
        ("Sun", "skipped", "runs with the fire of 2026-11-07T09:00:00+09:00"),
        ("Mon", "skipped", "runs with the fire of 2026-11-07T09:00:00+09:00"),
    ]


@settings(max_examples=300, deadline=None)
@given(
    rule=st.sampled_from([None, "next", "previous", "skip"]),
    policy=st.sampled_from(["skip", "all"]),
    cap=st.integers(1, 6),
    holidays=st.sets(st.integers(0, 40), max_size=12),
    start=st.integers(0, 20),
    outage=st.integers(1, 25),
)
def test_every_fire_record_tells_what_happened_to_its_run(rule, policy, cap, holidays, start, outage):
    """Generated outages over weekends and holidays, both policies: a `skipped` fire that
    "runs with the fire of X" names a fire X that was enqueued for the same run; a fire whose
    run was not enqueued is `missed` (or `skipped` as not a business day); the policy's cap holds."""
    extra = tuple(sorted(date(2026, 11, 1) + timedelta(days=d) for d in holidays)) if rule else ()
    schedule = daily(business_day=rule, extra_holidays=extra, misfire_policy=policy, misfire_max=cap)
    after = START + timedelta(days=start)
    fires = schedule.due(after, after + timedelta(days=outage))
    plan = decide(schedule, fires)
    assert [f for f, _, _ in plan] == fires
    enqueued = {f.nominal.isoformat(): f for f, status, _ in plan if status == "enqueued"}
    runs = {f.adjusted.astimezone(UTC) for f in enqueued.values() if f.adjusted}
    assert len(runs) == len(enqueued) <= (1 if policy == "skip" else cap)
    for fire, status, reason in plan:
        if fire.adjusted is None:
            assert (status, reason) == ("skipped", "not a business day")
        elif status == "skipped":
            assert reason and reason.startswith("runs with the fire of ")
            runs_with = enqueued[reason.removeprefix("runs with the fire of ")]
            assert runs_with.adjusted == fire.adjusted
        elif status == "missed":
            assert fire.adjusted.astimezone(UTC) not in runs
        else:
            assert status == "enqueued"
    if policy == "skip" and runs:  # the latest run is the one kept
        assert max(runs) == max(f.adjusted.astimezone(UTC) for f in fires if f.adjusted)
