"""One clock for every machine (issue 18, item 1): leases and the ledger are judged by the
store's clock (``Loaded.now``), so a machine whose clock runs ahead never takes over a live
lease; what is checked without a store read tolerates ``MAX_CLOCK_SKEW``; ``clock_skew``
reports a machine's skew against its store.

The regression: machine B's clock runs 120 s ahead of A's (lease 60 s). A's refresh is in
flight (its request held at the fake's door); B's sweep must find A's lease live and send
nothing: one refresh in all. On SQLite (two store objects on one file, the host's clock),
PostgreSQL (``now()``) and Redis (``TIME``), blocking and awaited.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import AmoOAuth, AsyncAmoOAuth, CallbackRejected, MemoryStore, Outcome, Store
from amo_oauth._state_token import MAX_CLOCK_SKEW, issue_state
from amo_oauth.stores import SQLiteStore, aclock_skew, clock_skew
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, query_of, run_consent

#: How far B's clock runs ahead of A's: twice the lease.
AHEAD = timedelta(seconds=120)
#: Bounds a wait for the other thread: reached only when the test already failed.
JOIN = 30.0
USER = "user-skew"
A_YEAR = timedelta(days=365)


def real_clock() -> datetime:
    return datetime.now(UTC)


def ahead_clock() -> datetime:
    return datetime.now(UTC) + AHEAD


def _is_refresh(request: httpx.Request) -> bool:
    if not request.url.path.endswith("/oauth2/access_token"):
        return False
    return bool(json.loads(request.content).get("grant_type") == "refresh_token")


class HeldRefresh(httpx.BaseTransport):
    """The fake's transport, holding the first refresh at the door until ``release``."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.released = threading.Event()
        self._held = False
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            hold = _is_refresh(request) and not self._held
            self._held = self._held or hold
        if hold:
            self.entered.set()
            assert self.released.wait(JOIN)
        return self.inner.handle_request(request)


class AsyncHeldRefresh(httpx.AsyncBaseTransport):
    """``HeldRefresh`` for the awaited service (one event loop)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.entered = asyncio.Event()
        self.released = asyncio.Event()
        self._held = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        hold = _is_refresh(request) and not self._held
        self._held = self._held or hold
        if hold:
            self.entered.set()
            await asyncio.wait_for(self.released.wait(), JOIN)
        return await self.inner.handle_async_request(request)


# -- two store objects on one store, as two machines have -------------------------------------


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, Any]:
    path = tmp_path / "skew.db"
    return SQLiteStore(path), SQLiteStore(path)


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, Any]:
    from amo_oauth.stores import PostgresStore

    url = request.getfixturevalue("postgres_url")
    table = f"t_{uuid.uuid4().hex[:16]}"
    one = PostgresStore(url, table=table)
    one.migrate()
    return one, PostgresStore(url, table=table)


def _redis(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, Any]:
    from amo_oauth.stores import RedisStore

    url = request.getfixturevalue("redis_url")
    prefix = f"test-{uuid.uuid4().hex}:"
    one = RedisStore(url, prefix=prefix)
    one.migrate()
    return one, RedisStore(url, prefix=prefix)


KINDS: dict[str, Callable[[pytest.FixtureRequest, Path], tuple[Any, Any]]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
    "redis": _redis,
}


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.services),
        pytest.param("redis", marks=pytest.mark.services),
    ]
)
def machines(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """A's and B's store objects on one store."""
    pair = KINDS[request.param](request, tmp_path)
    yield pair
    for store in pair:
        store.close()


@pytest.fixture
def fake() -> FakeAmoCRM:
    return FakeAmoCRM(rate_limit=None)


def test_a_clock_ahead_does_not_take_over_a_live_refresh_lease(
    machines: tuple[Store, Store], fake: FakeAmoCRM
) -> None:
    held = HeldRefresh(fake.transport())
    config = config_for(fake, lease_ttl=timedelta(seconds=60), settle_timeout=0.2)
    a = AmoOAuth(config, store=machines[0], http=httpx.Client(transport=held), clock=real_clock)
    b = AmoOAuth(
        config,
        store=machines[1],
        http=httpx.Client(transport=fake.transport()),
        clock=ahead_clock,
    )
    run_consent(a, fake, USER)
    sweep = threading.Thread(target=a.refresh_due, args=(A_YEAR,))
    sweep.start()
    assert held.entered.wait(JOIN)  # A holds the lease and its refresh is in flight
    report = b.refresh_due(A_YEAR)  # B, 120 s ahead, finds the lease live: sends nothing
    held.released.set()
    sweep.join(JOIN)
    assert report.refreshed == ()
    assert fake.token_call_count("refresh_token") == 1
    assert b.access_token(USER) == a.access_token(USER)  # B uses A's rotated pair
    a.close()
    b.close()


def test_a_clock_ahead_does_not_take_over_a_live_refresh_lease_async(
    machines: tuple[Store, Store], fake: FakeAmoCRM
) -> None:
    asyncio.run(_ahead_async(machines, fake))


async def _ahead_async(machines: tuple[Store, Store], fake: FakeAmoCRM) -> None:
    held = AsyncHeldRefresh(fake.async_transport())
    config = config_for(fake, lease_ttl=timedelta(seconds=60), settle_timeout=0.2)
    a = AsyncAmoOAuth(
        config, store=machines[0], http=httpx.AsyncClient(transport=held), clock=real_clock
    )
    b = AsyncAmoOAuth(
        config,
        store=machines[1],
        http=httpx.AsyncClient(transport=fake.async_transport()),
        clock=ahead_clock,
    )
    begun = await a.begin(USER)
    await a.handle_callback(query_of(fake.authorize(begun.state)), binding=begun.binding)
    sweep = asyncio.create_task(a.refresh_due(A_YEAR))
    await asyncio.wait_for(held.entered.wait(), JOIN)
    report = await b.refresh_due(A_YEAR)
    held.released.set()
    await asyncio.wait_for(sweep, JOIN)
    assert report.refreshed == ()
    assert fake.token_call_count("refresh_token") == 1
    assert await b.access_token(USER) == await a.access_token(USER)
    await a.aclose()
    await b.aclose()


# -- values checked without a store read: MAX_CLOCK_SKEW ----------------------------------


def _minted_on(fake: FakeAmoCRM, store: Store, clock: Callable[[], datetime]) -> AmoOAuth:
    return AmoOAuth(
        config_for(fake), store=store, http=httpx.Client(transport=fake.transport()), clock=clock
    )


def _state_signed_at(checker: AmoOAuth, moment: datetime) -> str:
    """A state for USER signed at ``moment``, as a machine whose clock says so signs it
    (``begin()`` itself dates states by the store's clock, read with the record's version)."""
    config = checker.config
    token, _ = issue_state(
        config.state_secret, USER, moment, config.state_ttl, namespace=config.client_id
    )
    return token


@pytest.mark.parametrize(
    ("skew", "accepted"),
    [(MAX_CLOCK_SKEW, True), (MAX_CLOCK_SKEW + timedelta(milliseconds=1), False)],
)
def test_a_state_signed_on_a_clock_ahead_is_accepted_within_the_skew(
    skew: timedelta, accepted: bool
) -> None:
    host = FakeClock()
    fake = FakeAmoCRM(clock=host, rate_limit=None)
    checker = _minted_on(fake, MemoryStore(clock=host), host)
    query = query_of(fake.authorize(_state_signed_at(checker, host() + skew)))
    if accepted:
        result = checker.handle_callback(query, connection_id=USER)
        assert result.connection.status == "connected"
    else:
        with pytest.raises(CallbackRejected) as refused:
            checker.handle_callback(query, connection_id=USER)
        assert refused.value.reason == "clock_skew"
    assert fake.token_call_count("authorization_code") == (1 if accepted else 0)


@pytest.mark.parametrize(
    ("late", "accepted"),
    [(MAX_CLOCK_SKEW - timedelta(milliseconds=1), True), (MAX_CLOCK_SKEW, False)],
)
def test_a_state_signed_on_a_clock_behind_lives_its_ttl_plus_the_skew(
    late: timedelta, accepted: bool
) -> None:
    host = FakeClock()
    fake = FakeAmoCRM(clock=host, rate_limit=None)
    checker = _minted_on(fake, MemoryStore(clock=host), host)
    signed = _state_signed_at(checker, host() - MAX_CLOCK_SKEW)
    # Past its signed expiry by ``late``: the signing machine may run MAX_CLOCK_SKEW behind.
    host.advance(checker.config.state_ttl - MAX_CLOCK_SKEW + late)
    # A fresh code (amoCRM's live 20 minutes) for the old state.
    query = query_of(fake.authorize(signed))
    if accepted:
        assert checker.handle_callback(query, connection_id=USER).outcome is Outcome.CONNECTED
    else:
        with pytest.raises(CallbackRejected) as refused:
            checker.handle_callback(query, connection_id=USER)
        assert refused.value.reason == "expired_state"


def test_begin_dates_its_state_by_the_stores_clock() -> None:
    host = FakeClock()
    fake = FakeAmoCRM(clock=host, rate_limit=None)
    store = MemoryStore(clock=host)
    ahead = _minted_on(fake, store, lambda: host() + timedelta(hours=1))
    checker = _minted_on(fake, store, host)
    begun = ahead.begin(USER)  # an hour ahead, but begin() reads the store first
    assert begun.expires_at == host() + ahead.config.state_ttl
    query = query_of(fake.authorize(begun.state))
    assert checker.handle_callback(query, binding=begun.binding).outcome is Outcome.CONNECTED


def test_a_mobile_ticket_issued_on_a_clock_ahead() -> None:
    host = FakeClock()
    fake = FakeAmoCRM(clock=host, rate_limit=None)
    store = MemoryStore(clock=host)
    checker = _minted_on(fake, store, host)
    within = _minted_on(fake, store, lambda: host() + MAX_CLOCK_SKEW)
    beyond = _minted_on(fake, store, lambda: host() + MAX_CLOCK_SKEW + timedelta(seconds=1))
    assert checker.redeem_ticket(within.issue_ticket(USER)) == USER
    with pytest.raises(CallbackRejected) as refused:
        checker.redeem_ticket(beyond.issue_ticket(USER))
    assert refused.value.reason == "clock_skew"


# -- clock_skew ---------------------------------------------------------------------------


def test_clock_skew_reports_the_stores_clock_against_this_machines() -> None:
    host = FakeClock()
    store = MemoryStore(clock=lambda: host() + timedelta(seconds=42))
    assert clock_skew(store, clock=host) == timedelta(seconds=42)
    assert asyncio.run(aclock_skew(store, clock=host)) == timedelta(seconds=42)
    assert clock_skew(store, clock=lambda: host() + timedelta(seconds=50)) == timedelta(seconds=-8)


@pytest.mark.services
def test_clock_skew_on_server_stores(
    postgres_url: str,  # noqa: F811
    redis_url: str,  # noqa: F811
) -> None:
    from amo_oauth.stores import PostgresStore, RedisStore

    offset = timedelta(minutes=7)
    stores: list[Any] = [
        PostgresStore(
            postgres_url, table=f"t_{uuid.uuid4().hex[:16]}", clock_offset=lambda: offset
        ),
        RedisStore(redis_url, prefix=f"test-{uuid.uuid4().hex}:", clock_offset=lambda: offset),
    ]
    for store in stores:
        store.migrate()
        # The servers run on this host: their own skew is far below a second.
        assert abs(clock_skew(store) - offset) < timedelta(seconds=1)
        assert abs(asyncio.run(aclock_skew(store)) - offset) < timedelta(seconds=1)
        store.close()
