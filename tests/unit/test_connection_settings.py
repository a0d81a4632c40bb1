"""PostgreSQL connection parameters: ledgerflow's network defaults and session limits, the URL's own first."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledgerflow.config import load_settings
from ledgerflow.db.backends import SessionLimits
from ledgerflow.db.postgres import NETWORK_DEFAULTS, connect_args
from ledgerflow.errors import ConfigError

URL = "postgresql+psycopg://u@db.example:5432/books"


def test_every_connection_gets_keepalives_a_tcp_user_timeout_and_the_session_limits():
    args = connect_args(URL, 5.0, SessionLimits())
    assert {k: args[k] for k in NETWORK_DEFAULTS} == {
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 5000,
    }
    assert args["connect_timeout"] == 5
    assert args["options"] == (
        "-c statement_timeout=30000 -c lock_timeout=5000 -c idle_in_transaction_session_timeout=5000"
        " -c jit=off"
    )


def test_parameters_in_the_url_win_and_its_options_come_last():
    args = connect_args(
        URL + "?tcp_user_timeout=9000&keepalives=0&options=-c%20lock_timeout%3D1s", 5.0, SessionLimits()
    )
    assert "tcp_user_timeout" not in args and "keepalives" not in args, "libpq reads them from the URL"
    assert args["keepalives_idle"] == 5
    assert args["options"].endswith(" -c lock_timeout=1s")


@given(st.floats(min_value=0, max_value=86_400, allow_nan=False))
def test_a_limit_in_seconds_becomes_milliseconds_and_only_zero_turns_it_off(seconds):
    options = connect_args(URL, 5.0, SessionLimits(statement_timeout=seconds))["options"]
    value = int(options.split()[1].removeprefix("statement_timeout="))
    assert (value == 0) == (seconds == 0)
    assert abs(value - seconds * 1000) <= 1 or value == 1


@pytest.mark.parametrize(
    "variable", ["DB_STATEMENT_TIMEOUT", "DB_LOCK_TIMEOUT", "DB_IDLE_IN_TRANSACTION_TIMEOUT"]
)
def test_a_negative_limit_stops_start_up_naming_the_variable(variable, monkeypatch):
    monkeypatch.setenv(f"LEDGERFLOW_{variable}", "-1")
    with pytest.raises(ConfigError, match=f"LEDGERFLOW_{variable}"):
        load_settings()
