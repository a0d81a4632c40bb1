"""The login throttle against a reference model, over generated sequences of attempts."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from ledgerflow.api.security import default_allowed_hosts, host_allowed
from ledgerflow.web.sessions import LoginThrottle

events = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=30, allow_nan=False) | st.just(0.0),  # seconds since the last
        st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
        st.sampled_from(["fail", "ok", "ask"]),
    ),
    max_size=150,
)


@given(events)
def test_retry_after_matches_a_model_of_recent_failures(sequence):
    now = [0.0]
    throttle = LoginThrottle(attempts=3, window=60.0, clock=lambda: now[0])
    failures: dict[str, list[float]] = {}  # the model: failures per client since its last success
    everyone: list[float] = []  # and every failure

    def expected(client: str) -> int:
        def wait(times: list[float], limit: int) -> int:
            recent = [t for t in times if t > now[0] - 60.0]
            return 0 if len(recent) < limit else max(1, math.ceil(recent[-limit] + 60.0 - now[0]))

        return max(wait(failures.get(client, []), 3), wait(everyone, 30))

    for gap, client, what in sequence:
        now[0] += gap
        assert throttle.retry_after(client) == expected(client)
        if what == "fail":
            throttle.failed(client)
            failures.setdefault(client, []).append(now[0])
            everyone.append(now[0])
        elif what == "ok" and throttle.retry_after(client) == 0:
            throttle.succeeded(client)
            failures.pop(client, None)


def test_memory_stays_bounded_with_many_clients():
    throttle = LoginThrottle(attempts=5, window=60.0, clock=lambda: 0.0)
    for i in range(3 * LoginThrottle.MAX_CLIENTS):
        throttle.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(throttle._failures) <= LoginThrottle.MAX_CLIENTS + 1
    assert throttle.retry_after("192.0.2.1") > 0, "the limit for everyone still holds"


@given(st.text(max_size=40))
def test_only_listed_hosts_pass(host):
    allowed = default_allowed_hosts("127.0.0.1")
    name = host.strip().lower()
    plain = name.rsplit(":", 1)[0] if name.count(":") == 1 and not name.startswith("[") else name
    if host_allowed(host, allowed):
        assert plain.rstrip(".") in allowed or name.split("]")[0] + "]" in allowed
