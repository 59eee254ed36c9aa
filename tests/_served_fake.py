"""The fixtures of the tests whose worker processes reach one FakeAmoCRM over loopback HTTP
(``test_cross_process.py``, ``test_multiprocess.py``): import them by name (tests/ is on
sys.path)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from amo_oauth.testing import FakeAmoCRM

from helpers import OffsetClock


@pytest.fixture
def clock() -> OffsetClock:
    return OffsetClock()


@pytest.fixture
def fake(clock: OffsetClock) -> FakeAmoCRM:
    # Latency keeps the winner's token call in flight while the others arrive.
    return FakeAmoCRM(clock=clock, rate_limit=None, latency=0.05)


@pytest.fixture
def served(fake: FakeAmoCRM) -> Iterator[str]:
    with fake.serve() as running:
        yield running.url
