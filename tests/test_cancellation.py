"""A caller cancelled mid-call never loses what amoCRM answered: the token request and the write
that stores its answer run on, shielded, and the caller is cancelled at once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest

from amo_oauth import AsyncAmoOAuth, ConnectionStatus, MemoryStore, Outcome, SQLiteStore
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, query_of

USER = "user-1"


async def connected(fake: FakeAmoCRM, clock: FakeClock, store: object) -> AsyncAmoOAuth:
    oauth = AsyncAmoOAuth(
        config_for(fake),
        store=store,  # type: ignore[arg-type]
        http=httpx.AsyncClient(transport=fake.async_transport()),
        clock=clock,
    )
    begun = await oauth.begin(USER)
    query = query_of(fake.authorize(begun.state))
    result = await oauth.handle_callback(query, binding=begun.binding)
    assert result.outcome is Outcome.CONNECTED
    return oauth


@pytest.mark.parametrize("how", ["wait_for", "cancel"])
@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_a_refresh_cancelled_after_amocrm_rotated_the_pair_keeps_the_pair(
    fake: FakeAmoCRM, clock: FakeClock, tmp_path: object, how: str, store: str
) -> None:
    async def scenario() -> None:
        made = (
            MemoryStore(clock=clock)
            if store == "memory"
            else SQLiteStore(f"{tmp_path}/c.db", clock=clock)
        )
        oauth = await connected(fake, clock, made)
        clock.advance(timedelta(days=1, minutes=1))
        fake.latency = 0.3  # amoCRM rotates the pair, then the answer takes 0.3 s to arrive
        if how == "wait_for":
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(oauth.access_token(USER), 0.05)
        else:
            task = asyncio.create_task(oauth.access_token(USER))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        fake.latency = 0.0
        await asyncio.gather(*oauth._finishing)  # the shielded refresh stores its answer
        again = await connected_again(fake, clock, made)
        token = await again.access_token(USER)  # the stored, rotated pair: no refresh
        assert fake.is_access_token_valid(token)
        assert fake.token_call_count("refresh_token") == 1
        assert (await again.status(USER)).status is ConnectionStatus.CONNECTED
        await again.aclose()
        await oauth.aclose()

    asyncio.run(scenario())


async def connected_again(fake: FakeAmoCRM, clock: FakeClock, store: object) -> AsyncAmoOAuth:
    reopened = store if isinstance(store, MemoryStore) else SQLiteStore(store.path)  # type: ignore[attr-defined]
    return AsyncAmoOAuth(
        config_for(fake),
        store=reopened,
        http=httpx.AsyncClient(transport=fake.async_transport()),
        clock=clock,
    )


def test_an_exchange_cancelled_after_amocrm_spent_the_code_still_connects(
    fake: FakeAmoCRM, clock: FakeClock
) -> None:
    async def scenario() -> None:
        store = MemoryStore()
        oauth = AsyncAmoOAuth(
            config_for(fake),
            store=store,
            http=httpx.AsyncClient(transport=fake.async_transport()),
            clock=clock,
        )
        begun = await oauth.begin(USER)
        query = query_of(fake.authorize(begun.state))
        fake.latency = 0.2
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(oauth.handle_callback(query, binding=begun.binding), 0.05)
        await asyncio.gather(*oauth._finishing)
        assert (await oauth.status(USER)).status is ConnectionStatus.CONNECTED
        assert fake.token_call_count("authorization_code") == 1
        await oauth.aclose()

    asyncio.run(scenario())
