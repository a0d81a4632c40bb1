"""Fixtures of the engine's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import make_url

from tests.netproxy import PartitionProxy


@pytest.fixture
def proxy(db_url: str) -> Iterator[PartitionProxy]:
    """A pulled-cable proxy in front of the test's PostgreSQL (`tests.netproxy.behind`)."""
    url = make_url(db_url)
    p = PartitionProxy(url.host or "127.0.0.1", url.port or 5432)
    yield p
    p.close()
