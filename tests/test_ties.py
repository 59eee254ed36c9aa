"""Ties in time (issue 18, item 5): a re-authorization begun in the same millisecond as the
connection was made is fresh; the order comes from the record's version that ``begin()``
read, which cannot tie, not from comparing timestamps. On a ``FakeClock`` that ties exactly,
on every store kind that keeps records (memory, SQLite), blocking and awaited."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from amo_oauth import AmoOAuth, AsyncAmoOAuth, MemoryStore, Outcome, SQLiteStore, Store
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, query_of, run_consent

USER = "user-tie"


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Store:
    if request.param == "memory":
        return MemoryStore(clock=clock)
    return SQLiteStore(tmp_path / "ties.db", clock=clock)


def test_a_reauthorization_begun_in_the_connections_millisecond_is_sent(
    store: Store, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = AmoOAuth(
        config_for(fake), store=store, http=httpx.Client(transport=fake.transport()), clock=clock
    )
    first = run_consent(oauth, fake, USER)
    assert first.outcome is Outcome.CONNECTED
    again = run_consent(oauth, fake, USER)  # the clock has not moved: an exact tie
    assert again.outcome is Outcome.CONNECTED and not again.duplicate
    assert fake.token_call_count("authorization_code") == 2
    oauth.close()


def test_a_consent_begun_before_the_connection_in_its_millisecond_is_kept_out(
    store: Store, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = AmoOAuth(
        config_for(fake), store=store, http=httpx.Client(transport=fake.transport()), clock=clock
    )
    early = oauth.begin(USER)  # a second tab, begun before the first consent connected
    assert run_consent(oauth, fake, USER).outcome is Outcome.CONNECTED
    query = query_of(fake.authorize(early.state))
    late = oauth.handle_callback(query, binding=early.binding)
    assert late.outcome is Outcome.ALREADY_CONNECTED
    assert fake.token_call_count("authorization_code") == 1
    oauth.close()


def test_a_reauthorization_in_the_same_millisecond_async(
    store: Store, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    async def main() -> None:
        oauth = AsyncAmoOAuth(
            config_for(fake),
            store=store,
            http=httpx.AsyncClient(transport=fake.async_transport()),
            clock=clock,
        )
        outcomes = []
        for _ in range(2):
            begun = await oauth.begin(USER)
            query = query_of(fake.authorize(begun.state))
            outcomes.append((await oauth.handle_callback(query, binding=begun.binding)).outcome)
        assert outcomes == [Outcome.CONNECTED, Outcome.CONNECTED]
        assert fake.token_call_count("authorization_code") == 2
        await oauth.aclose()

    asyncio.run(main())
