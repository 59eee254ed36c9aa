"""The fixtures of the tests whose worker processes reach one FakeAmoCRM over loopback HTTP
(``test_cross_process.py``, ``test_multiprocess.py``): import them by name (tests/ is on
sys.path)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from amo_oauth.testing import FakeAmoCRM

from helpers import STATE_SECRET, OffsetClock


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


def job_config(fake: FakeAmoCRM, **overrides: Any) -> dict[str, Any]:
    """The ``Config`` keyword arguments a worker's job carries (JSON: strings and numbers)."""
    return {
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "redirect_uri": fake.redirect_uri,
        "state_secret": STATE_SECRET,
        "authorize_url": f"https://{fake.consent_host}/oauth",
        **overrides,
    }
