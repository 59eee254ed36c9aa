"""Bursts of asyncio tasks on the server stores: callers queue for a connection, none fails
(issue 24 §1).

``benchmarks/burst.py`` saw 1,000 tasks on one connection end with dozens to hundreds of
``StoreError`` on PostgreSQL and Redis: each pool's wait for a free connection was bounded by
the store's ``timeout`` (``PoolTimeout``; redis-py's "No connection available"), and a task
queued behind a thousand others outwaited it though the store served everyone ahead of it.
Here the pools are made tiny (2 connections) and the store's ``timeout`` short (0.5 s) so that
the same queueing happens with 200 tasks: a wait expires while the store is serving others,
and is waited again (``stores/_turns.py``). Without that, callers fail (checked: with
``_turns.PATIENCE`` set to 0 all four bursts failed, with 2 to 93 ``StoreError`` of 200 at 0.5 s).

No timing is asserted; ``settle_timeout`` is raised so that no caller gives up waiting. The
``Turns`` unit tests pin the rule itself without a server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import AsyncAmoOAuth, Outcome
from amo_oauth.stores import Store
from amo_oauth.stores._turns import Turns
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, following, query_of

CALLERS = 200
USER = "burst-user"
#: Seconds a pool wait lasts: short, so that 200 tasks on 2 connections outwait it.
POOL_WAIT = 0.5


def small_store(kind: str, request: pytest.FixtureRequest, clock: FakeClock) -> Store:
    """A server store with 2 connections per pool and a ``POOL_WAIT`` wait for one."""
    name = f"burst{uuid.uuid4().hex[:12]}"
    if kind == "postgres":
        pytest.importorskip("psycopg")
        from amo_oauth.stores import PostgresStore

        url = request.getfixturevalue("postgres_url")
        pg = PostgresStore(
            url, table=name, max_size=2, timeout=POOL_WAIT, clock_offset=following(clock)
        )
        pg.migrate()
        return pg
    pytest.importorskip("redis")
    from amo_oauth.stores import RedisStore

    url = request.getfixturevalue("redis_url")
    redis = RedisStore(
        url, prefix=f"{name}:", max_connections=2, timeout=POOL_WAIT, clock_offset=following(clock)
    )
    redis.migrate()
    return redis


async def at_once(call: Callable[[], Any]) -> list[object]:
    """``call()`` awaited by ``CALLERS`` tasks at once; each answer, or the error."""

    async def one() -> object:
        try:
            return await call()
        except Exception as exc:  # counted by the test
            return exc

    return list(await asyncio.gather(*(one() for _ in range(CALLERS))))


def errors_of(answers: list[object]) -> Counter[str]:
    return Counter(f"{type(a).__name__}: {a}" for a in answers if isinstance(a, Exception))


@pytest.mark.parametrize("kind", ["postgres", "redis"])
@pytest.mark.parametrize("scenario", ["callbacks", "access_token"])
def test_tasks_queue_for_a_small_pool_without_errors(
    kind: str, scenario: str, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    fake = FakeAmoCRM(clock=clock, rate_limit=None, latency=0.02)
    store = small_store(kind, request, clock)
    try:
        answers = asyncio.run(_burst(fake, store, scenario, clock))
    finally:
        store.close()
    assert errors_of(answers) == Counter()
    if scenario == "callbacks":
        assert Counter(answers) == {Outcome.CONNECTED: 1, Outcome.ALREADY_CONNECTED: CALLERS - 1}
        assert fake.token_call_count("authorization_code") == 1
    else:
        assert len(set(answers)) == 1
        assert fake.token_call_count("refresh_token") == 1


async def _burst(fake: FakeAmoCRM, store: Store, scenario: str, clock: FakeClock) -> list[object]:
    # The callers' own patience is raised so that none gives up on a slow machine (that is
    # ``settle_timeout``'s business, not the store's): what is asserted is the store's errors.
    config = config_for(fake, settle_timeout=60.0)
    http = httpx.AsyncClient(transport=fake.async_transport())
    async with AsyncAmoOAuth(config, store=store, http=http, clock=clock) as oauth:
        begun = await oauth.begin(USER)
        query = query_of(fake.authorize(begun.state))
        if scenario == "callbacks":

            async def deliver() -> object:
                return (await oauth.handle_callback(query, binding=begun.binding)).outcome

            return await at_once(deliver)
        await oauth.handle_callback(query, binding=begun.binding)
        clock.advance(timedelta(hours=25))
        return await at_once(lambda: oauth.access_token(USER))


# -- the rule: an expired pool wait is waited again only while others are served -----------


class Expired(Exception):
    """A pool's "no connection within timeout"."""


def test_an_expired_wait_is_waited_again_while_others_are_served() -> None:
    turns = Turns(lambda exc: isinstance(exc, Expired))
    tries: list[int] = []

    def get() -> str:
        tries.append(1)
        if len(tries) < 3:
            turns.served_one()  # another caller's operation completed meanwhile
            raise Expired
        return "conn"

    assert turns.take(get) == "conn"
    assert len(tries) == 3


def test_an_expired_wait_with_nobody_served_fails_at_once() -> None:
    """A store that serves nobody (down, every connection stuck) fails after one wait."""
    turns = Turns(lambda exc: isinstance(exc, Expired))
    tries: list[int] = []

    def get() -> str:
        tries.append(1)
        raise Expired

    with pytest.raises(Expired):
        turns.take(get)
    assert len(tries) == 1


def test_other_errors_and_a_wait_past_patience_are_not_retried() -> None:
    now = [0.0]
    turns = Turns(lambda exc: isinstance(exc, Expired), patience=10.0, monotonic=lambda: now[0])
    tries: list[int] = []

    def refused() -> str:
        tries.append(1)
        turns.served_one()
        raise ConnectionRefusedError

    with pytest.raises(ConnectionRefusedError):
        turns.take(refused)
    assert len(tries) == 1

    tries.clear()

    def always_expired() -> str:
        tries.append(1)
        turns.served_one()
        now[0] += 3.0  # each wait lasts 3 s of the 10 s of patience
        raise Expired

    with pytest.raises(Expired):
        asyncio.run(turns.atake(_awaited(always_expired)))
    assert len(tries) == 4  # ended at 3, 6, 9 (waited again) and 12 s (past 10: raised)


def _awaited(call: Callable[[], str]) -> Callable[[], Any]:
    async def run() -> str:
        return call()

    return run
