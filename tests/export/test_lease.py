"""The one lease primitive (db/lease.py) behind the export batch lock and the breaker trial."""

from __future__ import annotations

from typing import Any

from ledgerflow.db.lease import Held, Lease, Renewer
from ledgerflow.db.tables import circuit_breakers as cb
from ledgerflow.export.breaker import CircuitBreaker
from tests.conftest import wait_until

LEASE = Lease(cb.c.destination, cb.c.trial_token, cb.c.trial_expires_at)
ROW = "file:///lease-test"


def take(app: Any, seconds: float) -> Held | None:
    with app.db.begin() as conn:
        return LEASE.acquire(conn, app.db, ROW, seconds)


def moved(app: Any, held: Held, **values: Any) -> bool:
    with app.db.begin() as conn:
        return held.move(conn, **values)


def test_one_holder_at_a_time_until_the_lease_expires_then_the_old_holder_is_fenced(make_export_app):
    app = make_export_app()
    CircuitBreaker(app.db, ROW, app.alerts).state()  # the leased row
    first = take(app, 0.5)
    assert first is not None and take(app, 60) is None, "held: nobody else gets it"
    assert moved(app, first, last_error="first holder writes")
    second = wait_until(lambda: take(app, 60), 30, message="the first lease to expire")
    assert second.token != first.token
    assert not moved(app, first, last_error="late write"), "the old holder is fenced off"
    assert not first.renew()
    with app.db.begin() as conn:
        assert not first.release(conn), "nor can it release the new holder's lease"
    assert moved(app, second, last_error="second holder writes")
    with app.db.begin() as conn:
        assert second.release(conn)
    third = take(app, 60)
    assert third is not None, "released: free at once"


def test_the_renewer_keeps_a_lease_alive_and_drops_a_lost_one(make_export_app):
    app = make_export_app()
    CircuitBreaker(app.db, ROW, app.alerts).state()
    held = take(app, 3)
    assert held is not None
    renewer = Renewer().add(held).start()
    try:
        renewals = [CircuitBreaker(app.db, ROW, app.alerts).state()["trial_expires_at"]]

        def renewed_twice() -> bool:
            now = CircuitBreaker(app.db, ROW, app.alerts).state()["trial_expires_at"]
            if now != renewals[-1]:
                renewals.append(now)
            return len(renewals) > 2

        wait_until(renewed_twice, 60, message="two renewals")
        assert take(app, 60) is None, "renewed: still held"
        with app.db.begin() as conn:
            assert held.release(conn)
        wait_until(lambda: held not in renewer.holding, 30, message="the renewer to drop the lost lease")
    finally:
        renewer.stop()
