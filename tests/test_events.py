"""Lifecycle events (issue 23, part 1): each fires once, right after the write that made the
change, in the process that made it; never for a duplicate or a write that lost its
compare-and-set; a callback's failure never fails the flow; no secret in any event."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from _backends import Backend
from _pg_server import postgres_url  # noqa: F401
from _redis_server import redis_url  # noqa: F401
from amo_oauth import (
    AccountHostChanged,
    AmoOAuth,
    AsyncAmoOAuth,
    Connected,
    ConnectionRecord,
    ConnectionStatus,
    DisconnectedByProvider,
    LifecycleEvent,
    LongLivedTokenExpiring,
    MemoryStore,
    Outcome,
    ReauthorizationNeeded,
    ReauthorizationRequired,
    SQLiteStore,
    Widget,
)
from amo_oauth._lifecycle import TABLE, Step
from amo_oauth._lifecycle_events import events_of_write
from amo_oauth._ops import CompareAndSet, Emit
from amo_oauth._reasons import Reason
from amo_oauth._records import ErrorInfo
from amo_oauth.testing import FakeAmoCRM, FakeClock

from helpers import config_for, consent, query_of, run_consent, stored

USER = "user-1"
DAY = timedelta(days=1, minutes=1)  # past the fake's access-token lifetime


class Heard:
    """Every event a service's callbacks heard, in order."""

    def __init__(self, oauth: Any) -> None:
        self.events: list[LifecycleEvent] = []
        oauth.on(LifecycleEvent, self.events.append)

    def of(self, kind: type[LifecycleEvent]) -> list[LifecycleEvent]:
        return [event for event in self.events if isinstance(event, kind)]


@pytest.fixture
def heard(oauth: AmoOAuth) -> Heard:
    return Heard(oauth)


def connected(oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock, user: str = USER) -> None:
    assert run_consent(oauth, fake, user).connection.is_connected
    clock.advance(DAY)


# -- each event, once, for its cause -----------------------------------------------------------


def test_a_consent_fires_connected_once_and_its_replay_nothing(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_oauth(store=backend.open())
    heard = Heard(oauth)
    query, binding = consent(oauth, fake, USER)
    result = oauth.handle_callback(query, binding=binding)
    assert result.connection.is_connected
    [event] = heard.events
    assert isinstance(event, Connected)
    assert (event.connection_id, event.client_id) == (USER, oauth.config.client_id)
    assert (event.host, event.account_id) == (fake.account_host, fake.account_id)
    assert event.at == oauth._flows.records.now()  # the store's clock (a FakeClock here)
    # The seed's replay: the same redirect again, in the same browser and in another.
    assert oauth.handle_callback(query, binding=binding).duplicate
    assert oauth.handle_callback(query).duplicate
    assert oauth.status(USER).is_connected
    assert heard.events == [event]


def test_a_keys_tab_code_fires_connected_once(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_oauth(store=backend.open())
    heard = Heard(oauth)
    code = fake.issue_keys_tab_code()
    assert oauth.connect_with_code(USER, code, fake.account_host).outcome is Outcome.CONNECTED
    again = oauth.connect_with_code(USER, code, fake.account_host)
    assert again.outcome is Outcome.ALREADY_CONNECTED
    assert [type(event) for event in heard.events] == [Connected]


def test_a_long_lived_token_fires_connected_and_a_new_one_fires_again(
    oauth: AmoOAuth, heard: Heard, fake: FakeAmoCRM
) -> None:
    first = fake.issue_long_lived_token(lifetime=timedelta(days=30))
    oauth.connect_long_lived(USER, first, fake.account_host)
    assert len(heard.of(Connected)) == 1
    oauth.connect_long_lived(USER, first, fake.account_host)  # the same token: nothing new
    assert len(heard.of(Connected)) == 1
    second = fake.issue_long_lived_token(lifetime=timedelta(days=60))
    oauth.connect_long_lived(USER, second, fake.account_host)  # re-made: a new connection
    assert len(heard.events) == len(heard.of(Connected)) == 2


def test_a_widget_install_is_named_by_its_widget(
    oauth: AmoOAuth, heard: Heard, fake: FakeAmoCRM
) -> None:
    token = fake.issue_long_lived_token(lifetime=timedelta(days=30))
    widget = Widget(fake.account_host)
    oauth.connect_long_lived(widget, token, fake.account_host)
    [event] = heard.events
    assert event.connection_id == widget


def test_a_revoked_refresh_token_fires_reauthorization_needed_once(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_oauth(store=backend.open())
    connected(oauth, fake, clock)
    heard = Heard(oauth)
    fake.revoke_refresh_tokens()
    for _ in range(3):
        with pytest.raises(ReauthorizationRequired):
            oauth.access_token(USER)
    assert oauth.refresh_due(within=timedelta(days=365)).refreshed == ()
    [event] = heard.events
    assert isinstance(event, ReauthorizationNeeded)
    assert (event.connection_id, event.reason) == (USER, "reauthorization_required")
    assert type(event.reason) is str


def test_the_uninstall_hook_fires_disconnected_by_provider_once(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    connected(oauth, fake, clock)
    heard = Heard(oauth)
    hook = fake.uninstall()
    assert oauth.handle_disconnect_hook(hook).disconnected
    clock.advance(timedelta(hours=1))  # past the hook's pace: amoCRM is asked again
    assert not oauth.handle_disconnect_hook(hook).disconnected
    with pytest.raises(ReauthorizationRequired):
        oauth.access_token(USER)
    [event] = heard.events
    assert isinstance(event, DisconnectedByProvider)
    assert event.connection_id == USER


@pytest.mark.parametrize("how", ["rename", "move"])
def test_an_account_move_fires_host_changed_once(
    oauth: AmoOAuth, heard: Heard, fake: FakeAmoCRM, clock: FakeClock, how: str
) -> None:
    connected(oauth, fake, clock)
    old_host = fake.account_host
    if how == "rename":
        moved = fake.rename_account(None, "renamed")
    else:
        moved = fake.move_account(None, domain="kommo.com")
    oauth.access_token(USER)
    clock.advance(DAY)
    oauth.access_token(USER)  # an ordinary refresh on the new host: nothing moved
    [_, event] = heard.events
    assert event == AccountHostChanged(
        connection_id=USER,
        client_id=oauth.config.client_id,
        at=event.at,
        old_host=old_host,
        new_host=moved.host,
    )


def test_the_sweep_fires_reauthorization_needed_once_per_connection_from_its_threads(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    oauth = make_oauth(store=backend.open())
    users = [f"user-{n}" for n in range(6)]
    for user in users:
        assert run_consent(oauth, fake, user).connection.is_connected
    threads: set[str] = set()
    heard = Heard(oauth)
    oauth.on(LifecycleEvent, lambda event: threads.add(threading.current_thread().name))
    fake.revoke_refresh_tokens()
    report = oauth.refresh_due(within=timedelta(days=365), concurrency=3)
    assert sorted(report.needs_reauthorization) == users
    assert oauth.refresh_due(within=timedelta(days=365)).needs_reauthorization == ()
    assert sorted(str(event.connection_id) for event in heard.events) == users
    assert {type(event) for event in heard.events} == {ReauthorizationNeeded}
    assert threading.current_thread().name not in threads  # the sweep's workers called them


def test_refresh_due_fires_long_lived_expiring_once_per_run(
    backend: Backend, make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_oauth(store=backend.open())
    soon = fake.issue_long_lived_token(lifetime=timedelta(days=3))
    oauth.connect_long_lived("soon", soon, fake.account_host)
    later = fake.issue_long_lived_token(lifetime=timedelta(days=300))
    oauth.connect_long_lived("later", later, fake.account_host)
    heard = Heard(oauth)
    for run in (1, 2):
        assert oauth.refresh_due(within=timedelta(days=7)).expiring_long_lived == ("soon",)
        expiring = heard.of(LongLivedTokenExpiring)
        assert len(expiring) == len(heard.events) == run
    event = expiring[0]
    assert isinstance(event, LongLivedTokenExpiring)
    assert event.connection_id == "soon"
    record = stored(oauth, "soon")
    assert record is not None and record.tokens is not None
    assert event.expires_at == record.tokens.expires_at


# -- only writes that happened -------------------------------------------------------------------


def test_racing_services_on_one_store_fire_connected_once(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = MemoryStore(clock=clock)
    services = [make_oauth(store=store) for _ in range(2)]
    heard = [Heard(service) for service in services]
    fake.latency = 0.05  # the first exchange is still in flight when the others arrive
    code = fake.issue_keys_tab_code()
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def paste(index: int) -> None:
        start.wait()
        try:
            services[index % 2].connect_with_code(USER, code, fake.account_host)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=paste, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(len(one.events) for one in heard) == 1


class _Overtaken(MemoryStore):
    """A store where another writer gets in once, just before this service writes the
    connected record: that compare-and-set is lost."""

    lost = 0

    def compare_and_set(self, record: ConnectionRecord, expected_version: int | None) -> bool:
        if record.status is ConnectionStatus.CONNECTED and not self.lost:
            self.lost += 1
            current = self.load(record.key).record
            assert current is not None
            bumped = attrs.evolve(current, version=current.version + 1)
            assert super().compare_and_set(bumped, current.version)
        return super().compare_and_set(record, expected_version)


def test_a_write_that_lost_its_compare_and_set_fires_nothing(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    store = _Overtaken(clock=clock)
    oauth = make_oauth(store=store)
    heard = Heard(oauth)
    run_consent(oauth, fake, USER)  # its verification's write loses: in progress
    assert store.lost == 1
    clock.advance(oauth.config.lease_ttl + timedelta(seconds=1))  # the lost claim lapses
    assert oauth.status(USER).is_connected  # the next call verifies again and writes
    assert [type(event) for event in heard.events] == [Connected]


def test_records_emit_only_after_the_store_took_the_write(oauth: AmoOAuth) -> None:
    """``Records._commit`` driven by hand: the store's answer to the compare-and-set decides."""
    records = oauth._flows.records
    old = records._fresh(USER, False)
    new = attrs.evolve(old, status=ConnectionStatus.CONNECTED, version=1, connected_version=1)

    def ops_when_the_store_answers(taken: bool) -> list[object]:
        flow = records._commit(old, Step(new, changed=True), "verified")
        ops: list[object] = [next(flow)]
        try:
            while True:
                ops.append(flow.send(taken if len(ops) == 1 else None))
        except StopIteration:
            return ops

    assert [type(op) for op in ops_when_the_store_answers(False)] == [CompareAndSet]
    taken = ops_when_the_store_answers(True)
    assert [type(op) for op in taken] == [CompareAndSet, Emit]
    assert isinstance(taken[1], Emit) and isinstance(taken[1].event, Connected)


# -- callbacks that fail, hang or cannot be called -----------------------------------------------


def test_a_raising_callback_is_logged_and_the_flow_answers(
    oauth: AmoOAuth, fake: FakeAmoCRM, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: Connected) -> None:
        raise RuntimeError("the mail server is down")

    after: list[LifecycleEvent] = []
    oauth.on(Connected, broken)
    oauth.on(Connected, after.append)
    with caplog.at_level(logging.ERROR, logger="amo_oauth"):
        result = run_consent(oauth, fake, USER)
    assert result.outcome is Outcome.CONNECTED and result.connection.is_connected
    assert oauth.status(USER).is_connected
    assert len(after) == 1  # the next callback still heard it
    [line] = [r for r in caplog.records if "lifecycle callback" in r.getMessage()]
    assert "broken" in line.getMessage() and line.exc_info is not None


def test_unsubscribing_stops_the_calls(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    seen: list[LifecycleEvent] = []
    stop = oauth.on(Connected, seen.append)
    stop()
    run_consent(oauth, fake, USER)
    assert seen == []


def test_the_blocking_service_refuses_async_callbacks(oauth: AmoOAuth) -> None:
    async def notify(event: LifecycleEvent) -> None:
        pass

    class Notifier:
        async def __call__(self, event: LifecycleEvent) -> None:
            pass

    for callback in (notify, Notifier()):
        with pytest.raises(TypeError, match="AsyncAmoOAuth"):
            oauth.on(LifecycleEvent, callback)
    with pytest.raises(TypeError, match="lifecycle event class"):
        oauth.on(str, print)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="callable"):
        oauth.on(Connected, "print")  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "sqlite"])
def aoauth(
    request: pytest.FixtureRequest, fake: FakeAmoCRM, clock: FakeClock, tmp_path: Path
) -> Callable[[], AsyncAmoOAuth]:
    """An AsyncAmoOAuth on the fake, over a MemoryStore or an SQLite file."""

    def make() -> AsyncAmoOAuth:
        http = httpx.AsyncClient(transport=fake.async_transport())
        store: MemoryStore | SQLiteStore = (
            MemoryStore(clock=clock)
            if request.param == "memory"
            else SQLiteStore(tmp_path / "async.db", clock=clock)
        )
        return AsyncAmoOAuth(config_for(fake), store=store, http=http, clock=clock)

    return make


async def _consent(oauth: AsyncAmoOAuth, fake: FakeAmoCRM, user: str = USER) -> Any:
    begun = await oauth.begin(user)
    query = query_of(fake.authorize(begun.state))
    return await oauth.handle_callback(query, binding=begun.binding)


def test_the_async_service_awaits_async_callbacks_and_calls_plain_ones(
    aoauth: Callable[[], AsyncAmoOAuth], fake: FakeAmoCRM, clock: FakeClock
) -> None:
    awaited: list[LifecycleEvent] = []
    plain: list[LifecycleEvent] = []

    async def notify(event: LifecycleEvent) -> None:
        await asyncio.sleep(0)
        awaited.append(event)

    async def scenario() -> None:
        async with aoauth() as oauth:
            oauth.on(LifecycleEvent, notify)
            oauth.on(ReauthorizationNeeded, plain.append)
            result = await _consent(oauth, fake)
            assert result.connection.is_connected
            assert [type(event) for event in awaited] == [Connected]  # before the call returned
            fake.revoke_refresh_tokens()
            clock.advance(DAY)
            for _ in range(2):
                with pytest.raises(ReauthorizationRequired):
                    await oauth.access_token(USER)

    asyncio.run(scenario())
    assert [type(event) for event in awaited] == [Connected, ReauthorizationNeeded]
    assert plain == awaited[1:]


def test_a_slow_async_callback_is_cancelled_after_its_timeout_and_logged(
    aoauth: Callable[[], AsyncAmoOAuth], fake: FakeAmoCRM, caplog: pytest.LogCaptureFixture
) -> None:
    cancelled: list[bool] = []

    async def hangs(event: LifecycleEvent) -> None:
        try:
            await asyncio.Event().wait()  # never set
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def raises(event: LifecycleEvent) -> None:
        raise RuntimeError("no")

    async def scenario() -> None:
        async with aoauth() as oauth:
            oauth.on(Connected, hangs, timeout=0.05)
            oauth.on(Connected, raises)
            with pytest.raises(ValueError, match="timeout"):
                oauth.on(Connected, hangs, timeout=0)
            result = await _consent(oauth, fake)
            assert result.outcome is Outcome.CONNECTED
            assert (await oauth.status(USER)).is_connected

    with caplog.at_level(logging.ERROR, logger="amo_oauth"):
        # A hang guard only (the callback's own bound is 0.05 s): without the bound the test
        # fails here instead of hanging the run.
        asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    assert cancelled == [True]
    messages = [r.getMessage() for r in caplog.records if "lifecycle callback" in r.getMessage()]
    assert any("hangs" in m and "0.05 s" in m for m in messages)
    assert any("raises" in m and "failed" in m for m in messages)


def test_a_callback_that_swallows_its_cancellation_holds_the_call_only_its_timeout(
    aoauth: Callable[[], AsyncAmoOAuth], fake: FakeAmoCRM
) -> None:
    swallowed: list[bool] = []
    finished: list[bool] = []

    async def stubborn(event: LifecycleEvent) -> None:
        try:
            await asyncio.Event().wait()  # never set: its timeout cancels it
        except asyncio.CancelledError:
            swallowed.append(True)  # ... and it goes on regardless
        await asyncio.sleep(3)  # aclose() cancels this, which it does not swallow
        finished.append(True)

    async def scenario() -> None:
        oauth = aoauth()
        oauth.on(Connected, stubborn, timeout=0.05)
        assert (await _consent(oauth, fake)).connection.is_connected
        assert finished == []  # the call returned while the callback still ran
        await asyncio.sleep(0)  # the cancellation reaches it
        assert swallowed == [True]
        await oauth.aclose()
        assert not oauth._subscribers._running

    asyncio.run(scenario())
    assert finished == []


@pytest.mark.parametrize("own", [asyncio.CancelledError, TimeoutError])
def test_a_callback_s_own_cancellation_or_timeout_is_its_failure_not_the_caller_s(
    aoauth: Callable[[], AsyncAmoOAuth],
    fake: FakeAmoCRM,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    own: type[BaseException],
) -> None:
    async def raises_its_own(event: LifecycleEvent) -> None:
        await asyncio.sleep(0)
        raise own()  # e.g. an inner task of its own was cancelled, or an HTTP call timed out

    def plain_raises_its_own(event: LifecycleEvent) -> None:
        raise own()

    async def scenario() -> None:
        async with aoauth() as oauth:
            oauth.on(ReauthorizationNeeded, raises_its_own)
            oauth.on(ReauthorizationNeeded, plain_raises_its_own)
            assert (await _consent(oauth, fake)).connection.is_connected
            fake.revoke_refresh_tokens()
            clock.advance(DAY)
            with pytest.raises(ReauthorizationRequired):
                await oauth.access_token(USER)

    with caplog.at_level(logging.ERROR, logger="amo_oauth"):
        asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records if "lifecycle callback" in r.getMessage()]
    assert len(messages) == 2
    assert all("failed" in m for m in messages), messages


def test_the_blocking_service_logs_a_callback_s_own_cancellation(
    oauth: AmoOAuth, fake: FakeAmoCRM, caplog: pytest.LogCaptureFixture
) -> None:
    def cancelled(event: LifecycleEvent) -> None:
        raise asyncio.CancelledError()  # an asyncio.run() of its own, cancelled inside

    oauth.on(Connected, cancelled)
    with caplog.at_level(logging.ERROR, logger="amo_oauth"):
        assert run_consent(oauth, fake, USER).connection.is_connected
    assert any("cancelled failed" in r.getMessage() for r in caplog.records)


def test_the_async_sweep_fires_long_lived_expiring(
    aoauth: Callable[[], AsyncAmoOAuth], fake: FakeAmoCRM
) -> None:
    heard: list[LifecycleEvent] = []

    async def scenario() -> None:
        async with aoauth() as oauth:
            token = fake.issue_long_lived_token(lifetime=timedelta(days=3))
            await oauth.connect_long_lived(USER, token, fake.account_host)
            oauth.on(LifecycleEvent, heard.append)
            report = await oauth.refresh_due(within=timedelta(days=7))
            assert report.expiring_long_lived == (USER,)

    asyncio.run(scenario())
    assert [type(event) for event in heard] == [LongLivedTokenExpiring]


# -- never a secret ------------------------------------------------------------------------------


def test_no_event_holds_a_secret(oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock) -> None:
    heard = Heard(oauth)
    state_secret = oauth.config.state_secret
    if isinstance(state_secret, bytes):
        state_secret = state_secret.decode()
    canaries = {oauth.config.client_secret, state_secret}
    begun = oauth.begin(USER)
    redirect = fake.authorize(begun.state)
    query = query_of(redirect)
    canaries |= {query["code"], query["state"]}
    oauth.handle_callback(query, binding=begun.binding)
    record = stored(oauth, USER)
    assert record is not None and record.tokens is not None and record.tokens.refresh_token
    canaries |= {record.tokens.access_token, record.tokens.refresh_token}
    clock.advance(DAY)
    fake.move_account(None, domain="kommo.com")
    oauth.access_token(USER)
    fake.revoke_refresh_tokens()
    clock.advance(DAY)
    with pytest.raises(ReauthorizationRequired):
        oauth.access_token(USER)
    long_lived = fake.issue_long_lived_token(lifetime=timedelta(days=3))
    canaries.add(long_lived)
    oauth.connect_long_lived("admin", long_lived, fake.move_account(None, domain="amocrm.ru").host)
    oauth.refresh_due(within=timedelta(days=7))
    oauth.handle_disconnect_hook(fake.uninstall())
    kinds = {type(event) for event in heard.events}
    assert kinds == {
        Connected,
        AccountHostChanged,
        ReauthorizationNeeded,
        LongLivedTokenExpiring,
        DisconnectedByProvider,
    }
    for event in heard.events:
        shown = [repr(event), str(event), *map(str, attrs.asdict(event).values())]
        for canary in canaries:
            assert not any(canary in text for text in shown), type(event).__name__


# -- the derivation itself -------------------------------------------------------------------------


def test_a_write_that_changes_nothing_the_app_hears_fires_nothing(oauth: AmoOAuth) -> None:
    old = oauth._flows.records._fresh(USER, False)
    at = oauth._flows.records.now()
    same = attrs.evolve(old, version=1)
    assert events_of_write(old, same, "client", at) == ()


def _deny(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    begun = oauth.begin(USER)
    result = oauth.handle_callback(query_of(fake.deny(begun.state)), binding=begun.binding)
    assert not result.connection.is_connected


def test_a_consent_that_never_connected_fires_nothing(oauth: AmoOAuth, fake: FakeAmoCRM) -> None:
    heard = Heard(oauth)
    for _ in range(2):  # the user presses "Deny" twice: nothing was ever usable
        _deny(oauth, fake)
    begun = oauth.begin(USER)
    query = {**query_of(fake.authorize(begun.state)), "code": "def502" + "ab" * 40}
    assert not oauth.handle_callback(query, binding=begun.binding).connection.is_connected
    assert oauth.status(USER).error is not None  # amoCRM refused the junk code
    assert heard.events == []


def test_a_forged_widget_install_fires_nothing(
    make_oauth: Callable[..., AmoOAuth], fake: FakeAmoCRM
) -> None:
    oauth = make_oauth(allow_widget_installs=True)
    heard = Heard(oauth)
    for attempt in range(3):  # anyone can send these: a junk code for a host never installed
        forged = {
            "code": f"def502{'ab' * 40}{attempt}",
            "referer": fake.account_host,
            "from_widget": "1",
            "client_id": fake.client_id,
        }
        assert oauth.handle_callback(forged).outcome is Outcome.FAILED
    assert heard.events == []
    genuine = query_of(fake.authorize(from_widget=True))
    assert oauth.handle_callback(genuine).connection.is_connected
    assert [type(event) for event in heard.events] == [Connected]


def test_a_connection_already_in_error_fires_nothing_more(
    oauth: AmoOAuth, fake: FakeAmoCRM, clock: FakeClock
) -> None:
    connected(oauth, fake, clock)
    heard = Heard(oauth)
    fake.revoke_refresh_tokens()
    with pytest.raises(ReauthorizationRequired):
        oauth.access_token(USER)
    _deny(oauth, fake)  # the reason changes to access_denied: no more usable than before
    assert oauth.status(USER).error is not None
    assert [getattr(event, "reason", None) for event in heard.events] == [
        "reauthorization_required"
    ]


#: The table's ways from ``connected`` into ``error``, each with what it fires (docs/events.md).
LOST_BY = {
    "refresh_failed": ReauthorizationNeeded,
    "long_lived_ended": ReauthorizationNeeded,
    "provider_disconnected": DisconnectedByProvider,
}


def test_the_table_leaves_connected_for_error_only_by_the_documented_events() -> None:
    rules = [
        r
        for r in TABLE
        if ConnectionStatus.CONNECTED in r.sources and r.dest is ConnectionStatus.ERROR
    ]
    assert {rule.event for rule in rules} == set(LOST_BY)
    documented = Path(__file__).parents[1].joinpath("docs", "events.md").read_text()
    assert all(f"`{event}`" in documented for event in LOST_BY)


@pytest.mark.parametrize("before", list(ConnectionStatus))
@pytest.mark.parametrize("reason", [Reason.REAUTHORIZATION_REQUIRED, Reason.ACCESS_DENIED])
def test_only_a_connected_record_entering_error_fires_reauthorization_needed(
    oauth: AmoOAuth, before: ConnectionStatus, reason: Reason
) -> None:
    at = oauth._flows.records.now()
    old = attrs.evolve(oauth._flows.records._fresh(USER, False), status=before, version=1)
    if before is ConnectionStatus.ERROR:
        old = attrs.evolve(old, error=ErrorInfo(Reason.CODE_REJECTED, None, at))
    new = attrs.evolve(
        old, status=ConnectionStatus.ERROR, error=ErrorInfo(reason, None, at), version=2
    )
    events = events_of_write(old, new, "client", at)
    if before is ConnectionStatus.CONNECTED:
        assert [(type(e), getattr(e, "reason", None)) for e in events] == [
            (ReauthorizationNeeded, reason)
        ]
    else:
        assert events == ()


@pytest.mark.parametrize(
    "before", [ConnectionStatus.CONNECTED, ConnectionStatus.CODE_RECEIVED, ConnectionStatus.ERROR]
)
def test_an_uninstall_fires_only_disconnected_by_provider(
    oauth: AmoOAuth, before: ConnectionStatus
) -> None:
    at = oauth._flows.records.now()
    old = attrs.evolve(oauth._flows.records._fresh(USER, False), status=before, version=1)
    gone = ErrorInfo(Reason.DISCONNECTED_BY_PROVIDER, None, at)
    new = attrs.evolve(old, status=ConnectionStatus.ERROR, error=gone, version=2)
    assert [type(e) for e in events_of_write(old, new, "client", at)] == [DisconnectedByProvider]
    assert events_of_write(new, attrs.evolve(new, version=3), "client", at) == ()


def test_aclose_cancels_a_running_callback_without_waiting_out_its_timeout(
    aoauth: Callable[[], AsyncAmoOAuth], fake: FakeAmoCRM
) -> None:
    """A shielded call waits on its callback; closing the service cancels the callback first,
    so the close is not held for the callback's whole ``timeout`` (an hour here)."""
    started = asyncio.Event()
    cancelled: list[bool] = []

    async def slow(event: LifecycleEvent) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def scenario() -> None:
        oauth = aoauth()
        oauth.on(Connected, slow, timeout=3600)
        call = asyncio.create_task(_consent(oauth, fake))
        await started.wait()
        # A hang guard only: without the fix the close waits the callback's hour out.
        await asyncio.wait_for(oauth.aclose(), timeout=120)
        assert (await call).outcome is Outcome.CONNECTED

    asyncio.run(scenario())
    assert cancelled == [True]
