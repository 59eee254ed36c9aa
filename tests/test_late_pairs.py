"""No pair amoCRM gave is thrown away by the worker that holds it.

- A slow worker: amoCRM answers its code, then it stalls past its lease and the kept pair's
  grace; a replay of the callback gives the code up (``error: exchange_interrupted``). Its
  compare-and-set then loses, and the table lands its pair on that very claim
  (``ERROR --> EXCHANGED [interrupted_this_exchange]``), as for a pair kept in memory; on a
  record that moved on (a disconnect, a new consent, another code's exchange) it lands nothing.
- A store whose pair write raises something other than ``StoreError`` (a custom store's
  ``OSError``): the pair is kept in memory all the same and lands once the store is back.

Worker A runs sync or async; the others (another process) are blocking services on the same
store (memory: one object; SQLite: one file).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import httpx
import pytest

from _backends import Backend
from amo_oauth import AmoOAuth, AsyncAmoOAuth, ConnectionStatus, Outcome
from amo_oauth._records import ConnectionRecord, record_key
from amo_oauth.stores import Store
from amo_oauth.testing import FakeAmoCRM, FakeClock
from amo_oauth.testing.faults import AsyncFaultyStore, FaultyStore, grant_of
from amo_oauth.web import Handlers
from test_web import PREFIX, callback_query, connect_state, sender, user_from_header
from test_web import USER as WEB_USER

from helpers import config_for, query_of

USER = "user-1"
Given = tuple[dict[str, str], str | None]


def _new_pair(args: tuple[object, ...]) -> bool:
    """A write carrying a pair amoCRM just issued (the exchange's, under its lease, or a
    rotated one, with none); not a refresh claim, which carries the old pair."""
    record = args[0]
    if not isinstance(record, ConnectionRecord) or record.tokens is None:
        return False
    return record.lease is None or record.lease.purpose == "exchange"


class _AfterCode(httpx.BaseTransport):
    """The fake's transport; once amoCRM has answered a code, ``then`` runs before the answer
    reaches the worker: the worker stalls between amoCRM's answer and its write."""

    def __init__(self, inner: httpx.BaseTransport, then: Callable[[], None] | None) -> None:
        self.inner, self.then = inner, then

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        response = self.inner.handle_request(request)
        response.read()
        if self.then is not None and grant_of(request) == "authorization_code":
            then, self.then = self.then, None
            then()
        return response


class _AsyncAfterCode(httpx.AsyncBaseTransport):
    """``_AfterCode`` for the async service (``then`` blocks the loop: nothing else runs)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, then: Callable[[], None] | None) -> None:
        self.inner, self.then = inner, then

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        response = await self.inner.handle_async_request(request)
        await response.aread()
        if self.then is not None and grant_of(request) == "authorization_code":
            then, self.then = self.then, None
            then()
        return response


class Worker:
    """Worker A: the service under test (sync or async) on a faulty view of the shared store,
    stalling after amoCRM's answer to a code when ``then`` is given."""

    def __init__(
        self,
        mode: str,
        fake: FakeAmoCRM,
        clock: FakeClock,
        store: Store,
        then: Callable[[], None] | None = None,
    ) -> None:
        self._runner: asyncio.Runner | None = None
        self.store: FaultyStore | AsyncFaultyStore
        self.oauth: AmoOAuth | AsyncAmoOAuth
        if mode == "sync":
            self.store = FaultyStore(store)
            http = httpx.Client(transport=_AfterCode(fake.transport(), then))
            self.oauth = AmoOAuth(config_for(fake), store=self.store, http=http, clock=clock)
        else:
            self._runner = asyncio.Runner()
            self.store = AsyncFaultyStore(store)  # type: ignore[arg-type]
            client = httpx.AsyncClient(transport=_AsyncAfterCode(fake.async_transport(), then))
            self.oauth = AsyncAmoOAuth(config_for(fake), store=self.store, http=client, clock=clock)

    def call(self, made: Callable[[], Any]) -> Any:
        if self._runner is None:
            return made()
        coroutine: Coroutine[Any, Any, Any] = made()
        return self._runner.run(coroutine)

    def close(self) -> None:
        if isinstance(self.oauth, AmoOAuth):
            self.oauth.close()
            return
        oauth, runner = self.oauth, self._runner
        assert runner is not None
        runner.run(oauth.aclose())
        runner.close()


class World:
    """The shared store, amoCRM, and another process's blocking service (``other``)."""

    def __init__(self, backend: Backend, fake: FakeAmoCRM, clock: FakeClock) -> None:
        self.backend, self.fake, self.clock = backend, fake, clock
        self.config = config_for(fake)
        http = httpx.Client(transport=fake.transport())
        self.other = AmoOAuth(self.config, store=backend.open(), http=http, clock=clock)
        # Past the exchange lease and the kept pair's grace: a replay gives the code up.
        self.lapse = self.config.lease_ttl + self.config.kept_pair_grace + timedelta(seconds=10)

    def consent(self) -> Given:
        begun = self.other.begin(USER)
        return query_of(self.fake.authorize(begun.state)), begun.binding

    def replay_after_lapse(self, given: Given) -> None:
        """Another process replays the callback once the claim's lease and grace are over."""
        self.clock.advance(self.lapse)
        query, binding = given
        replayed = self.other.handle_callback(query, binding=binding)
        assert replayed.outcome is Outcome.FAILED
        assert self.stored_reason() == "exchange_interrupted"

    def stored(self) -> ConnectionRecord | None:
        return self.backend.open().load(record_key(self.fake.client_id, USER)).record

    def stored_reason(self) -> str | None:
        record = self.stored()
        return None if record is None or record.error is None else str(record.error.reason)

    def latest_pair_stored(self) -> bool:
        """The stored pair is amoCRM's newest (its refresh token is live: a rotation or a new
        code's pair revokes nothing else here, so only a pair amoCRM still honours passes)."""
        record = self.stored()
        tokens = None if record is None else record.tokens
        if tokens is None or tokens.refresh_token is None:
            return False
        return self.fake.is_refresh_token_valid(tokens.refresh_token)


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- 1. a slow worker's pair ---------------------------------------------------------------


def _moved_on_by_disconnect(world: World) -> None:
    world.other.disconnect(USER)


def _moved_on_by_new_consent(world: World) -> None:
    query, binding = world.consent()
    assert world.other.handle_callback(query, binding=binding).outcome is Outcome.CONNECTED


class _Crash(BaseException):
    """A worker's process dies (no ``except Exception`` of the library's sees it)."""


def _crash() -> None:
    raise _Crash


def _moved_on_by_another_exchange(world: World) -> None:
    """A new consent's code is claimed by a third worker that dies once amoCRM has answered it
    (its pair dies with it), and a replay gives that code up too: ``error:
    exchange_interrupted`` again, for another code. (The dead worker is never closed: it would
    close the shared memory store.)"""
    http = httpx.Client(transport=_AfterCode(world.fake.transport(), _crash))
    third = AmoOAuth(world.config, store=world.backend.open(), http=http, clock=world.clock)
    given = world.consent()
    with pytest.raises(_Crash):
        third.handle_callback(given[0], binding=given[1])
    world.replay_after_lapse(given)


MOVES: dict[str, Callable[[World], None]] = {
    "disconnect": _moved_on_by_disconnect,
    "new_consent": _moved_on_by_new_consent,
    "another_exchange": _moved_on_by_another_exchange,
}


@pytest.mark.parametrize("backend", ["memory", "sqlite"], indirect=True)
def test_a_slow_workers_pair_lands_on_its_interrupted_claim(
    mode: str, backend: Backend, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    world = World(backend, fake, clock)
    given = world.consent()
    worker = Worker(mode, fake, clock, backend.open(), lambda: world.replay_after_lapse(given))
    try:
        query, binding = given
        result = worker.call(lambda: worker.oauth.handle_callback(query, binding=binding))
        assert result.outcome is Outcome.CONNECTED  # landed, then verified as usual
        record = world.stored()
        assert record is not None and record.status is ConnectionStatus.CONNECTED
        assert record.account is not None
        assert world.latest_pair_stored()
        assert fake.token_call_count("authorization_code") == 1  # the code went out once
        assert world.other.status(USER).status is ConnectionStatus.CONNECTED
    finally:
        worker.close()
        world.other.close()


@pytest.mark.parametrize("move", list(MOVES))
@pytest.mark.parametrize("backend", ["memory", "sqlite"], indirect=True)
def test_a_slow_workers_pair_never_lands_on_a_record_that_moved_on(
    move: str, mode: str, backend: Backend, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    world = World(backend, fake, clock)
    given = world.consent()
    after: list[ConnectionRecord | None] = []

    def stall() -> None:
        world.replay_after_lapse(given)
        MOVES[move](world)
        after.append(world.stored())

    worker = Worker(mode, fake, clock, backend.open(), stall)
    try:
        query, binding = given
        result = worker.call(lambda: worker.oauth.handle_callback(query, binding=binding))
        assert result.outcome is not Outcome.CONNECTED or move == "new_consent"
        # A wrote nothing: the record is exactly as the move left it (compared, not printed).
        unchanged = world.stored() == after[0]
        assert unchanged
    finally:
        worker.close()
        world.other.close()


# -- 2. a pair write that raises something other than StoreError ------------------------------


def _disk_full() -> BaseException:
    return OSError("disk full")


@pytest.mark.parametrize("backend", ["memory", "sqlite"], indirect=True)
def test_a_rotated_pair_is_kept_when_its_write_raises_oserror(
    mode: str, backend: Backend, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    world = World(backend, fake, clock)
    query, binding = world.consent()
    assert world.other.handle_callback(query, binding=binding).outcome is Outcome.CONNECTED
    clock.advance(timedelta(days=1, minutes=1))  # the access token has expired
    worker = Worker(mode, fake, clock, backend.open())
    try:
        worker.store.fail("compare_and_set", times=None, when=_new_pair, error=_disk_full)
        with pytest.raises(OSError, match="disk full"):
            worker.call(lambda: worker.oauth.access_token(USER))
        worker.store.heal()
        token = worker.call(lambda: worker.oauth.access_token(USER))  # lands the kept pair
        works = fake.is_access_token_valid(token)
        assert works
        assert world.latest_pair_stored()
        assert fake.token_call_count("refresh_token") == 1  # the rotated pair, not a resend
    finally:
        worker.close()
        world.other.close()


@pytest.mark.parametrize("backend", ["memory", "sqlite"], indirect=True)
def test_an_exchanged_pair_is_kept_when_its_write_raises_oserror(
    mode: str, backend: Backend, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    world = World(backend, fake, clock)
    query, binding = world.consent()
    worker = Worker(mode, fake, clock, backend.open())
    try:
        worker.store.fail("compare_and_set", times=None, when=_new_pair, error=_disk_full)
        with pytest.raises(OSError, match="disk full"):
            worker.call(lambda: worker.oauth.handle_callback(query, binding=binding))
        worker.store.heal()
        worker.call(lambda: worker.oauth.status(USER))  # its next store call lands the pair
        assert world.latest_pair_stored()
        # Long after the lease and the grace, the connection stands (verified by a caller).
        clock.advance(world.lapse)
        status = worker.call(lambda: worker.oauth.status(USER)).status
        assert status is ConnectionStatus.CONNECTED
        assert world.stored_reason() is None
        assert fake.token_call_count("authorization_code") == 1
    finally:
        worker.close()
        world.other.close()


@pytest.mark.parametrize("backend", ["memory", "sqlite"], indirect=True)
def test_the_callback_route_loses_no_pair_to_a_store_bug(
    backend: Backend, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    """The web route lets a store's own exception through (a 500 from the framework: a store
    bug is not ``store_unavailable``), and the pair still lands at the next store call."""
    store = FaultyStore(backend.open())
    http = httpx.Client(transport=fake.transport())
    oauth = AmoOAuth(config_for(fake), store=store, http=http, clock=clock)
    send = sender(Handlers(oauth, connection_id=user_from_header, app_scheme="x"))
    try:
        redirect = fake.authorize(connect_state(send))
        store.fail("compare_and_set", times=None, when=_new_pair, error=_disk_full)
        with pytest.raises(OSError, match="disk full"):
            send("GET", f"{PREFIX}/callback", query=callback_query(redirect))
        store.heal()
        oauth.status(WEB_USER)  # lands the kept pair
        clock.advance(config_for(fake).lease_ttl + timedelta(seconds=1))
        assert oauth.status(WEB_USER).status is ConnectionStatus.CONNECTED
        assert fake.token_call_count("authorization_code") == 1
    finally:
        oauth.close()
