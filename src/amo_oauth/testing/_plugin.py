"""pytest plugin: fixtures for testing against FakeAmoCRM.

Registered through the `pytest11` entry point, so installing amo_oauth makes the fixtures
available in every test suite without a conftest import.
"""

from __future__ import annotations

import pytest

from amo_oauth.testing import FakeAmoCRM, FakeClock


@pytest.fixture
def amo_fake_clock() -> FakeClock:
    """A FakeClock starting now (whole seconds); advance it to expire codes and tokens."""
    return FakeClock()


@pytest.fixture
def amo_fake(amo_fake_clock: FakeClock) -> FakeAmoCRM:
    """A FakeAmoCRM with default settings, driven by the `amo_fake_clock` fixture."""
    return FakeAmoCRM(clock=amo_fake_clock)
