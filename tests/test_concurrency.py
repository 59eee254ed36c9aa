"""Races: many threads and tasks on one connection; exactly one token call each time."""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from amo_oauth import AmoOAuth, AsyncAmoOAuth, MemoryStore, Outcome, SQLiteStore, Store
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, query_of, run_consent

RACERS = 100
USER = "user-42"


def stores(tmp_path: Path, clock: FakeClock) -> dict[str, Store]:
    return {
        "memory": MemoryStore(clock=clock),
        "sqlite": SQLiteStore(tmp_path / "race.db", clock=clock),
    }


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Store:
    return stores(tmp_path, clock)[request.param]


@pytest.fixture
def slow_fake(clock: FakeClock) -> FakeAmoCRM:
    # Latency keeps the winner's exchange in flight while the others arrive.
    return FakeAmoCRM(clock=clock, rate_limit=None, latency=0.05)


def sync_oauth(fake: FakeAmoCRM, store: Store, clock: FakeClock) -> AmoOAuth:
    http = httpx.Client(transport=fake.transport())
    return AmoOAuth(config_for(fake), store=store, http=http, clock=clock)


def test_duplicate_callbacks_from_100_threads_exchange_once(
    slow_fake: FakeAmoCRM, store: Store, clock: FakeClock
) -> None:
    oauth = sync_oauth(slow_fake, store, clock)
    begun = oauth.begin(USER)
    query = query_of(slow_fake.authorize(begun.state))
    with ThreadPoolExecutor(max_workers=RACERS) as pool:  # one browser's redirect, 100 times
        results = list(
            pool.map(lambda _: oauth.handle_callback(query, binding=begun.binding), range(RACERS))
        )
    outcomes = Counter(result.outcome for result in results)
    assert outcomes == {Outcome.CONNECTED: 1, Outcome.ALREADY_CONNECTED: RACERS - 1}
    assert sum(result.duplicate for result in results) == RACERS - 1
    assert slow_fake.token_calls == {("authorization_code", "ok"): 1}


def test_access_token_from_100_threads_refreshes_once(
    slow_fake: FakeAmoCRM, store: Store, clock: FakeClock
) -> None:
    oauth = sync_oauth(slow_fake, store, clock)
    run_consent(oauth, slow_fake, USER)
    clock.advance(timedelta(hours=24))
    with ThreadPoolExecutor(max_workers=RACERS) as pool:
        tokens = list(pool.map(lambda _: oauth.access_token(USER), range(RACERS)))
    assert len(set(tokens)) == 1
    assert slow_fake.is_access_token_valid(tokens[0])
    assert slow_fake.token_calls[("refresh_token", "ok")] == 1
    assert slow_fake.token_call_count("refresh_token") == 1


def async_oauth(fake: FakeAmoCRM, store: Store, clock: FakeClock) -> AsyncAmoOAuth:
    http = httpx.AsyncClient(transport=fake.async_transport())
    return AsyncAmoOAuth(config_for(fake), store=store, http=http, clock=clock)


def test_duplicate_callbacks_from_100_tasks_exchange_once(
    slow_fake: FakeAmoCRM, store: Store, clock: FakeClock
) -> None:
    async def race() -> list[Outcome]:
        async with async_oauth(slow_fake, store, clock) as oauth:
            begun = await oauth.begin(USER)
            query = query_of(slow_fake.authorize(begun.state))
            results = await asyncio.gather(
                *(oauth.handle_callback(query, binding=begun.binding) for _ in range(RACERS))
            )
            return [result.outcome for result in results]

    outcomes = Counter(asyncio.run(race()))
    assert outcomes == {Outcome.CONNECTED: 1, Outcome.ALREADY_CONNECTED: RACERS - 1}
    assert slow_fake.token_calls == {("authorization_code", "ok"): 1}


def test_access_token_from_100_tasks_refreshes_once(
    slow_fake: FakeAmoCRM, store: Store, clock: FakeClock
) -> None:
    async def race() -> set[str]:
        async with async_oauth(slow_fake, store, clock) as oauth:
            begun = await oauth.begin(USER)
            query = query_of(slow_fake.authorize(begun.state))
            await oauth.handle_callback(query, binding=begun.binding)
            clock.advance(timedelta(hours=24))
            return set(await asyncio.gather(*(oauth.access_token(USER) for _ in range(RACERS))))

    tokens = asyncio.run(race())
    assert len(tokens) == 1
    assert slow_fake.token_call_count("refresh_token") == 1
