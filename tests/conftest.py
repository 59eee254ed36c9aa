"""Shared fixtures: a service wired to FakeAmoCRM through an in-process transport."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from amo_oauth import AmoOAuth, MemoryStore, Store
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for


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
            store=store if store is not None else MemoryStore(),
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
