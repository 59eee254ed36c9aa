"""Hypothesis profiles, then shared fixtures: a service wired to FakeAmoCRM through an
in-process transport."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator

import httpx
import pytest
from hypothesis import HealthCheck, settings

from _backends import backend  # noqa: F401 - the four stores, for the tests that ask
from amo_oauth import AmoOAuth, MemoryStore, Store
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import CI_EXAMPLES, config_for, examples

# -- hypothesis profiles: the one place that decides how much the property tests run ----------
# ``max_examples`` is what a test with no count of its own runs; ``examples(full)`` (helpers.py)
# scales each test's full budget by it: ``ci`` runs every budget in full (the state machine
# 500 x 100 steps), ``dev``, the local default, 15% of it. Neither has a deadline or the
# too-slow health check: both time single examples, and a loaded machine fails them, not a bug.
_untimed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", _untimed, max_examples=CI_EXAMPLES, print_blob=True)
settings.register_profile("dev", _untimed, max_examples=CI_EXAMPLES * 15 // 100)
# ``python3 tasks.py full``: 20 times CI's budgets (examples(500) runs 10,000).
settings.register_profile("full", _untimed, max_examples=CI_EXAMPLES * 20, print_blob=True)


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _ci() else "dev")
settings.load_profile(PROFILE)


def pytest_report_header() -> str:
    return (
        f"hypothesis profile: {PROFILE} (examples(500) runs {examples(500)}; "
        "set HYPOTHESIS_PROFILE=ci|dev|full to choose)"
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> FakeAmoCRM:
    return FakeAmoCRM(clock=clock, rate_limit=None)


@pytest.fixture
def make_oauth(fake: FakeAmoCRM, clock: FakeClock) -> Iterator[Callable[..., AmoOAuth]]:
    """Build an AmoOAuth on the fake; keyword arguments override Config fields."""
    made: list[AmoOAuth] = []

    def make(store: Store | None = None, **overrides: object) -> AmoOAuth:
        oauth = AmoOAuth(
            config_for(fake, **overrides),
            store=store if store is not None else MemoryStore(clock=clock),
            http=httpx.Client(transport=fake.transport()),
            clock=clock,
        )
        made.append(oauth)
        return oauth

    yield make
    for oauth in made:
        oauth.close()


@pytest.fixture
def oauth(make_oauth: Callable[..., AmoOAuth]) -> AmoOAuth:
    return make_oauth()


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback TCP port that refuses connections for the whole test: bound and never
    listening, so no other process (a throwaway server of a parallel run) can take it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        port: int = held.getsockname()[1]
        yield port
