"""Wake-ups on every store (issue 15): every waiter waits on the store's one ``Hub``, a write
landing between a waiter's read and its registration is still seen, and a thousand threads
and a thousand tasks on one change all settle. Then the issue's own scenario: a thousand
callers of ``access_token`` on an expired token, the winner's refresh held until every other
caller waits, and every caller gets the new token, with no error.

No case measures time: the bounds (``HANG``) are only reached by a hung store, and how long the
slowest caller trails the winner is a figure of ``benchmarks/burst.py``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import AmoOAuth, AsyncAmoOAuth, MemoryStore, SQLiteStore, Store
from amo_oauth._records import record_key
from amo_oauth.stores._hub import Hub
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.testing._contract import (
    CROWD,
    FOREVER,
    HANG,
    ChangeBeforeRegistering,
    crowd_of_tasks,
    crowd_of_threads,
    make_record,
    until,
)

from helpers import config_for, following, run_consent

USER = "crowd-user"


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def every_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[Store]:
    # Each store reads the test's clock: leases are judged by the store's.
    kind = request.param
    if kind == "memory":
        store: Store = MemoryStore(clock=clock)
    elif kind == "sqlite":
        store = SQLiteStore(tmp_path / "w.db", clock=clock)
    elif kind == "postgres":
        from amo_oauth.stores import PostgresStore

        request.applymarker(pytest.mark.services)
        url = request.getfixturevalue("postgres_url")
        table = f"w_{uuid.uuid4().hex[:10]}"
        pg = PostgresStore(url, table=table, max_size=16, clock_offset=following(clock))
        pg.migrate()
        store = pg
    else:
        from amo_oauth.stores import RedisStore

        request.applymarker(pytest.mark.services)
        url = request.getfixturevalue("redis_url")
        rs = RedisStore(url, prefix=f"w{uuid.uuid4().hex[:8]}:", clock_offset=following(clock))
        rs.migrate()
        store = rs
    yield store
    store.close()


def hub(store: Store) -> Hub:
    found = getattr(store, "hub", None)
    assert isinstance(found, Hub), f"{type(store).__name__} does not wait on a Hub"
    return found


# -- the store alone -----------------------------------------------------------------------


def test_a_thousand_threads_on_one_change_all_registered_on_the_hub(every_store: Store) -> None:
    hub(every_store)  # crowd_of_threads then writes only once all of them are registered
    waiters = crowd_of_threads(every_store)
    assert [waiter.seen for waiter in waiters] == [2] * CROWD
    assert hub(every_store).waiting() == 0


def test_a_thousand_tasks_on_one_change_all_registered_on_the_hub(every_store: Store) -> None:
    hub(every_store)
    assert asyncio.run(crowd_of_tasks(every_store)) == [2] * CROWD
    assert hub(every_store).waiting() == 0


def test_a_write_in_the_pause_before_registering_is_seen(
    every_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub(every_store)
    assert every_store.compare_and_set(make_record(), None)
    change = ChangeBeforeRegistering(every_store)
    monkeypatch.setattr(Hub, "before_register", staticmethod(change))
    waiter = threading.Thread(target=every_store.wait_for_change, args=("c1", 1, 3600))
    waiter.start()
    waiter.join(HANG)
    assert change.moved, "the wait never registered on the hub"
    assert not waiter.is_alive(), "a write made before the wait registered was missed"


def test_an_async_write_in_the_pause_before_registering_is_seen(
    every_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from amo_oauth.stores import as_async_store

    hub(every_store)
    astore = as_async_store(every_store)
    change = ChangeBeforeRegistering(every_store)

    async def main() -> None:
        assert await astore.acompare_and_set(make_record(), None)
        monkeypatch.setattr(Hub, "before_register", staticmethod(change))
        await asyncio.wait_for(astore.await_for_change("c1", 1, 3600), HANG)

    asyncio.run(main())
    assert change.moved


# -- a listener lost just before the registration (PostgreSQL, Redis) ---------------------


class ListenerLost:
    """A waiting store, a writer (another object: only the server's notification reaches the
    waiter's hub) and how to drop the waiter's listening connection."""

    def __init__(self, store: Any, writer: Store, drop: Callable[[], object]) -> None:
        self.store = store
        self.writer = writer
        self.drop = drop
        self.dropped = False

    def __call__(self, key: str) -> None:
        """``Hub.before_register``: the first time, drop the listening connection and wait
        until its thread is gone (its ``lost`` ran, firing no watch of this waiter's)."""
        if key != "c1" or self.dropped:
            return
        self.dropped = True
        thread = self.store._listener._thread
        assert thread is not None and self.store._listener.ready, "no listener to drop"
        self.drop()
        thread.join(HANG)
        assert not thread.is_alive() and not self.store._listener.ready


@pytest.fixture(params=["postgres", "redis"])
def listener_lost(request: pytest.FixtureRequest) -> Iterator[ListenerLost]:
    if request.param == "postgres":
        import psycopg

        from amo_oauth.stores import PostgresStore

        request.applymarker(pytest.mark.services)
        url = request.getfixturevalue("postgres_url")
        table = f"l_{uuid.uuid4().hex[:10]}"
        pg, writer = PostgresStore(url, table=table), PostgresStore(url, table=table)
        pg.migrate()

        def drop() -> object:
            with psycopg.connect(pg._conns.conninfo, autocommit=True) as conn:
                killed = conn.execute(
                    b"SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    b" WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
                ).fetchall()
            assert killed
            return killed

        lost = ListenerLost(pg, writer, drop)
    else:
        import redis

        from amo_oauth.stores import RedisStore

        request.applymarker(pytest.mark.services)
        url = request.getfixturevalue("redis_url")
        prefix = f"l{uuid.uuid4().hex[:8]}:"
        rs, writer = RedisStore(url, prefix=prefix), RedisStore(url, prefix=prefix)
        rs.migrate()
        raw = redis.Redis.from_url(url)

        def drop() -> object:
            killed = raw.client_kill_filter(_type="pubsub")
            assert killed
            return killed

        lost = ListenerLost(rs, writer, drop)
    assert lost.writer.compare_and_set(make_record(), None)
    lost.store.wait_for_change("c1", 0, 0)  # the listener runs
    yield lost
    lost.store.close()
    lost.writer.close()


def test_a_listener_lost_before_registering_is_replaced(
    listener_lost: ListenerLost, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = listener_lost.store
    monkeypatch.setattr(Hub, "before_register", staticmethod(listener_lost))
    waiter = threading.Thread(target=store.wait_for_change, args=("c1", 1, FOREVER))
    waiter.start()
    until(lambda: listener_lost.dropped and hub(store).waiting("c1") >= 1, "registered")
    assert listener_lost.writer.compare_and_set(make_record(version=2), 1)
    waiter.join(HANG)
    assert not waiter.is_alive(), "a write after a listener's loss never woke the waiter"


def test_a_listener_lost_before_an_async_wait_registers_is_replaced(
    listener_lost: ListenerLost, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = listener_lost.store
    monkeypatch.setattr(Hub, "before_register", staticmethod(listener_lost))

    async def main() -> None:
        waiting = asyncio.ensure_future(store.await_for_change("c1", 1, FOREVER))
        await asyncio.to_thread(
            until, lambda: listener_lost.dropped and hub(store).waiting("c1") >= 1, "registered"
        )
        moved = await asyncio.to_thread(
            listener_lost.writer.compare_and_set, make_record(version=2), 1
        )
        assert moved
        await asyncio.wait_for(waiting, HANG)

    asyncio.run(main())


# -- the scenario: a thousand callers, one expired token ---------------------------


def _is_refresh(request: httpx.Request) -> bool:
    if request.method != "POST" or not request.url.path.endswith("/oauth2/access_token"):
        return False
    return bool(json.loads(request.content).get("grant_type") == "refresh_token")


class HeldRefresh(httpx.BaseTransport):
    """The fake's transport, with every refresh held until ``release`` is set."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.release = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if _is_refresh(request):
            assert self.release.wait(HANG), "the test never released the refresh"
        return self.inner.handle_request(request)


class AsyncHeldRefresh(httpx.AsyncBaseTransport):
    """``HeldRefresh`` for the async client."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.release = threading.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if _is_refresh(request):
            assert await asyncio.to_thread(self.release.wait, HANG), "never released"
        return await self.inner.handle_async_request(request)


@pytest.fixture
def slow_fake(clock: FakeClock) -> FakeAmoCRM:
    return FakeAmoCRM(clock=clock, rate_limit=None, latency=0.02)


def _settle_everyone(fake: FakeAmoCRM, results: list[str | BaseException]) -> None:
    errors = [result for result in results if isinstance(result, BaseException)]
    assert errors == [], f"{len(errors)} callers failed, first: {errors[:1]}"
    assert len(set(results)) == 1, "the callers did not all get the one new token"
    token = results[0]
    assert isinstance(token, str) and fake.is_access_token_valid(token)
    assert fake.token_call_count("refresh_token") == 1


def test_a_thousand_threads_want_an_expired_token(
    every_store: Store, slow_fake: FakeAmoCRM, clock: FakeClock
) -> None:
    transport = HeldRefresh(slow_fake.transport())
    http = httpx.Client(transport=transport)
    # settle_timeout: no caller gives up while the test holds the winner's answer.
    config = config_for(slow_fake, settle_timeout=600.0)
    with AmoOAuth(config, store=every_store, http=http, clock=clock) as oauth:
        transport.release.set()
        run_consent(oauth, slow_fake, USER)
        transport.release.clear()
        clock.advance(timedelta(hours=24))
        key = record_key(oauth.config.client_id, USER)

        def call(_: int) -> str | BaseException:
            try:
                return oauth.access_token(USER)
            except Exception as exc:  # counted by the test
                return exc

        with ThreadPoolExecutor(max_workers=CROWD) as pool:
            calls = [pool.submit(call, i) for i in range(CROWD)]
            until(lambda: hub(every_store).waiting(key) >= CROWD - 1, "every loser waiting")
            transport.release.set()
            results = [future.result(HANG) for future in calls]
    _settle_everyone(slow_fake, results)


def test_a_thousand_tasks_want_an_expired_token(
    every_store: Store, slow_fake: FakeAmoCRM, clock: FakeClock
) -> None:
    transport = AsyncHeldRefresh(slow_fake.async_transport())
    config = config_for(slow_fake, settle_timeout=600.0)

    async def main() -> list[str | BaseException]:
        http = httpx.AsyncClient(transport=transport)
        async with AsyncAmoOAuth(config, store=every_store, http=http, clock=clock) as oauth:
            transport.release.set()
            begun = await oauth.begin(USER)
            from helpers import query_of

            query = query_of(slow_fake.authorize(begun.state))
            await oauth.handle_callback(query, binding=begun.binding)
            transport.release.clear()
            clock.advance(timedelta(hours=24))
            key = record_key(oauth.config.client_id, USER)
            calls = [asyncio.ensure_future(oauth.access_token(USER)) for _ in range(CROWD)]
            waiting = lambda: hub(every_store).waiting(key) >= CROWD - 1  # noqa: E731
            await asyncio.to_thread(until, waiting, "every loser waiting")
            transport.release.set()
            done = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), HANG)
            return list(done)

    _settle_everyone(slow_fake, asyncio.run(main()))
