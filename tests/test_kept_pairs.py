"""Pairs kept in memory land, and nobody is told to re-authorize meanwhile (issue 18, items 2
and 3), on every store, blocking and awaited.

A pair amoCRM gave (a rotated pair, the pair from a code) that the store refused is the only
valid one: every store operation of the process, whatever the tenant, tries it first; a
background retry does too; a "revoked" to a refresh token sent again after a lapsed lease, and
a lapsed exchange lease, are transient for ``Config.kept_pair_grace`` (``TryAgainLater``); a
kept pair lands even after the grace, and the connection recovers. The faults come from the
public kit (``amo_oauth.testing.faults``); PostgreSQL is also killed and restarted for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from _pg_server import own_postgres, postgres_url  # noqa: F401
from _redis_server import own_redis, redis_url  # noqa: F401
from amo_oauth import (
    AmoOAuth,
    AsyncAmoOAuth,
    ConnectionRecord,
    ConnectionStatus,
    PostgresStore,
    ReauthorizationRequired,
    RedisStore,
    SQLiteStore,
    StoreError,
    TryAgainLater,
)
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.testing.faults import (
    AsyncFaultyStore,
    AsyncFaultyTransport,
    FaultyStore,
    FaultyTransport,
)

from helpers import config_for, consent, following, query_of, run_consent, stored

T1, T2 = "tenant-1", "tenant-2"
LEASE = timedelta(seconds=60)
STORES = ("sqlite", "postgres", "redis")


def _rotated_pair_write(args: tuple[object, ...]) -> bool:
    """The write of a rotated pair (no lease, tokens never sent): not a claim, not a release."""
    record = args[0]
    return (
        isinstance(record, ConnectionRecord)
        and record.status is ConnectionStatus.CONNECTED
        and record.lease is None
        and record.tokens is not None
        and record.tokens.refresh_sends == 0
    )


def _exchanged_pair_write(args: tuple[object, ...]) -> bool:
    """The write of the pair from a code (``exchanged``, no account yet)."""
    record = args[0]
    return (
        isinstance(record, ConnectionRecord)
        and record.status is ConnectionStatus.EXCHANGED
        and record.account is None
        and record.tokens is not None
    )


@pytest.fixture
def open_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Callable[[str], Any]:
    """Open a store object of a kind on one shared place per test (each call a new object, as
    two machines would have)."""
    name = f"t_{uuid.uuid4().hex[:12]}"

    def make(kind: str) -> Any:
        if kind == "sqlite":
            store: Any = SQLiteStore(tmp_path / "store.db", clock=clock)
        elif kind == "postgres":
            url = request.getfixturevalue("postgres_url")
            store = PostgresStore(url, table=name, clock_offset=following(clock))
            store.migrate()
        else:
            url = request.getfixturevalue("redis_url")
            store = RedisStore(url, prefix=f"{name}:", clock_offset=following(clock))
            store.migrate()
        return store

    return make


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> FakeAmoCRM:
    return FakeAmoCRM(clock=clock)


def _config(fake: FakeAmoCRM) -> Any:
    # A short settle_timeout: callers wait for a kept pair that long before TryAgainLater.
    return config_for(fake, lease_ttl=LEASE, settle_timeout=0.2)


def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds (bounded by a generous deadline, never asserted on
    time)."""
    deadline = time.monotonic() + 30
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert condition()


# -- blocking ------------------------------------------------------------------------------


class Two:
    """Machine A (its store and transport faulty) and machine B, on one store and one fake."""

    def __init__(self, fake: FakeAmoCRM, clock: FakeClock, a_store: Any, b_store: Any) -> None:
        self.a_store = FaultyStore(a_store)
        self.a_http = FaultyTransport(fake.transport())
        self.a = AmoOAuth(
            _config(fake),
            store=self.a_store,
            http=httpx.Client(transport=self.a_http),
            clock=clock,
        )
        self.b = AmoOAuth(
            _config(fake), store=b_store, http=httpx.Client(transport=fake.transport()), clock=clock
        )

    def close(self) -> None:
        self.a_store.heal()
        self.a.close()
        self.b.close()


@pytest.fixture(params=STORES)
def two(
    request: pytest.FixtureRequest,
    open_store: Callable[[str], Any],
    fake: FakeAmoCRM,
    clock: FakeClock,
) -> Iterator[Two]:
    pair = Two(fake, clock, open_store(request.param), open_store(request.param))
    yield pair
    pair.close()


def _keep_a_rotated_pair(two: Two, fake: FakeAmoCRM, clock: FakeClock) -> Any:
    """A connects both tenants, then refreshes T1 while the store refuses the new pair: A keeps
    it and raises StoreError. Returns the store fault (heal it to bring the store back) and
    T1's redirect query (to replay)."""
    query, binding = consent(two.a, fake, T1)
    two.a.handle_callback(query, binding=binding)
    run_consent(two.a, fake, T2)
    clock.advance(timedelta(days=1, minutes=1))
    down = two.a_store.fail("compare_and_set", times=None, when=_rotated_pair_write)
    two.a._kept_retry.stop(0)  # this test lands it by calls; the retry has its own test
    with pytest.raises(StoreError):
        two.a.access_token(T1)
    assert two.a._flows.records.kept_pairs() == 1
    assert fake.token_call_count("refresh_token") == 1
    return down, query


def test_a_call_for_another_tenant_lands_the_kept_pair_first(
    two: Two, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    down, _ = _keep_a_rotated_pair(two, fake, clock)
    down.heal()
    assert two.a.status(T2).status is ConnectionStatus.CONNECTED  # another tenant's call
    assert two.a._flows.records.kept_pairs() == 0
    token = two.b.access_token(T1)  # B uses the landed pair: no second refresh
    assert fake.is_access_token_valid(token)
    assert fake.token_call_count("refresh_token") == 1


def test_a_revoked_resend_after_a_lapsed_lease_waits_for_the_kept_pair(
    two: Two, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    down, query = _keep_a_rotated_pair(two, fake, clock)
    clock.advance(LEASE + timedelta(seconds=1))  # A's refresh lease lapses
    with pytest.raises(TryAgainLater) as later:
        two.b.access_token(T1)  # B resends the spent token: amoCRM says revoked
    assert later.value.reason == "kept_pair_pending"
    assert later.value.retry_after is not None and later.value.retry_after > 0
    assert fake.token_call_count("refresh_token") == 2  # once per lease: A's, then B's
    with pytest.raises(TryAgainLater):
        two.b.access_token(T1)  # during the grace nobody sends it again
    assert fake.token_call_count("refresh_token") == 2
    assert two.b.status(T1).status is ConnectionStatus.CONNECTED  # never reauthorization
    # The seed's replay during the grace (a day on: the ledger forgot the code, the signed-in
    # user's record still knows it): answered with the status, never TryAgainLater.
    replay = two.b.handle_callback(query, connection_id=T1)
    assert replay.duplicate and replay.connection.status is ConnectionStatus.CONNECTED
    down.heal()
    assert two.a.status(T2).status is ConnectionStatus.CONNECTED  # lands T1's kept pair
    token = two.b.access_token(T1)
    assert fake.is_access_token_valid(token)
    assert two.b.status(T1).status is ConnectionStatus.CONNECTED
    assert fake.token_call_count("refresh_token") == 2


def test_after_the_grace_the_connection_needs_consent_until_the_kept_pair_lands(
    two: Two, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    down, _ = _keep_a_rotated_pair(two, fake, clock)
    clock.advance(LEASE + timedelta(seconds=1))
    with pytest.raises(TryAgainLater):
        two.b.access_token(T1)
    clock.advance(two.b.config.kept_pair_grace + timedelta(seconds=1))
    with pytest.raises(ReauthorizationRequired):
        two.b.access_token(T1)
    status = two.b.status(T1)
    assert status.error is not None and status.error.reason == "reauthorization_required"
    # The kept pair's spent token is the one refused: the table lets it replace that status.
    down.heal()
    two.a.status(T2)
    assert two.b.status(T1).status is ConnectionStatus.CONNECTED
    assert fake.is_access_token_valid(two.b.access_token(T1))
    assert fake.token_call_count("refresh_token") == 2


def test_the_background_retry_lands_the_kept_pair_without_any_call(
    two: Two, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    run_consent(two.a, fake, T1)
    clock.advance(timedelta(days=1, minutes=1))
    down = two.a_store.fail("compare_and_set", times=None, when=_rotated_pair_write)
    with pytest.raises(StoreError):
        two.a.access_token(T1)
    down.heal()
    until(lambda: two.a._flows.records.kept_pairs() == 0)
    record = stored(two.b, T1)
    assert record is not None and record.tokens is not None
    assert fake.is_access_token_valid(record.tokens.access_token)


def test_close_stops_the_background_retry_and_tries_once_more(
    two: Two, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    run_consent(two.a, fake, T1)
    clock.advance(timedelta(days=1, minutes=1))
    down = two.a_store.fail("compare_and_set", times=None, when=_rotated_pair_write)
    with pytest.raises(StoreError):
        two.a.access_token(T1)
    down.heal()
    two.a.close()  # stops the thread, then stores what is kept
    assert two.a._flows.records.kept_pairs() == 0
    assert two.a._kept_retry._thread is None or not two.a._kept_retry._thread.is_alive()
    assert fake.is_access_token_valid(two.b.access_token(T1))


# -- the pair from a code (item 3) ------------------------------------------------------------


def _keep_an_exchanged_pair(two: Two, fake: FakeAmoCRM) -> tuple[Any, dict[str, str], Any]:
    """A's callback exchanges T1's code while the store refuses the pair: kept, StoreError."""
    query, binding = consent(two.a, fake, T1)
    down = two.a_store.fail("compare_and_set", times=None, when=_exchanged_pair_write)
    two.a._kept_retry.stop(0)
    with pytest.raises(StoreError):
        two.a.handle_callback(query, binding=binding)
    assert two.a._flows.records.kept_pairs() == 1
    return down, query, binding


def test_the_pair_from_a_code_lands_within_the_grace(
    two: Two, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    down, query, _ = _keep_an_exchanged_pair(two, fake)
    clock.advance(LEASE + timedelta(seconds=1))
    assert two.b.status(T1).status is ConnectionStatus.CODE_RECEIVED  # not interrupted yet
    with pytest.raises(TryAgainLater) as later:
        two.b.access_token(T1)
    assert later.value.reason == "kept_pair_pending"
    replay = two.b.handle_callback(query)  # the seed's replay: answered, never raised
    assert replay.duplicate and replay.connection.status is ConnectionStatus.CODE_RECEIVED
    down.heal()
    two.a.status(T2)  # another tenant's call lands it
    assert fake.is_access_token_valid(two.b.access_token(T1))  # verified on the way
    assert two.b.status(T1).status is ConnectionStatus.CONNECTED
    assert fake.token_call_count("authorization_code") == 1


def test_the_pair_from_a_code_landing_within_the_lease_is_verified_at_once(
    two: Two, fake: FakeAmoCRM
) -> None:
    down, _, _ = _keep_an_exchanged_pair(two, fake)
    down.heal()
    two.a.status(T2)  # lands it while the exchange lease still lives: the lease is released
    assert fake.is_access_token_valid(two.b.access_token(T1))  # verified now, no lapse needed
    assert two.b.status(T1).status is ConnectionStatus.CONNECTED
    assert fake.token_call_count("authorization_code") == 1


def test_the_pair_from_a_code_lands_on_exchange_interrupted_after_the_grace(
    two: Two, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    down, query, _ = _keep_an_exchanged_pair(two, fake)
    clock.advance(LEASE + two.b.config.kept_pair_grace + timedelta(seconds=1))
    status = two.b.status(T1)
    assert status.error is not None and status.error.reason == "exchange_interrupted"
    down.heal()
    two.a.status(T2)
    assert fake.is_access_token_valid(two.b.access_token(T1))  # no new consent
    assert two.b.status(T1).status is ConnectionStatus.CONNECTED
    replay = two.b.handle_callback(query)
    assert replay.duplicate and replay.connection.status is ConnectionStatus.CONNECTED
    assert fake.token_call_count("authorization_code") == 1


# -- awaited ------------------------------------------------------------------------------


class AsyncTwo:
    """``Two``, awaited."""

    def __init__(self, fake: FakeAmoCRM, clock: FakeClock, a_store: Any, b_store: Any) -> None:
        self.fake, self.clock = fake, clock
        self.a_store = AsyncFaultyStore(a_store)
        self.a_http = AsyncFaultyTransport(fake.async_transport())
        self.a = AsyncAmoOAuth(
            _config(fake),
            store=self.a_store,
            http=httpx.AsyncClient(transport=self.a_http),
            clock=clock,
        )
        self.b = AsyncAmoOAuth(
            _config(fake),
            store=b_store,
            http=httpx.AsyncClient(transport=fake.async_transport()),
            clock=clock,
        )

    async def close(self) -> None:
        self.a_store.heal()
        await self.a.aclose()
        await self.b.aclose()


async def _aconsent(oauth: AsyncAmoOAuth, fake: FakeAmoCRM, who: str) -> Any:
    begun = await oauth.begin(who)
    query = query_of(fake.authorize(begun.state))
    return await oauth.handle_callback(query, binding=begun.binding)


@pytest.mark.parametrize("kind", STORES)
def test_async_a_revoked_resend_waits_and_another_tenant_lands_the_pair(
    kind: str, open_store: Callable[[str], Any], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    async def scenario() -> None:
        two = AsyncTwo(fake, clock, open_store(kind), open_store(kind))
        try:
            await _aconsent(two.a, fake, T1)
            await _aconsent(two.a, fake, T2)
            clock.advance(timedelta(days=1, minutes=1))
            down = two.a_store.fail("compare_and_set", times=None, when=_rotated_pair_write)
            await two.a._kept_retry.stop()  # lands by calls here
            with pytest.raises(StoreError):
                await two.a.access_token(T1)
            clock.advance(LEASE + timedelta(seconds=1))
            with pytest.raises(TryAgainLater):
                await two.b.access_token(T1)
            assert (await two.b.status(T1)).status is ConnectionStatus.CONNECTED
            down.heal()
            await two.a.status(T2)
            assert two.a._flows.records.kept_pairs() == 0
            assert fake.is_access_token_valid(await two.b.access_token(T1))
            assert fake.token_call_count("refresh_token") == 2
        finally:
            await two.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", STORES)
def test_async_the_pair_from_a_code_lands_by_the_background_task(
    kind: str, open_store: Callable[[str], Any], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    async def scenario() -> None:
        two = AsyncTwo(fake, clock, open_store(kind), open_store(kind))
        try:
            begun = await two.a.begin(T1)
            query = query_of(fake.authorize(begun.state))
            down = two.a_store.fail("compare_and_set", times=None, when=_exchanged_pair_write)
            with pytest.raises(StoreError):
                await two.a.handle_callback(query, binding=begun.binding)
            clock.advance(LEASE + two.a.config.kept_pair_grace + timedelta(seconds=1))
            down.heal()
            deadline = time.monotonic() + 30
            while two.a._flows.records.kept_pairs() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)  # the background task's first try comes soon
            assert two.a._flows.records.kept_pairs() == 0
            assert fake.is_access_token_valid(await two.b.access_token(T1))
            assert fake.token_call_count("authorization_code") == 1
        finally:
            await two.close()

    asyncio.run(scenario())


# -- the server killed while the refresh answer is in flight (the case) ----------------


class Server(Protocol):
    def kill(self) -> None: ...

    def restart(self) -> None: ...


@contextlib.contextmanager
def killable(
    kind: str, directory: Path, clock: FakeClock
) -> Iterator[tuple[Server, Callable[[], Any]]]:
    """A server of the test's own (PostgreSQL or Redis, durable), and a maker of store objects
    on one table or prefix of it (the first one migrated)."""
    place = f"t_{uuid.uuid4().hex[:12]}"
    if kind == "postgres":
        with own_postgres() as pg:

            def make_pg() -> Any:
                return PostgresStore(
                    pg.url, table=place, timeout=2.0, clock_offset=following(clock)
                )

            first = make_pg()
            first.migrate()
            first.close()
            yield pg, make_pg
        return
    with own_redis(directory) as rs:

        def make_redis() -> Any:
            return RedisStore(
                rs.url, prefix=f"{place}:", timeout=2.0, clock_offset=following(clock)
            )

        first = make_redis()
        first.migrate()
        first.close()
        yield rs, make_redis


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_the_server_killed_mid_refresh_the_kept_pair_lands_on_another_tenants_call(
    kind: str, tmp_path: Path, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    with killable(kind, tmp_path, clock) as (server, make):
        two = Two(fake, clock, make(), make())
        try:
            _killed_scenario(two, server, fake, clock)
        finally:
            two.close()


def _killed_scenario(two: Two, server: Server, fake: FakeAmoCRM, clock: FakeClock) -> None:
    run_consent(two.a, fake, T1)
    run_consent(two.a, fake, T2)
    clock.advance(timedelta(days=1, minutes=1))
    two.a._kept_retry.stop(0)  # the other tenant's call must land it
    held = two.a_http.hold(grant="refresh_token")
    failures: list[BaseException] = []

    def refresh() -> None:
        try:
            two.a.access_token(T1)
        except BaseException as error:
            failures.append(error)

    worker = threading.Thread(target=refresh)
    worker.start()
    assert held.wait_reached()
    server.kill()  # the answer is in flight: amoCRM rotated the pair
    held.release()
    worker.join()
    assert len(failures) == 1 and isinstance(failures[0], StoreError)
    assert two.a._flows.records.kept_pairs() == 1
    server.restart()
    clock.advance(LEASE + timedelta(seconds=1))
    until(lambda: _answers(two.b, T2))  # B's connections come back after the restart
    # B takes over the lapsed lease and resends the spent token: revoked, but not re-auth.
    with pytest.raises(TryAgainLater):
        two.b.access_token(T1)
    assert two.b.status(T1).status is ConnectionStatus.CONNECTED
    until(lambda: _answers(two.a, T2))  # A's call for ANOTHER tenant lands T1's pair first
    assert two.a._flows.records.kept_pairs() == 0
    assert fake.is_access_token_valid(two.b.access_token(T1))
    assert two.b.status(T1).status is ConnectionStatus.CONNECTED
    assert fake.token_call_count("refresh_token") == 2  # A's, then B's after the lapse


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_async_the_server_killed_mid_refresh_the_kept_pair_lands_on_another_tenants_call(
    kind: str, tmp_path: Path, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    async def scenario(server: Server, make: Callable[[], Any]) -> None:
        two = AsyncTwo(fake, clock, make(), make())
        try:
            await _async_killed_scenario(two, server)
        finally:
            await two.close()

    with killable(kind, tmp_path, clock) as (server, make):
        asyncio.run(scenario(server, make))


async def _async_killed_scenario(two: AsyncTwo, server: Server) -> None:
    fake, clock = two.fake, two.clock
    await _aconsent(two.a, fake, T1)
    await _aconsent(two.a, fake, T2)
    clock.advance(timedelta(days=1, minutes=1))
    await two.a._kept_retry.stop()  # the other tenant's call must land it
    held = two.a_http.hold(grant="refresh_token")
    refresh = asyncio.ensure_future(two.a.access_token(T1))
    assert await asyncio.to_thread(held.wait_reached)
    await asyncio.to_thread(server.kill)
    held.release()
    with pytest.raises(StoreError):
        await refresh
    assert two.a._flows.records.kept_pairs() == 1
    await asyncio.to_thread(server.restart)
    clock.advance(LEASE + timedelta(seconds=1))
    await _auntil(two.b, T2)
    with pytest.raises(TryAgainLater):
        await two.b.access_token(T1)
    assert (await two.b.status(T1)).status is ConnectionStatus.CONNECTED
    await _auntil(two.a, T2)  # A's call for ANOTHER tenant lands T1's pair first
    assert two.a._flows.records.kept_pairs() == 0
    assert fake.is_access_token_valid(await two.b.access_token(T1))
    assert fake.token_call_count("refresh_token") == 2


async def _auntil(oauth: AsyncAmoOAuth, who: str) -> None:
    """Await ``oauth``'s status call until the store answers (bounded, not asserted on time)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            await oauth.status(who)
            return
        except StoreError:
            await asyncio.sleep(0.05)
    await oauth.status(who)


def _answers(oauth: AmoOAuth, who: str) -> bool:
    """True once the store answers ``oauth``'s status call (it reconnects after a restart)."""
    try:
        oauth.status(who)
    except StoreError:
        return False
    return True


def test_kept_pairs_are_never_logged(
    two: Two, fake: FakeAmoCRM, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="amo_oauth")
    down, _ = _keep_a_rotated_pair(two, fake, clock)
    clock.advance(LEASE + timedelta(seconds=1))
    with pytest.raises(TryAgainLater) as later:
        two.b.access_token(T1)
    down.heal()
    two.a.status(T2)
    record = stored(two.b, T1)
    assert record is not None and record.tokens is not None
    secrets = (record.tokens.access_token, record.tokens.refresh_token)
    shown = caplog.text + repr(later.value) + str(later.value) + repr(record)
    assert not any(secret in shown for secret in secrets)
    assert "a pair kept in memory was stored" in caplog.text


def test_async_aclose_stops_the_task_and_names_what_is_lost(
    open_store: Callable[[str], Any],
    fake: FakeAmoCRM,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        two = AsyncTwo(fake, clock, open_store("sqlite"), open_store("sqlite"))
        await _aconsent(two.a, fake, T1)
        clock.advance(timedelta(days=1, minutes=1))
        two.a_store.fail("compare_and_set", times=None, when=_rotated_pair_write)
        with pytest.raises(StoreError):
            await two.a.access_token(T1)
        task = two.a._kept_retry._task
        assert task is not None and not task.done()
        await two.a.aclose()  # the store still refuses: the pair is named as lost
        assert task.done()
        await two.b.aclose()

    asyncio.run(scenario())
    assert "it is lost when this process ends" in caplog.text
